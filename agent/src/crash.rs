//! Crash classification from the sequence of a service unit's property snapshots (each
//! PropertiesChanged signal yields one). Pure, so the sequences systemd produces can be
//! replayed in tests; the snapshots themselves come from `systemd.rs`.
//!
//! What systemd shows (Restart=always, KillMode=mixed):
//! - main process killed: Result=signal and ActiveState=deactivating at once (remaining
//!   workers are being stopped), then SubState=auto-restart, then NRestarts+1 and a new
//!   MainPID. The first of these is reported, within the signal's latency, not after
//!   RestartSec;
//! - a release that cannot start: the same, over and over, until the start limit, then
//!   ActiveState=failed with Result=start-limit-hit.

use std::collections::VecDeque;

use crate::systemd::UnitProps;

/// Crashes within this window that make a crash loop.
pub const LOOP_WINDOW_MS: i64 = 60_000;
pub const LOOP_CRASHES: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Crash(String),
    CrashLoop(String),
    State(String),
}

impl Verdict {
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Crash(_) => "crash",
            Verdict::CrashLoop(_) => "crash_loop",
            Verdict::State(_) => "state",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Verdict::Crash(m) | Verdict::CrashLoop(m) | Verdict::State(m) => m,
        }
    }
}

#[derive(Debug, Default)]
pub struct Tracker {
    prev: Option<UnitProps>,
    /// A crash was reported and the unit has not been running since: its later
    /// transitions (auto-restart, NRestarts+1) belong to the same crash.
    in_crash: bool,
    crashes: VecDeque<i64>,
    pub crash_loop: bool,
}

fn is_up(p: &UnitProps) -> bool {
    p.active_state == "active" || p.active_state == "reloading"
}

fn failed_result(r: &str) -> bool {
    !r.is_empty() && r != "success"
}

impl Tracker {
    /// Forgets crash history: the agent itself (re)started the app on purpose.
    pub fn reset(&mut self) {
        self.in_crash = false;
        self.crashes.clear();
        self.crash_loop = false;
    }

    /// Takes the current snapshot as the baseline without judging it (after a job the
    /// agent ran itself, whose transitions are not crashes).
    pub fn rebase(&mut self, p: &UnitProps) {
        self.prev = Some(p.clone());
        if is_up(p) && p.sub_state == "running" {
            self.in_crash = false;
        }
    }

    /// Clears the crash-loop flag once the app has run without a crash for a whole
    /// window. Returns whether it changed.
    pub fn settle(&mut self, now_ms: i64, healthy: bool) -> bool {
        self.crashes.retain(|t| now_ms - t < LOOP_WINDOW_MS);
        let up = self.prev.as_ref().is_some_and(is_up);
        if self.crash_loop && healthy && up && self.crashes.is_empty() {
            self.crash_loop = false;
            return true;
        }
        false
    }

    /// Judges one snapshot against the previous one.
    pub fn observe(&mut self, p: &UnitProps, now_ms: i64) -> Vec<Verdict> {
        let Some(prev) = self.prev.replace(p.clone()) else {
            // First sight (agent start): describe, never accuse.
            if p.active_state == "failed" && p.result == "start-limit-hit" {
                self.crash_loop = true;
            }
            return Vec::new();
        };
        let mut out = Vec::new();
        let died = (p.sub_state == "auto-restart" && prev.sub_state != "auto-restart")
            || p.n_restarts > prev.n_restarts
            || (is_up(&prev) && !is_up(p) && failed_result(&p.result))
            || (is_up(&prev)
                && is_up(p)
                && prev.main_pid != 0
                && p.main_pid != 0
                && p.main_pid != prev.main_pid);
        if died && !self.in_crash {
            self.in_crash = true;
            self.crashes.push_back(now_ms);
            self.crashes.retain(|t| now_ms - t < LOOP_WINDOW_MS);
            let what = if p.main_pid != prev.main_pid && p.main_pid != 0 && is_up(p) {
                format!("main process {} replaced by {}", prev.main_pid, p.main_pid)
            } else {
                format!(
                    "main process {} exited (result {})",
                    prev.main_pid,
                    if p.result.is_empty() {
                        "unknown"
                    } else {
                        &p.result
                    }
                )
            };
            let n = self.crashes.len();
            if n >= LOOP_CRASHES {
                self.crash_loop = true;
                out.push(Verdict::CrashLoop(format!(
                    "{what}; {n} crashes within {}s",
                    LOOP_WINDOW_MS / 1000
                )));
            } else {
                out.push(Verdict::Crash(format!(
                    "{what}; systemd restarts it (restarts so far: {})",
                    p.n_restarts
                )));
            }
        }
        if p.active_state == "failed" && prev.active_state != "failed" {
            let msg = format!(
                "unit failed (result {}) after {} restarts; systemd gave up",
                p.result, p.n_restarts
            );
            if p.result == "start-limit-hit" || !self.crashes.is_empty() {
                self.crash_loop = true;
                out.push(Verdict::CrashLoop(msg));
            } else {
                out.push(Verdict::State(msg));
            }
        } else if p.active_state != prev.active_state
            && matches!(p.active_state.as_str(), "active" | "inactive")
        {
            out.push(Verdict::State(format!(
                "{} -> {} ({})",
                prev.active_state, p.active_state, p.sub_state
            )));
        }
        // The crash is over once a process runs again, or a new start attempt begins
        // (a release that dies before it is ever "running" still counts each attempt).
        let new_attempt = prev.sub_state == "auto-restart" && p.sub_state != "auto-restart";
        if new_attempt || (is_up(p) && p.sub_state == "running" && p.main_pid != 0) {
            self.in_crash = false;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(active: &str, sub: &str, result: &str, restarts: u32, pid: u32) -> UnitProps {
        UnitProps {
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: sub.into(),
            result: result.into(),
            n_restarts: restarts,
            main_pid: pid,
            active_enter_us: 0,
        }
    }

    fn kinds(v: &[Verdict]) -> Vec<&'static str> {
        v.iter().map(Verdict::kind).collect()
    }

    #[test]
    fn kill_of_the_master_is_one_crash_reported_at_the_first_signal() {
        let mut t = Tracker::default();
        assert!(t
            .observe(&snap("active", "running", "success", 0, 100), 0)
            .is_empty());
        // SIGKILL of the master: Result=signal while the workers are stopped.
        let v = t.observe(&snap("deactivating", "stop-sigterm", "signal", 0, 0), 10);
        assert_eq!(kinds(&v), ["crash"]);
        assert!(v[0]
            .message()
            .contains("main process 100 exited (result signal)"));
        // The rest of the same crash is not reported again.
        assert!(t
            .observe(&snap("activating", "auto-restart", "signal", 0, 0), 20)
            .is_empty());
        assert!(t
            .observe(&snap("activating", "start", "signal", 1, 200), 600)
            .is_empty());
        let v = t.observe(&snap("active", "running", "success", 1, 200), 700);
        assert_eq!(kinds(&v), ["state"]);
        assert!(!t.crash_loop);
        // A second, separate crash is reported again.
        let v = t.observe(&snap("activating", "auto-restart", "signal", 1, 0), 5_000);
        assert_eq!(kinds(&v), ["crash"]);
    }

    #[test]
    fn missed_signals_still_count_restarts() {
        let mut t = Tracker::default();
        t.observe(&snap("active", "running", "success", 2, 100), 0);
        let v = t.observe(&snap("active", "running", "success", 3, 300), 10);
        assert_eq!(kinds(&v), ["crash"]);
    }

    #[test]
    fn main_pid_change_while_active_is_a_crash() {
        let mut t = Tracker::default();
        t.observe(&snap("active", "running", "success", 0, 100), 0);
        let v = t.observe(&snap("active", "running", "success", 0, 101), 10);
        assert_eq!(kinds(&v), ["crash"]);
        assert!(v[0].message().contains("replaced by 101"));
    }

    #[test]
    fn a_release_that_cannot_start_becomes_a_crash_loop_then_failed() {
        let mut t = Tracker::default();
        t.observe(&snap("activating", "start", "success", 0, 10), 0);
        let mut all = Vec::new();
        for i in 0..5u32 {
            let at = i64::from(i) * 600;
            all.extend(t.observe(&snap("activating", "auto-restart", "exit-code", i, 0), at));
            all.extend(t.observe(
                &snap("activating", "start", "exit-code", i + 1, 20 + i),
                at + 500,
            ));
        }
        all.extend(t.observe(&snap("failed", "failed", "start-limit-hit", 5, 0), 3_100));
        let k = kinds(&all);
        assert_eq!(&k[..2], ["crash", "crash"]);
        assert!(k[2..].iter().all(|k| *k == "crash_loop"), "{k:?}");
        assert_eq!(*k.last().unwrap(), "crash_loop");
        assert!(all.last().unwrap().message().contains("start-limit-hit"));
        assert!(t.crash_loop);
        // Still crash_loop until it ran a whole window without crashing.
        assert!(!t.settle(10_000, true));
        t.reset();
        assert!(!t.crash_loop);
    }

    #[test]
    fn adopting_a_failed_unit_flags_the_loop_without_an_event() {
        let mut t = Tracker::default();
        let v = t.observe(&snap("failed", "failed", "start-limit-hit", 5, 0), 0);
        assert!(v.is_empty());
        assert!(t.crash_loop);
    }

    #[test]
    fn crash_loop_settles_after_a_quiet_window() {
        let mut t = Tracker::default();
        t.observe(&snap("active", "running", "success", 0, 1), 0);
        for i in 0..3u32 {
            t.observe(
                &snap("activating", "auto-restart", "signal", i, 0),
                i64::from(i) * 100,
            );
            t.observe(
                &snap("active", "running", "success", i + 1, 10 + i),
                i64::from(i) * 100 + 50,
            );
        }
        assert!(t.crash_loop);
        assert!(!t.settle(30_000, true));
        assert!(
            !t.settle(LOOP_WINDOW_MS + 1_000, false),
            "only when healthy"
        );
        assert!(t.settle(LOOP_WINDOW_MS + 1_000, true));
        assert!(!t.crash_loop);
    }

    #[test]
    fn an_agent_job_is_rebased_not_judged() {
        let mut t = Tracker::default();
        t.observe(&snap("active", "running", "success", 0, 100), 0);
        // The agent restarted it: the new pid is the baseline, no crash.
        t.rebase(&snap("active", "running", "success", 0, 200));
        assert!(t
            .observe(&snap("active", "running", "success", 0, 200), 10)
            .is_empty());
    }
}
