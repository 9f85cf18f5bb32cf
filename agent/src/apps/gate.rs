//! The health gate: waiting for an app to become healthy after a start, and holding it
//! healthy (same process, no restart) for `min_healthy`. The verdicts are pure functions
//! of the app's data, so their arithmetic is unit-tested here; the async loops only wait
//! for the next change.

use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::{is_up, lock, App, AppData, Inner};

/// Why the gate says no: the app's state in words, which the command wraps with the app,
/// release and journal lines.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(super) struct Unhealthy(pub(super) String);

/// Healthy (with what the probe saw) or not.
pub(super) type Verdict = Result<String, Unhealthy>;

/// After a start: `Some` once the app is healthy (Ok) or cannot become healthy without
/// help (Err: a crash loop or a failed unit); `None` while it may still get there.
fn started(d: &AppData) -> Option<Verdict> {
    let p = d.props.clone().unwrap_or_default();
    if d.health.healthy {
        return Some(Ok(format!(
            "healthy ({}), pid {}, {} restarts",
            d.health.detail, p.main_pid, p.n_restarts
        )));
    }
    if d.tracker.crash_loop {
        return Some(Err(Unhealthy(format!(
            "crash loop: unit {} ({}, result {}), {} restarts; last probe: {}",
            p.active_state, p.sub_state, p.result, p.n_restarts, d.health.detail
        ))));
    }
    if p.active_state == "failed" {
        return Some(Err(Unhealthy(format!(
            "unit failed (result {}); last probe: {}",
            p.result, d.health.detail
        ))));
    }
    None
}

/// During the hold: why the app no longer counts as the healthy process it was (main pid
/// `pid` with `restarts` restarts), or `None` while it still does.
fn broke_hold(d: &AppData, pid: u32, restarts: u32) -> Option<String> {
    let p = d.props.clone().unwrap_or_default();
    if d.tracker.crash_loop {
        Some(format!("crash loop ({} restarts)", p.n_restarts))
    } else if !is_up(&p) {
        Some(format!(
            "unit {} ({}, result {})",
            p.active_state, p.sub_state, p.result
        ))
    } else if p.n_restarts != restarts || p.main_pid != pid {
        Some(format!(
            "restarted (pid {pid} -> {}, {} restarts)",
            p.main_pid, p.n_restarts
        ))
    } else if !d.health.healthy {
        Some(format!("unhealthy: {}", d.health.detail))
    } else {
        None
    }
}

/// The hold counts inside the deadline (so a rollout bounds each host's turn by the
/// deadline alone): healthy after `elapsed`, is there still room for `hold`?
pub(super) fn too_late(
    elapsed: Duration,
    hold: Duration,
    deadline: Duration,
    detail: &str,
) -> Option<String> {
    if deadline.saturating_sub(elapsed) >= hold {
        return None;
    }
    Some(format!(
        "healthy only after {} ({detail}), too late to stay healthy for {} within the deadline of {}",
        humantime::format_duration(Duration::from_millis(elapsed.as_millis() as u64)),
        humantime::format_duration(hold),
        humantime::format_duration(deadline)
    ))
}

impl Inner {
    /// Waits until the app is healthy, crash-loops, fails, or `deadline` passes.
    pub(super) async fn wait_healthy(&self, app: &App, deadline: Duration) -> Verdict {
        let mut rx = app.changed.subscribe();
        let until = Instant::now() + deadline;
        loop {
            if let Some(verdict) = started(&lock(&app.data)) {
                return verdict;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(Unhealthy("app state lost".into())) },
                _ = sleep_until(until) => {
                    let d = lock(&app.data);
                    return Err(Unhealthy(format!(
                        "not healthy within {}: {}",
                        humantime::format_duration(deadline),
                        d.health.detail
                    )));
                }
            }
        }
    }

    /// Succeeds when the app stays healthy, with the same main process and restart count,
    /// for `hold`. A single later failed probe does not count (the probe's own failure
    /// threshold decides "unhealthy"), a crash or restart does at once.
    pub(super) async fn stay_healthy(&self, app: &App, hold: Duration) -> Result<(), Unhealthy> {
        let mut rx = app.changed.subscribe();
        let (pid, restarts) = {
            let d = lock(&app.data);
            let p = d.props.clone().unwrap_or_default();
            (p.main_pid, p.n_restarts)
        };
        let until = Instant::now() + hold;
        loop {
            if let Some(why) = broke_hold(&lock(&app.data), pid, restarts) {
                return Err(Unhealthy(format!(
                    "did not stay healthy for {}: {why}",
                    humantime::format_duration(hold)
                )));
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(Unhealthy("app state lost".into())) },
                _ = sleep_until(until) => return Ok(()),
            }
        }
    }

    /// Starts a fresh health history (new process or release) and probes at once.
    pub(super) fn restart_health(&self, app: &App, why: &str) {
        let mut d = lock(&app.data);
        let failures = d.spec.health.failures;
        d.health.reset(failures, why);
        d.health_epoch += 1;
        d.tracker.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crash::Tracker;
    use crate::health::Health;
    use crate::systemd::UnitProps;
    use crate::units::tests::spec;

    fn data(active: &str, pid: u32, restarts: u32, healthy: bool) -> AppData {
        let mut health = Health::new(1);
        health.healthy = healthy;
        health.detail = if healthy { "200 OK" } else { "503" }.into();
        AppData {
            spec: spec(""),
            release: "1.0".into(),
            props: Some(UnitProps {
                active_state: active.into(),
                sub_state: "running".into(),
                main_pid: pid,
                n_restarts: restarts,
                ..Default::default()
            }),
            tracker: Tracker::default(),
            health,
            health_epoch: 0,
            agent_job: false,
            stopped: false,
            last_sent: None,
        }
    }

    #[test]
    fn start_waits_until_healthy_and_gives_up_on_failure_or_crash_loop() {
        assert_eq!(started(&data("activating", 0, 0, false)), None);
        assert_eq!(started(&data("active", 7, 0, false)), None);
        let ok = started(&data("active", 7, 2, true)).unwrap().unwrap();
        assert_eq!(ok, "healthy (200 OK), pid 7, 2 restarts");
        let failed = started(&data("failed", 0, 5, false)).unwrap().unwrap_err();
        assert!(failed.0.starts_with("unit failed"), "{failed}");
        let mut looping = data("activating", 0, 5, false);
        looping.tracker.crash_loop = true;
        let why = started(&looping).unwrap().unwrap_err();
        assert!(why.0.starts_with("crash loop"), "{why}");
    }

    #[test]
    fn the_hold_breaks_on_a_new_process_a_restart_or_unhealth() {
        assert_eq!(broke_hold(&data("active", 7, 0, true), 7, 0), None);
        // Reloading is still up (HUP keeps the master).
        assert_eq!(broke_hold(&data("reloading", 7, 0, true), 7, 0), None);
        let new_pid = broke_hold(&data("active", 8, 0, true), 7, 0).unwrap();
        assert_eq!(new_pid, "restarted (pid 7 -> 8, 0 restarts)");
        assert!(broke_hold(&data("active", 7, 1, true), 7, 0)
            .unwrap()
            .starts_with("restarted"));
        assert!(broke_hold(&data("deactivating", 7, 0, true), 7, 0)
            .unwrap()
            .starts_with("unit deactivating"));
        assert_eq!(
            broke_hold(&data("active", 7, 0, false), 7, 0).unwrap(),
            "unhealthy: 503"
        );
    }

    #[test]
    fn the_hold_counts_inside_the_deadline() {
        let s = Duration::from_secs;
        assert_eq!(too_late(s(5), s(10), s(60), "ok"), None);
        assert_eq!(too_late(s(50), s(10), s(60), "ok"), None, "exactly fits");
        let why = too_late(s(51), s(10), s(60), "200 OK").unwrap();
        assert!(why.contains("healthy only after 51s (200 OK)"), "{why}");
        assert!(why.contains("within the deadline of 1m"), "{why}");
        // Past the deadline already (a slow start): never room for a hold.
        assert!(too_late(s(90), s(1), s(60), "ok").is_some());
    }
}
