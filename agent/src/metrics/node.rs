//! Node metrics under node_exporter's names, labels, units and types, so dashboards and
//! alerts written for node_exporter work unchanged on a fleet host. One [`NodeSnapshot`]
//! is read per scrape (a handful of small /proc reads and one statvfs per filesystem),
//! then encoded by [`NodeCollector`].

use std::fmt;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::encode::{family, single, Labels};
use super::procfs::{self, DiskStats, Mount, NetDev, Stat, CPU_MODES};

/// The meminfo fields exported as `node_memory_<field>_bytes`.
pub const MEMINFO_FIELDS: [&str; 7] = [
    "MemTotal",
    "MemAvailable",
    "MemFree",
    "Buffers",
    "Cached",
    "SwapTotal",
    "SwapFree",
];

#[derive(Clone, Debug, Default)]
pub struct NodeSnapshot {
    pub stat: Stat,
    pub load: Option<[f64; 3]>,
    pub meminfo: std::collections::HashMap<String, u64>,
    pub filesystems: Vec<(Mount, FsStats)>,
    pub net: Vec<NetDev>,
    pub disks: Vec<DiskStats>,
    pub uname: Option<Uname>,
    pub time: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FsStats {
    pub size: f64,
    pub free: f64,
    pub avail: f64,
    pub files: f64,
    pub files_free: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uname {
    pub sysname: String,
    pub release: String,
    pub version: String,
    pub machine: String,
    pub nodename: String,
    pub domainname: String,
}

fn read(path: &str) -> String {
    // A file that cannot be read leaves its metrics out of this scrape rather than failing
    // it: node_exporter does the same per collector, and the rest stays useful.
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        tracing::debug!(path, error = %e, "cannot read; its metrics are left out");
        String::new()
    })
}

impl NodeSnapshot {
    /// Reads everything from this host's /proc and the mounted filesystems.
    pub fn read() -> NodeSnapshot {
        // PID 1's view first, like node_exporter: the agent's own mount namespace may be
        // narrowed by systemd sandboxing.
        let mounts = std::fs::read_to_string("/proc/1/mounts")
            .or_else(|_| std::fs::read_to_string("/proc/self/mounts"))
            .unwrap_or_default();
        NodeSnapshot {
            stat: procfs::parse_stat(&read("/proc/stat")),
            load: procfs::parse_loadavg(&read("/proc/loadavg")),
            meminfo: procfs::parse_meminfo(&read("/proc/meminfo")),
            filesystems: procfs::parse_mounts(&mounts)
                .into_iter()
                .filter_map(|m| {
                    let stats = statvfs(&m.mountpoint)?;
                    Some((m, stats))
                })
                .collect(),
            net: procfs::parse_net_dev(&read("/proc/net/dev")),
            disks: procfs::parse_diskstats(&read("/proc/diskstats")),
            uname: uname(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        }
    }
}

/// Sizes in bytes from statvfs(3), blocks counted in the fragment size as POSIX defines
/// them (equal to node_exporter's statfs block size on ext4, xfs, btrfs and tmpfs).
/// Unreachable mounts (permission, stale NFS handle) are skipped.
fn statvfs(path: &str) -> Option<FsStats> {
    let s = nix::sys::statvfs::statvfs(path)
        .map_err(|e| tracing::debug!(path, error = %e, "statvfs failed; filesystem skipped"))
        .ok()?;
    let block = s.fragment_size() as f64;
    Some(FsStats {
        size: s.blocks() as f64 * block,
        free: s.blocks_free() as f64 * block,
        avail: s.blocks_available() as f64 * block,
        files: s.files() as f64,
        files_free: s.files_free() as f64,
    })
}

fn uname() -> Option<Uname> {
    let u = nix::sys::utsname::uname().ok()?;
    let s = |v: &std::ffi::OsStr| v.to_string_lossy().into_owned();
    Some(Uname {
        sysname: s(u.sysname()),
        release: s(u.release()),
        version: s(u.version()),
        machine: s(u.machine()),
        nodename: s(u.nodename()),
        domainname: s(u.domainname()),
    })
}

/// Encodes the snapshot last stored with [`NodeCollector::set`]. Every family is always
/// described, even when this host lacks its data (no swap line, no disks), so the set of
/// exported names does not depend on the machine.
#[derive(Debug, Default)]
pub struct NodeCollector {
    snapshot: Mutex<NodeSnapshot>,
}

impl NodeCollector {
    pub fn set(&self, snapshot: NodeSnapshot) {
        *self.snapshot.lock().expect("node snapshot lock") = snapshot;
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = self.snapshot.lock().expect("node snapshot lock");
        encode_snapshot(&s, &mut enc)
    }
}

fn encode_snapshot(s: &NodeSnapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    use MetricType::{Counter, Gauge};
    let seconds = Some(&Unit::Seconds);
    let bytes = Some(&Unit::Bytes);

    family(
        enc,
        "node_cpu",
        "Seconds the CPUs spent in each mode.",
        seconds,
        Counter,
        s.stat.cpus.iter().flat_map(|(cpu, times)| {
            CPU_MODES
                .iter()
                .zip(times)
                .map(move |(mode, v)| (vec![("cpu", cpu.clone()), ("mode", (*mode).into())], *v))
        }),
    )?;
    for (i, minutes) in ["1", "5", "15"].iter().enumerate() {
        single(
            enc,
            &format!("node_load{minutes}"),
            &format!("{minutes}m load average."),
            None,
            Gauge,
            s.load.map(|l| l[i]),
        )?;
    }
    for field in MEMINFO_FIELDS {
        single(
            enc,
            &format!("node_memory_{field}"),
            &format!("Memory information field {field}_bytes."),
            bytes,
            Gauge,
            s.meminfo.get(field).map(|v| *v as f64),
        )?;
    }

    let fs_labels = |m: &Mount| -> Labels {
        vec![
            ("device", m.device.clone()),
            ("fstype", m.fstype.clone()),
            ("mountpoint", m.mountpoint.clone()),
        ]
    };
    type FsField = fn(&FsStats) -> f64;
    let fs_fields: [(&str, &str, Option<&Unit>, FsField); 5] = [
        (
            "node_filesystem_size",
            "Filesystem size in bytes.",
            bytes,
            |f| f.size,
        ),
        (
            "node_filesystem_free",
            "Filesystem free space in bytes.",
            bytes,
            |f| f.free,
        ),
        (
            "node_filesystem_avail",
            "Filesystem space available to non-root users in bytes.",
            bytes,
            |f| f.avail,
        ),
        (
            "node_filesystem_files",
            "Filesystem total file nodes.",
            None,
            |f| f.files,
        ),
        (
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
            None,
            |f| f.files_free,
        ),
    ];
    for (name, help, unit, get) in fs_fields {
        family(
            enc,
            name,
            help,
            unit,
            Gauge,
            s.filesystems.iter().map(|(m, f)| (fs_labels(m), get(f))),
        )?;
    }

    type NetField = fn(&procfs::NetCounters) -> u64;
    let net_fields: [(&str, NetField); 4] = [
        ("bytes", |c| c.bytes),
        ("packets", |c| c.packets),
        ("errs", |c| c.errs),
        ("drop", |c| c.drop),
    ];
    for direction in ["receive", "transmit"] {
        for (stat, get) in net_fields {
            family(
                enc,
                &format!("node_network_{direction}_{stat}"),
                &format!("Network device statistic {direction}_{stat}."),
                None,
                Counter,
                s.net.iter().map(|d| {
                    let c = if direction == "receive" {
                        &d.receive
                    } else {
                        &d.transmit
                    };
                    (vec![("device", d.device.clone())], get(c) as f64)
                }),
            )?;
        }
    }

    type DiskField = fn(&DiskStats) -> f64;
    let disk_fields: [(&str, &str, Option<&Unit>, DiskField); 3] = [
        (
            "node_disk_read",
            "The total number of bytes read successfully.",
            bytes,
            |d| d.read_bytes,
        ),
        (
            "node_disk_written",
            "The total number of bytes written successfully.",
            bytes,
            |d| d.written_bytes,
        ),
        (
            "node_disk_io_time",
            "Total seconds spent doing I/Os.",
            seconds,
            |d| d.io_time_seconds,
        ),
    ];
    for (name, help, unit, get) in disk_fields {
        family(
            enc,
            name,
            help,
            unit,
            Counter,
            s.disks
                .iter()
                .map(|d| (vec![("device", d.device.clone())], get(d))),
        )?;
    }

    single(
        enc,
        "node_boot_time",
        "Node boot time, in unixtime.",
        seconds,
        Gauge,
        s.stat.btime.map(|b| b as f64),
    )?;
    single(
        enc,
        "node_time",
        "System time in seconds since epoch (1970).",
        seconds,
        Gauge,
        Some(s.time),
    )?;
    family(
        enc,
        "node_uname_info",
        "Labeled system information as provided by the uname system call.",
        None,
        Gauge,
        s.uname.iter().map(|u| {
            (
                vec![
                    ("domainname", u.domainname.clone()),
                    ("machine", u.machine.clone()),
                    ("nodename", u.nodename.clone()),
                    ("release", u.release.clone()),
                    ("sysname", u.sysname.clone()),
                    ("version", u.version.clone()),
                ],
                1.0,
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn render(snapshot: NodeSnapshot) -> String {
        let collector = NodeCollector::default();
        collector.set(snapshot);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn snapshot_is_encoded_under_node_exporter_names() {
        let snapshot = NodeSnapshot {
            stat: procfs::parse_stat("cpu0 100 0 50 1000 0 0 0 0\nbtime 1700000000\n"),
            load: Some([0.5, 0.25, 0.125]),
            meminfo: procfs::parse_meminfo("MemTotal: 1000 kB\nSwapFree: 0 kB\n"),
            filesystems: vec![(
                Mount {
                    device: "/dev/vda1".into(),
                    mountpoint: "/".into(),
                    fstype: "ext4".into(),
                },
                FsStats {
                    size: 4096.0,
                    free: 2048.0,
                    avail: 1024.0,
                    files: 100.0,
                    files_free: 50.0,
                },
            )],
            net: procfs::parse_net_dev("eth0: 1 2 3 4 0 0 0 0 5 6 7 8 0 0 0 0\n"),
            disks: vec![DiskStats {
                device: "vda".into(),
                read_bytes: 512.0,
                written_bytes: 1024.0,
                io_time_seconds: 1.5,
            }],
            uname: Some(Uname {
                sysname: "Linux".into(),
                release: "6.1.0-18-amd64".into(),
                version: "#1 SMP".into(),
                machine: "x86_64".into(),
                nodename: "web-1".into(),
                domainname: "(none)".into(),
            }),
            time: 1_700_000_100.5,
        };
        let out = render(snapshot);
        for line in [
            "node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 1.0",
            "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 10.0",
            "node_cpu_seconds_total{cpu=\"0\",mode=\"steal\"} 0.0",
            "node_load1 0.5",
            "node_load15 0.125",
            "node_memory_MemTotal_bytes 1024000.0",
            "node_memory_SwapFree_bytes 0.0",
            "node_filesystem_size_bytes{device=\"/dev/vda1\",fstype=\"ext4\",mountpoint=\"/\"} 4096.0",
            "node_filesystem_files_free{device=\"/dev/vda1\",fstype=\"ext4\",mountpoint=\"/\"} 50.0",
            "node_network_receive_bytes_total{device=\"eth0\"} 1.0",
            "node_network_transmit_drop_total{device=\"eth0\"} 8.0",
            "node_disk_read_bytes_total{device=\"vda\"} 512.0",
            "node_disk_io_time_seconds_total{device=\"vda\"} 1.5",
            "node_boot_time_seconds 1700000000.0",
            "node_time_seconds 1700000100.5",
            "node_uname_info{domainname=\"(none)\",machine=\"x86_64\",nodename=\"web-1\",release=\"6.1.0-18-amd64\",sysname=\"Linux\",version=\"#1 SMP\"} 1.0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert!(out.contains("# TYPE node_cpu_seconds counter"), "{out}");
        assert!(out.contains("# TYPE node_memory_MemAvailable_bytes gauge"));
        // MemAvailable was not in the input: described, but no sample invented.
        assert!(!out.contains("\nnode_memory_MemAvailable_bytes "), "{out}");
    }

    #[test]
    fn this_hosts_snapshot_has_the_basics() {
        let s = NodeSnapshot::read();
        assert!(!s.stat.cpus.is_empty());
        assert!(s.stat.btime.is_some());
        assert!(s.meminfo.get("MemTotal").copied().unwrap_or(0) > 0);
        assert!(s.load.is_some());
        assert!(s.net.iter().any(|d| d.device == "lo"));
        assert!(s.uname.as_ref().is_some_and(|u| u.sysname == "Linux"));
    }
}
