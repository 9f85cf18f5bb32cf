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
    /// Alive and still the same process. A zombie counts as dead only once its whole thread
    /// group is gone: after SIGKILL the main thread turns zombie at once, while another
    /// thread (one in fsync, say) can take a while to exit and keeps the process's sockets
    /// and file locks until it does. A controller restarted in that window finds its port
    /// still answering and its store still locked.
    pub fn alive(&self) -> bool {
        match stat(self.pid) {
            Some((st, _, start)) if start == self.start => {
                !matches!(st, 'Z' | 'X') || threads(self.pid) > 1
            }
            _ => false,
        }
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

/// Threads listed for `pid`, the main thread included (0 when it is gone).
fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_zombie_main_thread_with_a_live_thread_is_still_alive() {
        // The main thread exits at once; another thread keeps the process for 2 s.
        let script = "import threading, time, ctypes\n\
                      threading.Thread(target=time.sleep, args=(2,)).start()\n\
                      ctypes.CDLL(None).pthread_exit(None)\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .spawn()
            .unwrap();
        let rec = ProcRec::of(child.id() as i32).unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while stat(rec.pid).map(|(st, _, _)| st) != Some('Z') {
            assert!(Instant::now() < end, "the main thread never exited");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(rec.alive(), "counted dead while a thread still runs");
        assert!(rec.wait_gone(Duration::from_secs(10)));
        // Exited but not yet reaped: a zombie of one thread is dead.
        assert_eq!(stat(rec.pid).map(|(st, _, _)| st), Some('Z'));
        assert!(!rec.alive());
        child.wait().unwrap();
        assert!(!rec.alive());
    }
}
