//! Process identity helpers. A PID alone can be reused, so the lab records
//! (pid, start time) and only ever signals a process whose start time matches.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcRec {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat (clock ticks since boot).
    pub start: u64,
}

/// (state, ppid, start time) from /proc/PID/stat; the comm field may contain
/// spaces and parentheses, so parse after the last ')'.
fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field N is f[N-3].
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

impl ProcRec {
    pub fn of(pid: i32) -> Option<Self> {
        stat(pid).map(|(_, _, start)| ProcRec { pid, start })
    }
    /// Alive and still the same process; zombies count as dead.
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((st, _, start)) if start == self.start && st != 'Z' && st != 'X')
    }
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if self.alive() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig);
        }
    }
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.alive() {
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// True when the process is the init of a PID namespace below ours
/// (its NSpid line ends in 1): that is a container's leader.
pub fn is_ns_init(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("NSpid:"))
                .map(|l| l.split_whitespace().count() > 2 && l.ends_with("\t1"))
        })
        .unwrap_or(false)
}

pub fn ppid(pid: i32) -> Option<i32> {
    stat(pid).map(|(_, p, _)| p)
}

pub fn children(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                if ppid(pid) == Some(parent) {
                    out.push(pid);
                }
            }
        }
    }
    out
}
