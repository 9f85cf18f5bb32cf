//! Parsers for the /proc files behind the node metrics. Pure functions over the files'
//! text, so each format is pinned by a test on captured sample text; reading the files is
//! the caller's business (`node.rs`).
//!
//! The conversions follow node_exporter's, so the same query gives the same number whether
//! a host runs node_exporter or fleet-agent.

use std::collections::HashMap;

/// Clock ticks per second of the times in /proc/stat. Linux reports them in USER_HZ, which
/// is 100 on every architecture Debian ships (node_exporter assumes the same constant).
pub const USER_HZ: f64 = 100.0;

/// Sector size of the counters in /proc/diskstats: always 512 bytes, whatever the device's
/// real sector size (Documentation/admin-guide/iostats.rst).
pub const DISKSTATS_SECTOR: f64 = 512.0;

/// The CPU modes node_exporter exports, in /proc/stat column order.
pub const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stat {
    /// Per-CPU seconds in each of [`CPU_MODES`], keyed by the CPU number as text ("0").
    pub cpus: Vec<(String, [f64; 8])>,
    /// Boot time, seconds since the epoch.
    pub btime: Option<u64>,
}

/// `/proc/stat`: the per-CPU lines (not the aggregate `cpu` line) and `btime`.
pub fn parse_stat(text: &str) -> Stat {
    let mut stat = Stat::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        if key == "btime" {
            stat.btime = fields.next().and_then(|v| v.parse().ok());
        } else if let Some(n) = key.strip_prefix("cpu").filter(|n| !n.is_empty()) {
            if !n.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let mut times = [0.0; 8];
            // Older kernels have fewer columns; missing ones stay 0 as in node_exporter.
            for (slot, value) in times.iter_mut().zip(fields) {
                *slot = value.parse::<u64>().unwrap_or(0) as f64 / USER_HZ;
            }
            stat.cpus.push((n.to_owned(), times));
        }
    }
    stat
}

/// `/proc/PID/stat`: CPU ticks (USER_HZ) of the process and of the children it reaped
/// (utime + stime + cutime + cstime). Summed over the live processes of a unit this counts
/// every process that ever ran in it exactly once: a reaped worker's time moved into the
/// reaper's cutime.
pub fn parse_pid_cpu_ticks(text: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime..cstime are fields 14..=17.
    fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum()
}

/// `/proc/PID/smaps_rollup`: proportional set size in bytes. PSS splits pages shared by
/// a preforked master and its workers among them, so a sum over the unit is not inflated.
pub fn parse_pss_bytes(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Memory (PSS, bytes) and CPU seconds of a set of processes, read from /proc: what the
/// agent reports for an app when systemd has no cgroup accounting for its unit. `None` when
/// none of the processes could be read (all gone meanwhile).
pub fn processes_usage(pids: &[u32]) -> Option<(u64, f64)> {
    let mut seen = false;
    let (mut memory, mut ticks) = (0u64, 0u64);
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let Some(t) = stat.as_deref().and_then(parse_pid_cpu_ticks) else {
            continue;
        };
        seen = true;
        ticks += t;
        memory += std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .as_deref()
            .and_then(parse_pss_bytes)
            .unwrap_or(0);
    }
    seen.then(|| (memory, ticks as f64 / USER_HZ))
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut f = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([f.next()??, f.next()??, f.next()??])
}

/// `/proc/meminfo` in bytes, keyed by field name (`MemTotal`); lines in kB are scaled by
/// 1024 (the kernel's "kB" is KiB), unit-less lines (HugePages_Total) are kept as is.
pub fn parse_meminfo(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut parts = rest.split_whitespace();
            let value: u64 = parts.next()?.parse().ok()?;
            let value = match parts.next() {
                Some("kB") => value.checked_mul(1024)?,
                _ => value,
            };
            Some((key.trim().to_owned(), value))
        })
        .collect()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetDev {
    pub device: String,
    pub receive: NetCounters,
    pub transmit: NetCounters,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub bytes: u64,
    pub packets: u64,
    pub errs: u64,
    pub drop: u64,
}

/// `/proc/net/dev`: two header lines, then `name: 8 receive columns 8 transmit columns`.
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            if v.len() < 16 {
                return None;
            }
            Some(NetDev {
                device: name.trim().to_owned(),
                receive: NetCounters {
                    bytes: v[0],
                    packets: v[1],
                    errs: v[2],
                    drop: v[3],
                },
                transmit: NetCounters {
                    bytes: v[8],
                    packets: v[9],
                    errs: v[10],
                    drop: v[11],
                },
            })
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq)]
pub struct DiskStats {
    pub device: String,
    pub read_bytes: f64,
    pub written_bytes: f64,
    pub io_time_seconds: f64,
}

/// `/proc/diskstats`: `major minor name` then the iostats fields; sectors read is the 3rd
/// field after the name, sectors written the 7th, milliseconds doing I/O the 10th.
/// Partitions, loop, ram and floppy devices are skipped, as node_exporter does by default.
pub fn parse_diskstats(text: &str) -> Vec<DiskStats> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 14 {
                return None;
            }
            let device = f[2];
            if disk_excluded(device) {
                return None;
            }
            let num = |i: usize| f[i].parse::<u64>().ok().map(|v| v as f64);
            Some(DiskStats {
                device: device.to_owned(),
                read_bytes: num(5)? * DISKSTATS_SECTOR,
                written_bytes: num(9)? * DISKSTATS_SECTOR,
                io_time_seconds: num(12)? / 1000.0,
            })
        })
        .collect()
}

/// node_exporter 1.5's default `--collector.diskstats.device-exclude`,
/// `^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`, without a regex engine: whole disks
/// (`sda`, `nvme0n1`, `dm-0`, `md0`) stay, their partitions and pseudo devices go.
pub fn disk_excluded(name: &str) -> bool {
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    for prefix in ["ram", "loop", "fd"] {
        if name.strip_prefix(prefix).is_some_and(digits_only) {
            return true;
        }
    }
    for prefix in ["hd", "sd", "vd", "xvd"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let mut chars = rest.chars();
            if chars.next().is_some_and(|c| c.is_ascii_lowercase()) && digits_only(chars.as_str()) {
                return true;
            }
        }
    }
    // nvme<digits>n<digits>p<digits>
    if let Some(rest) = name.strip_prefix("nvme") {
        let parts: Vec<&str> = rest.splitn(2, 'n').collect();
        if let [ctrl, ns_part] = parts[..] {
            if let Some((ns, part)) = ns_part.split_once('p') {
                return digits_only(ctrl) && digits_only(ns) && digits_only(part);
            }
        }
    }
    false
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
}

/// `/proc/*/mounts` (fstab format, octal escapes for blanks), minus the pseudo and
/// container-internal filesystems node_exporter skips by default. A mount point mounted
/// over keeps only its last (visible) entry, so no series is exported twice.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    let mut out: Vec<Mount> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mount = Mount {
            device: unescape_octal(f[0]),
            mountpoint: unescape_octal(f[1]),
            fstype: f[2].to_owned(),
        };
        if fstype_excluded(&mount.fstype) || mountpoint_excluded(&mount.mountpoint) {
            continue;
        }
        out.retain(|m| m.mountpoint != mount.mountpoint);
        out.push(mount);
    }
    out
}

/// node_exporter 1.5's default `--collector.filesystem.fs-types-exclude`.
pub fn fstype_excluded(fstype: &str) -> bool {
    const PSEUDO: &[&str] = &[
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "fusectl",
        "hugetlbfs",
        "iso9660",
        "mqueue",
        "nsfs",
        "overlay",
        "proc",
        "procfs",
        "pstore",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "sysfs",
        "tracefs",
    ];
    PSEUDO.contains(&fstype)
}

/// node_exporter 1.5's default `--collector.filesystem.mount-points-exclude`,
/// `^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)`.
pub fn mountpoint_excluded(mountpoint: &str) -> bool {
    let under = |dir: &str| {
        mountpoint == dir
            || mountpoint
                .strip_prefix(dir)
                .is_some_and(|r| r.starts_with('/'))
    };
    // The `.+` ones: only what lies below the directory, not the directory itself.
    let below = |dir: &str| {
        mountpoint
            .strip_prefix(dir)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|r| !r.is_empty())
    };
    under("/dev")
        || under("/proc")
        || under("/sys")
        || below("/run/credentials")
        || below("/var/lib/docker")
        || below("/var/lib/containers/storage")
}

/// Undoes the kernel's `\040`-style escapes of blanks and backslashes in mount fields.
fn unescape_octal(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_cpu_ticks_add_own_and_reaped_children_time() {
        let stat = "4242 (gunicorn: master [shop) (x)) S 1 4242 4242 0 -1 4194560 \
                    9000 120 0 0 250 50 30 20 20 0 3 0 1234 100000 2000 18446744073709551615";
        assert_eq!(parse_pid_cpu_ticks(stat), Some(250 + 50 + 30 + 20));
        assert_eq!(parse_pid_cpu_ticks("17 (short) S 1 2 3"), None);
        assert_eq!(parse_pid_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn pss_is_read_in_bytes() {
        let rollup = "55d0-7ffc ---p 00000000 00:00 0 [rollup]\nRss: 11488 kB\nPss: 9264 kB\nPss_Dirty: 1648 kB\n";
        assert_eq!(parse_pss_bytes(rollup), Some(9264 * 1024));
        assert_eq!(parse_pss_bytes("Rss: 1 kB\n"), None);
    }

    #[test]
    fn usage_of_this_process_is_read_from_proc() {
        let (memory, cpu) = processes_usage(&[std::process::id()]).expect("own /proc entry");
        assert!(memory > 0);
        assert!(cpu >= 0.0);
        // A pid that cannot exist (above pid_max's ceiling) reads as nothing.
        assert_eq!(processes_usage(&[u32::MAX]), None);
    }

    const STAT: &str = "\
cpu  180105 0 40822 238352 2976 0 612 116 0 0
cpu0 87532 0 19367 123553 816 0 79 55 0 0
cpu1 92573 3 21455 114798 2160 1 532 60 7 0
intr 1234 0 0
ctxt 98765
btime 1767225600
processes 5102
";

    #[test]
    fn stat_gives_per_cpu_seconds_and_boot_time() {
        let s = parse_stat(STAT);
        assert_eq!(s.btime, Some(1_767_225_600));
        assert_eq!(s.cpus.len(), 2, "the aggregate line is not a CPU");
        assert_eq!(s.cpus[0].0, "0");
        assert_eq!(s.cpus[1].0, "1");
        // user nice system idle iowait irq softirq steal, in seconds at USER_HZ=100.
        assert_eq!(
            s.cpus[1].1,
            [925.73, 0.03, 214.55, 1147.98, 21.6, 0.01, 5.32, 0.6]
        );
    }

    #[test]
    fn stat_of_an_old_kernel_with_fewer_columns() {
        let s = parse_stat("cpu0 100 200 300 400\n");
        assert_eq!(s.cpus[0].1, [1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(s.btime, None);
    }

    #[test]
    fn loadavg() {
        assert_eq!(
            parse_loadavg("3.77 4.58 2.99 1/105 5102\n"),
            Some([3.77, 4.58, 2.99])
        );
        assert_eq!(parse_loadavg("garbage"), None);
        assert_eq!(parse_loadavg(""), None);
    }

    #[test]
    fn meminfo_is_in_bytes() {
        let text = "MemTotal:       24558940 kB\nMemFree:        18000000 kB\n\
                    MemAvailable:   23000000 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n";
        let m = parse_meminfo(text);
        assert_eq!(m["MemTotal"], 24_558_940 * 1024);
        assert_eq!(m["MemAvailable"], 23_000_000 * 1024);
        assert_eq!(m["HugePages_Total"], 0);
        assert_eq!(m["Hugepagesize"], 2048 * 1024);
        assert!(!m.contains_key("SwapTotal"));
    }

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 5035217   27569    0    0    0     0          0         0  5035217   27569    0    0    0     0       0          0
  eth0: 98765432  123456    2    5    0     0          0        17 4321098   54321    1    3    0     0       0          0
";

    #[test]
    fn net_dev_counters() {
        let devs = parse_net_dev(NET_DEV);
        assert_eq!(devs.len(), 2, "header lines are skipped");
        assert_eq!(devs[0].device, "lo");
        assert_eq!(
            devs[1],
            NetDev {
                device: "eth0".into(),
                receive: NetCounters {
                    bytes: 98_765_432,
                    packets: 123_456,
                    errs: 2,
                    drop: 5
                },
                transmit: NetCounters {
                    bytes: 4_321_098,
                    packets: 54_321,
                    errs: 1,
                    drop: 3
                },
            }
        );
    }

    const DISKSTATS: &str = "\
   7       0 loop0 10 0 20 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   8       0 sda 4182 1277 331446 2033 2871 2734 118394 3419 0 5476 5769 0 0 0 0 318 316
   8       1 sda1 4000 1200 300000 2000 2800 2700 118000 3400 0 5400 5700 0 0 0 0 0 0
 259       0 nvme0n1 100 0 800 10 50 0 400 5 0 1500 15 0 0 0 0 0 0
 259       1 nvme0n1p1 100 0 800 10 50 0 400 5 0 1500 15 0 0 0 0 0 0
 253       0 dm-0 77 0 616 3 0 0 0 0 0 20 3
";

    #[test]
    fn diskstats_whole_disks_only() {
        let d = parse_diskstats(DISKSTATS);
        let names: Vec<&str> = d.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["sda", "nvme0n1", "dm-0"]);
        assert!(
            parse_diskstats("   8 0 sdz 1 2 3\n").is_empty(),
            "short line"
        );
        assert_eq!(d[0].read_bytes, 331_446.0 * 512.0);
        assert_eq!(d[0].written_bytes, 118_394.0 * 512.0);
        assert_eq!(d[0].io_time_seconds, 5.476);
    }

    #[test]
    fn disk_exclusion_matches_node_exporter() {
        for excluded in [
            "loop0",
            "loop12",
            "ram0",
            "fd0",
            "sda1",
            "vdb2",
            "xvda1",
            "hdc3",
            "nvme0n1p1",
            "nvme10n2p15",
        ] {
            assert!(disk_excluded(excluded), "{excluded}");
        }
        for kept in [
            "sda",
            "vdb",
            "xvda",
            "nvme0n1",
            "dm-0",
            "md0",
            "mmcblk0",
            "loop",
            "sr0",
            "nvme0c0n1",
        ] {
            assert!(!disk_excluded(kept), "{kept}");
        }
    }

    const MOUNTS: &str = "\
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
devtmpfs /dev devtmpfs rw,relatime 0 0
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev 0 0
tmpfs /run/credentials/systemd-sysusers.service tmpfs ro 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
/dev/vdb /srv/my\\040data xfs rw 0 0
overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0
/dev/vdc /var/lib/docker xfs rw 0 0
/dev/vdd /srv/my\\040data ext4 rw 0 0
";

    #[test]
    fn mounts_skip_pseudo_filesystems_and_unescape() {
        let m = parse_mounts(MOUNTS);
        let got: Vec<(&str, &str, &str)> = m
            .iter()
            .map(|m| (m.device.as_str(), m.mountpoint.as_str(), m.fstype.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/dev/vda1", "/", "ext4"),
                ("tmpfs", "/run", "tmpfs"),
                ("/dev/vdc", "/var/lib/docker", "xfs"),
                ("/dev/vdd", "/srv/my data", "ext4"),
            ]
        );
    }

    #[test]
    fn mountpoint_exclusion_is_anchored() {
        assert!(mountpoint_excluded("/dev/shm"));
        assert!(mountpoint_excluded("/proc"));
        assert!(!mountpoint_excluded("/devices"));
        assert!(!mountpoint_excluded("/run/credentials"));
        assert!(mountpoint_excluded("/run/credentials/x.service"));
        assert!(!mountpoint_excluded("/var/lib/containers/storage"));
        assert!(mountpoint_excluded("/var/lib/containers/storage/overlay"));
        assert!(!mountpoint_excluded("/"));
    }
}
