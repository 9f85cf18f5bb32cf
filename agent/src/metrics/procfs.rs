//! Constants of the /proc formats shared by the node collectors, and the per-process
//! usage (PSS, CPU) the app metrics read when a unit has no cgroup accounting.
//!
//! The conversions follow node_exporter's, so the same query gives the same number whether
//! a host runs node_exporter or fleet-agent.

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
}
