//! Node metrics under node_exporter's names, labels, units and types, so node-mixin's
//! alerts and dashboards (and dashboard 1860) work unchanged on a fleet host. This module
//! owns the `[node_metrics]` settings (node_exporter's flags of the same names) and the
//! list of enabled collectors; each collector is its own module.
//!
//! ```toml
//! [node_metrics]
//! filesystem_mount_points_exclude = "^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
//! filesystem_fs_types_exclude = "^(autofs|...|tracefs)$"
//! diskstats_device_exclude = "^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\\d+n\\d+p)\\d+$"
//! netdev_device_exclude = "^lo$"
//! netclass_ignored_devices = "^$"
//! vmstat_fields = "^(oom_kill|pgpg|pswp|pg.*fault).*"
//! netstat_fields = "..."
//! textfile_directory = "/var/lib/prometheus/node-exporter"   # "" turns it off
//! systemd_unit_states = "bounded"   # or "all": every state of every unit
//! systemd_unit_exclude = ".+\\.(automount|device|mount|scope|slice|target)"
//! ```
//! Each default is Debian 12's prometheus-node-exporter 1.5 default.

use std::path::PathBuf;

use serde::Deserialize;

use super::source::{FieldFilter, Filter, Reader, Source, Sources};
use super::{cpu, diskstats, filesystem, kernel, meminfo, netclass, netdev, netstat};
use super::{pressure, raid, systemd_units, timex, vmstat};
pub use systemd_units::SystemdUnitStates;

/// `[node_metrics]` of the agent's config file, as written; regexes are compiled (and
/// refused with the field's name) by [`NodeSettings::validate`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    pub path_procfs: PathBuf,
    pub path_sysfs: PathBuf,
    pub filesystem_mount_points_exclude: String,
    pub filesystem_fs_types_exclude: String,
    pub diskstats_device_exclude: String,
    pub diskstats_device_include: Option<String>,
    pub netdev_device_exclude: String,
    pub netdev_device_include: Option<String>,
    pub netclass_ignored_devices: String,
    pub vmstat_fields: String,
    pub netstat_fields: String,
    /// Where `*.prom` files are read from; empty: textfile collector off.
    pub textfile_directory: PathBuf,
    pub systemd_unit_states: SystemdUnitStates,
    pub systemd_unit_include: Option<String>,
    pub systemd_unit_exclude: String,
}

pub const DEFAULT_TEXTFILE_DIRECTORY: &str = "/var/lib/prometheus/node-exporter";

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            path_procfs: "/proc".into(),
            path_sysfs: "/sys".into(),
            filesystem_mount_points_exclude: filesystem::DEFAULT_MOUNT_POINTS_EXCLUDE.into(),
            filesystem_fs_types_exclude: filesystem::DEFAULT_FS_TYPES_EXCLUDE.into(),
            diskstats_device_exclude: diskstats::DEFAULT_DEVICE_EXCLUDE.into(),
            diskstats_device_include: None,
            netdev_device_exclude: netdev::DEFAULT_DEVICE_EXCLUDE.into(),
            netdev_device_include: None,
            netclass_ignored_devices: netclass::DEFAULT_IGNORED_DEVICES.into(),
            vmstat_fields: vmstat::DEFAULT_FIELDS.into(),
            netstat_fields: netstat::DEFAULT_FIELDS.into(),
            textfile_directory: DEFAULT_TEXTFILE_DIRECTORY.into(),
            systemd_unit_states: SystemdUnitStates::Bounded,
            systemd_unit_include: None,
            systemd_unit_exclude: systemd_units::DEFAULT_UNIT_EXCLUDE.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("node_metrics.{field} is not a valid regular expression: {source}")]
pub struct BadRegex {
    pub field: &'static str,
    #[source]
    pub source: regex_lite::Error,
}

fn re(field: &'static str, s: &str) -> Result<Option<regex_lite::Regex>, BadRegex> {
    if s.is_empty() {
        return Ok(None);
    }
    // node_exporter anchors nothing itself; neither do we. Bounded size: a config typo
    // must not build a huge automaton.
    regex_lite::RegexBuilder::new(s)
        .size_limit(1 << 20)
        .build()
        .map(Some)
        .map_err(|source| BadRegex { field, source })
}

fn exclude(field: &'static str, s: &str) -> Result<Filter, BadRegex> {
    Ok(Filter {
        include: None,
        exclude: re(field, s)?,
    })
}

impl NodeSettings {
    /// Compiles every regex, naming the field of the first bad one.
    pub fn validate(&self) -> Result<(), BadRegex> {
        self.node_sources()?;
        self.systemd(systemd_units::Bus::default()).map(|_| ())
    }

    /// The systemd collector, reading over `bus`.
    pub fn systemd(&self, bus: systemd_units::Bus) -> Result<systemd_units::Systemd, BadRegex> {
        let units = Filter {
            include: re(
                "systemd_unit_include",
                self.systemd_unit_include.as_deref().unwrap_or(""),
            )?,
            exclude: re("systemd_unit_exclude", &self.systemd_unit_exclude)?,
        };
        Ok(systemd_units::Systemd::new(
            bus,
            self.systemd_unit_states,
            units,
        ))
    }

    /// The collectors that read /proc and /sys, in node_exporter's alphabetical order.
    pub fn node_sources(&self) -> Result<Vec<Box<dyn Source>>, BadRegex> {
        let fs = filesystem::Filesystem {
            mount_points: exclude(
                "filesystem_mount_points_exclude",
                &self.filesystem_mount_points_exclude,
            )?,
            fs_types: exclude(
                "filesystem_fs_types_exclude",
                &self.filesystem_fs_types_exclude,
            )?,
        };
        let disks = diskstats::Diskstats {
            devices: Filter {
                include: re(
                    "diskstats_device_include",
                    self.diskstats_device_include.as_deref().unwrap_or(""),
                )?,
                exclude: re("diskstats_device_exclude", &self.diskstats_device_exclude)?,
            },
        };
        let netdev = netdev::Netdev {
            devices: Filter {
                include: re(
                    "netdev_device_include",
                    self.netdev_device_include.as_deref().unwrap_or(""),
                )?,
                exclude: re("netdev_device_exclude", &self.netdev_device_exclude)?,
            },
        };
        let netclass = netclass::Netclass {
            devices: exclude("netclass_ignored_devices", &self.netclass_ignored_devices)?,
        };
        let vmstat = vmstat::Vmstat {
            fields: FieldFilter::new(Filter {
                include: re("vmstat_fields", &self.vmstat_fields)?,
                exclude: None,
            }),
        };
        let netstat = netstat::Netstat {
            fields: FieldFilter::new(Filter {
                include: re("netstat_fields", &self.netstat_fields)?,
                exclude: None,
            }),
        };
        Ok(vec![
            Box::new(raid::Bonding),
            Box::new(kernel::Conntrack),
            Box::new(cpu::Cpu),
            Box::new(disks),
            Box::new(kernel::Filefd),
            Box::new(fs),
            Box::new(kernel::Loadavg),
            Box::new(raid::Mdadm),
            Box::new(meminfo::Meminfo),
            Box::new(netclass),
            Box::new(netdev),
            Box::new(netstat),
            Box::new(pressure::Pressure),
            Box::new(netstat::Sockstat),
            Box::new(cpu::Stat),
            Box::new(kernel::Time),
            Box::new(timex::TimexSource),
            Box::new(kernel::Uname),
            Box::new(vmstat),
        ])
    }

    pub fn reader(&self) -> Reader {
        Reader::new(&self.path_procfs, &self.path_sysfs)
    }
}

/// Builds the node collectors from validated settings.
pub fn sources(settings: &NodeSettings, extra: Vec<Box<dyn Source>>) -> Result<Sources, BadRegex> {
    let mut list = settings.node_sources()?;
    list.extend(extra);
    Ok(Sources::new(list, settings.reader()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_compile_and_bad_regexes_name_their_field() {
        NodeSettings::default().validate().unwrap();
        let bad = NodeSettings {
            netdev_device_exclude: "^(lo".into(),
            ..NodeSettings::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("node_metrics.netdev_device_exclude is not a valid"),
            "{e}"
        );
    }

    #[test]
    fn settings_read_from_toml() {
        let s: NodeSettings = toml::from_str(
            "netdev_device_exclude = \"\"\nsystemd_unit_states = \"all\"\ntextfile_directory = \"\"\n",
        )
        .unwrap();
        assert_eq!(s.netdev_device_exclude, "");
        assert_eq!(s.systemd_unit_states, SystemdUnitStates::All);
        assert_eq!(
            s.diskstats_device_exclude,
            diskstats::DEFAULT_DEVICE_EXCLUDE
        );
        assert!(toml::from_str::<NodeSettings>("bogus = 1\n").is_err());
        assert!(toml::from_str::<NodeSettings>("systemd_unit_states = \"some\"\n").is_err());
    }
}
