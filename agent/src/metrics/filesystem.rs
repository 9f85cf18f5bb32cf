//! `filesystem` collector: size, free, available and inode figures of each mounted
//! filesystem from statvfs(3), plus `readonly` (the `ro` mount option) and
//! `device_error`: a mount whose statvfs fails stays on the page with device_error 1,
//! so node-mixin's filesystem alerts (which join on `readonly`) see it rather than
//! silently losing it.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::Gauge;

use super::source::{fam, Collected, Filter, Outcome, Reader, Source, BYTES};

/// Debian's prometheus-node-exporter 1.5 `--collector.filesystem.mount-points-exclude`
/// (upstream's plus /run, /mnt and /media).
pub const DEFAULT_MOUNT_POINTS_EXCLUDE: &str =
    "^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)";
/// node_exporter 1.5's (and Debian's) `--collector.filesystem.fs-types-exclude`.
pub const DEFAULT_FS_TYPES_EXCLUDE: &str = "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$";

/// At most this many filesystems are reported (a bound on a host with thousands of
/// bind mounts; node_exporter has none, real servers have tens).
pub const MAX_MOUNTS: usize = 1000;

#[derive(Debug)]
pub struct Filesystem {
    pub mount_points: Filter,
    pub fs_types: Filter,
}

impl Default for Filesystem {
    fn default() -> Self {
        Filesystem {
            mount_points: Filter::exclude(DEFAULT_MOUNT_POINTS_EXCLUDE),
            fs_types: Filter::exclude(DEFAULT_FS_TYPES_EXCLUDE),
        }
    }
}

/// One mount line: device, mount point (octal escapes undone), fstype, read-only.
#[derive(Debug, PartialEq)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub readonly: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub size: f64,
    pub free: f64,
    pub avail: f64,
    pub files: f64,
    pub files_free: f64,
}

/// `/proc/*/mounts` lines kept by the filters; the first of identical
/// (device, mountpoint, fstype) entries wins, as in node_exporter.
pub fn mounts(text: &str, fs: &Filesystem) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        if !fs.fs_types.keep(f[2]) {
            continue;
        }
        let mountpoint = unescape_octal(f[1]);
        if !fs.mount_points.keep(&mountpoint) {
            continue;
        }
        let m = Mount {
            device: unescape_octal(f[0]),
            mountpoint,
            fstype: f[2].to_owned(),
            readonly: f[3].split(',').any(|o| o == "ro"),
        };
        if out
            .iter()
            .any(|o| o.device == m.device && o.mountpoint == m.mountpoint && o.fstype == m.fstype)
        {
            continue;
        }
        if out.len() >= MAX_MOUNTS {
            tracing::debug!("more than {MAX_MOUNTS} filesystems; the rest are left out");
            break;
        }
        out.push(m);
    }
    out
}

/// Sizes in bytes from statvfs(3), blocks counted in the fragment size as POSIX defines
/// them (equal to node_exporter's statfs block size on ext4, xfs, btrfs and tmpfs).
pub fn usage(path: &str) -> Option<Usage> {
    let s = nix::sys::statvfs::statvfs(path)
        .map_err(|e| tracing::debug!(path, error = %e, "statvfs failed: device_error 1"))
        .ok()?;
    let block = s.fragment_size() as f64;
    Some(Usage {
        size: s.blocks() as f64 * block,
        free: s.blocks_free() as f64 * block,
        avail: s.blocks_available() as f64 * block,
        files: s.files() as f64,
        files_free: s.files_free() as f64,
    })
}

/// Undoes the kernel's `\040`-style escapes of blanks and backslashes in mount fields.
fn unescape_octal(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes the mounts with their statvfs results (`None`: statvfs failed).
pub fn encode(enc: &mut DescriptorEncoder, rows: &[(Mount, Option<Usage>)]) -> Collected {
    fn labels(m: &Mount) -> [(&'static str, &str); 3] {
        [
            ("device", m.device.as_str()),
            ("fstype", m.fstype.as_str()),
            ("mountpoint", m.mountpoint.as_str()),
        ]
    }
    type Get = fn(&Usage) -> f64;
    let figures: [(&str, &str, bool, Get); 5] = [
        (
            "node_filesystem_size",
            "Filesystem size in bytes.",
            true,
            |u| u.size,
        ),
        (
            "node_filesystem_free",
            "Filesystem free space in bytes.",
            true,
            |u| u.free,
        ),
        (
            "node_filesystem_avail",
            "Filesystem space available to non-root users in bytes.",
            true,
            |u| u.avail,
        ),
        (
            "node_filesystem_files",
            "Filesystem total file nodes.",
            false,
            |u| u.files,
        ),
        (
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
            false,
            |u| u.files_free,
        ),
    ];
    for (name, help, bytes, get) in figures {
        let mut f = fam(enc, name, help, if bytes { BYTES } else { None }, Gauge)?;
        for (m, u) in rows {
            if let Some(u) = u {
                f.sample(&labels(m), get(u))?;
            }
        }
    }
    let mut f = fam(
        enc,
        "node_filesystem_readonly",
        "Filesystem read-only status.",
        None,
        Gauge,
    )?;
    for (m, _) in rows {
        f.sample(&labels(m), if m.readonly { 1.0 } else { 0.0 })?;
    }
    let mut f = fam(
        enc,
        "node_filesystem_device_error",
        "Whether an error occurred while getting statistics for the given device.",
        None,
        Gauge,
    )?;
    for (m, u) in rows {
        f.sample(&labels(m), if u.is_some() { 0.0 } else { 1.0 })?;
    }
    Ok(Outcome::Ok)
}

impl Source for Filesystem {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        // PID 1's view first, like node_exporter: the agent's own mount namespace may be
        // narrowed by systemd sandboxing.
        let first = io.proc("1/mounts").map(|t| mounts(t, self));
        let list = match first {
            Ok(list) => list,
            Err(_) => mounts(io.proc("self/mounts").unwrap_or_default(), self),
        };
        let ok = !list.is_empty();
        let rows: Vec<(Mount, Option<Usage>)> = list
            .into_iter()
            .map(|m| {
                let u = usage(&m.mountpoint);
                (m, u)
            })
            .collect();
        encode(enc, &rows)?;
        Ok(Outcome::from_ok(ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    const MOUNTS: &str = "\
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev 0 0
tmpfs /run/lock tmpfs rw 0 0
tmpfs /mnt/scratch tmpfs rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
/dev/vdb /srv/my\\040data xfs ro,relatime 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0
/dev/vdc /var/lib/docker xfs rw 0 0
/dev/vda1 / ext4 rw,relatime 0 0
short line
/dev/vdd /srv/gone ext4 rw,errors=remount-ro 0 0
";

    #[test]
    fn debian_defaults_keep_real_filesystems() {
        let m = mounts(MOUNTS, &Filesystem::default());
        let got: Vec<(&str, &str, bool)> = m
            .iter()
            .map(|m| (m.device.as_str(), m.mountpoint.as_str(), m.readonly))
            .collect();
        assert_eq!(
            got,
            [
                ("/dev/vda1", "/", false),
                ("/dev/vdb", "/srv/my data", true),
                ("/dev/vdc", "/var/lib/docker", false),
                ("/dev/vdd", "/srv/gone", false),
            ]
        );
    }

    #[test]
    fn excludes_are_configurable() {
        let fs = Filesystem {
            mount_points: Filter::exclude("^/srv"),
            fs_types: Filter::exclude("^(proc|sysfs|cgroup2)$"),
        };
        let m = mounts(MOUNTS, &fs);
        assert!(m.iter().any(|m| m.mountpoint == "/run/lock"));
        assert!(!m.iter().any(|m| m.mountpoint.starts_with("/srv")));
    }

    #[test]
    fn a_failing_statvfs_keeps_the_mount_with_device_error() {
        let fx = Fixture::new(&[]);
        let dir = fx.path().to_str().unwrap();
        let gone = format!("{dir}/not-there");
        let m = |p: &str, ro| Mount {
            device: "/dev/x".into(),
            mountpoint: p.into(),
            fstype: "ext4".into(),
            readonly: ro,
        };
        let rows = vec![(m(dir, true), usage(dir)), (m(&gone, false), usage(&gone))];
        assert!(rows[0].1.is_some() && rows[1].1.is_none());
        let mut registry = prometheus_client::registry::Registry::default();
        #[derive(Debug)]
        struct Rows(Vec<(Mount, Option<Usage>)>);
        impl prometheus_client::collector::Collector for Rows {
            fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
                encode(&mut enc, &self.0).map(|_| ())
            }
        }
        registry.register_collector(Box::new(Rows(rows)));
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
        let l = |name: &str, p: &str, v: &str| {
            format!("{name}{{device=\"/dev/x\",fstype=\"ext4\",mountpoint=\"{p}\"}} {v}")
        };
        assert!(
            has(&page, &l("node_filesystem_device_error", &gone, "1.0")),
            "{page}"
        );
        assert!(has(&page, &l("node_filesystem_readonly", &gone, "0.0")));
        assert!(!page.contains(&l("node_filesystem_size_bytes", &gone, "")));
        assert!(has(&page, &l("node_filesystem_device_error", dir, "0.0")));
        assert!(has(&page, &l("node_filesystem_readonly", dir, "1.0")));
        assert!(page.contains(&l("node_filesystem_avail_bytes", dir, "")));
    }

    #[test]
    fn missing_mounts_files_fail_the_collector() {
        let fx = Fixture::new(&[]);
        let page = render(Filesystem::default(), fx.path(), fx.path());
        assert!(page.contains("# TYPE node_filesystem_readonly gauge"));
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"filesystem\"} 0.0"
        ));
    }
}
