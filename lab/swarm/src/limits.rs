//! Process facts read from /proc, and the open-file limit.

use std::collections::HashMap;

use anyhow::{Context, Result};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raises the soft RLIMIT_NOFILE to the hard one: each simulated host holds a socket (two
/// while it joins), far more than the usual soft limit of 1024.
pub fn raise_nofile() {
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

pub fn nofile_hard() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(1024)
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    parse_status_kib(&text, field).with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    parse_stat_ticks(&text).with_context(|| format!("unexpected /proc/{pid}/stat"))
}

/// CPU ticks of `root` and its direct children (PostgreSQL's postmaster and its
/// backends, checkpointer, WAL writer), as they are now: a child that exited is missed.
pub fn tree_cpu_ticks(root: u32) -> Result<u64> {
    let mut total = cpu_ticks(root)?;
    for entry in std::fs::read_dir("/proc").context("read /proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if parse_stat_parent(&text) == Some(root) {
            total += parse_stat_ticks(&text).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Field 4 (ppid).
fn parse_stat_parent(text: &str) -> Option<u32> {
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The postmaster's PID: the first line of `postmaster.pid` in its data directory.
pub fn postmaster_pid(data: &std::path::Path) -> Result<u32> {
    let path = data.join("postmaster.pid");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no PID on the first line of {}", path.display()))
}

/// Fields 14 and 15 (utime, stime), counted after the `(comm)` that may hold spaces.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After ")" the first field is #3 (state): utime is #14, stime #15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn clock_ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(100)
}

/// TcpExt counters from /proc/net/netstat (ListenOverflows, ListenDrops, ...).
pub fn tcp_ext() -> Result<HashMap<String, u64>> {
    let text = std::fs::read_to_string("/proc/net/netstat").context("read /proc/net/netstat")?;
    Ok(parse_netstat(&text, "TcpExt:"))
}

fn parse_netstat(text: &str, prefix: &str) -> HashMap<String, u64> {
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
    let mut out = HashMap::new();
    if let [names, values, ..] = lines.as_slice() {
        for (n, v) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            if let Ok(v) = v.parse() {
                out.insert(n.to_owned(), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let t = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kib(t, "VmRSS"), Some(1024));
        assert_eq!(parse_status_kib(t, "VmHWM"), Some(2048));
        assert_eq!(parse_status_kib(t, "VmSwap"), None);
    }

    #[test]
    fn stat_ticks_after_a_comm_with_spaces() {
        let t = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_stat_ticks(t), Some(12));
        assert_eq!(parse_stat_parent(t), Some(1));
    }

    #[test]
    fn netstat_pairs_names_with_values() {
        let t = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 1 2 3\nIpExt: A\nIpExt: 9\n";
        let m = parse_netstat(t, "TcpExt:");
        assert_eq!(m["ListenOverflows"], 2);
        assert_eq!(m["ListenDrops"], 3);
        assert!(!m.contains_key("A"));
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(status_kib(me, "VmRSS").unwrap() > 0);
        cpu_ticks(me).unwrap();
        assert!(tree_cpu_ticks(me).unwrap() >= cpu_ticks(me).unwrap());
    }
}
