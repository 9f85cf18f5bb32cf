//! Convergence: a host that missed a decision about an app (down and skipped during a
//! rollout, or cut off before its revert) is brought to the release it should run when it
//! comes back, health-gated like a rollout host.
//!
//! "Should run" is the desired release per (app, host), written when a rollout ends (the
//! new release after success; after a revert or a failure, the release each host was
//! reverted to, never the failed one) and when a deploy lands. It is checked on the first
//! state report of each app on every new agent session, and for every host of a rollout
//! when it ends (a skipped host may be back by then). Nothing converges while a rollout of
//! the app runs: the rollout owns its hosts. A cordoned host, or one the app is stopped
//! on, is left as it is; once uncordoned (or started) it catches up on its next session.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::v1::command::Kind;
use fleet_proto::v1::{AppState, StageRelease};
use serde::{Deserialize, Serialize};

use crate::commands::CommandFailed;
use crate::desired::{activate_stored, ActivateError, Gate};
use crate::rollout::record::{outcome, Phase, Record, State};
use crate::shared::Shared;

/// After this, a new session that reported no state for an app does not run it.
const SETTLE: Duration = Duration::from_secs(5);
const STAGE_TIMEOUT: Duration = Duration::from_secs(600);
const ACTIVATE_SLACK: Duration = Duration::from_secs(60);
/// Hold and deadline when a deploy (not a rollout) decided the release.
const DEFAULT_MIN_HEALTHY_MS: u64 = 2_000;
const DEFAULT_DEADLINE_MS: u64 = 60_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub version: String,
    /// The rollout that decided it (empty: a deploy).
    #[serde(default)]
    pub rollout: String,
    pub min_healthy_ms: u64,
    pub healthy_deadline_ms: u64,
}

#[derive(Default)]
pub struct Convergence {
    /// (host, app) -> the session whose first report was checked.
    checked: Mutex<HashMap<(String, String), u64>>,
    running: Mutex<HashSet<(String, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Convergence {
    pub fn busy(&self, app: &str) -> Option<String> {
        lock(&self.running)
            .iter()
            .find(|(_, a)| a == app)
            .map(|(h, _)| h.clone())
    }
}

/// What each host of a finished rollout should run: `Some(version)`, or `None` when the
/// rollout leaves it undecided (switched without a revert, or no earlier release).
pub fn desired_after(rec: &Record) -> Vec<(String, Option<String>)> {
    rec.hosts
        .iter()
        .map(|h| {
            let v = match rec.state {
                State::Succeeded => Some(rec.version.clone()),
                _ if !h.switched => h.previous.clone(),
                _ => match h.phase {
                    Phase::Reverted | Phase::Reverting | Phase::RevertFailed => h.previous.clone(),
                    // auto-revert off: it stays where it was left.
                    Phase::Healthy => Some(rec.version.clone()),
                    _ => None,
                },
            };
            (h.host.clone(), v)
        })
        .collect()
}

/// A rollout ended: record what its hosts should run, then converge any that differ.
pub fn after_rollout(shared: &Arc<Shared>, rec: &Record) {
    let decided: Vec<(String, Option<Desired>)> = desired_after(rec)
        .into_iter()
        .map(|(host, version)| {
            let d = version.map(|version| Desired {
                version,
                rollout: rec.id.clone(),
                min_healthy_ms: rec.min_healthy_ms,
                healthy_deadline_ms: rec.healthy_deadline_ms,
            });
            (host, d)
        })
        .collect();
    let values = decided.iter().map(|(h, d)| (h.as_str(), d.as_ref()));
    if let Err(e) = shared.store.set_desired_many(&rec.app, values) {
        tracing::error!(app = %rec.app, error = %e, "cannot record the desired releases");
    }
    for h in &rec.hosts {
        if shared.sessions.up(&h.host).is_some() {
            check(
                shared,
                &h.host,
                &rec.app,
                running(shared, &h.host, &rec.app),
            );
        }
    }
}

/// A deploy landed (or not) on each host: what it runs now is what it should run. One
/// commit for all of them.
pub fn after_deploy(shared: &Shared, app: &str, landed: &[(String, bool)], version: &str) {
    let d = Desired {
        version: version.to_owned(),
        rollout: String::new(),
        min_healthy_ms: DEFAULT_MIN_HEALTHY_MS,
        healthy_deadline_ms: DEFAULT_DEADLINE_MS,
    };
    let values = landed
        .iter()
        .map(|(host, ok)| (host.as_str(), ok.then_some(&d)));
    if let Err(e) = shared.store.set_desired_many(app, values) {
        tracing::error!(%app, hosts = landed.len(), error = %e, "cannot record the desired release");
    }
}

fn running(shared: &Shared, host: &str, app: &str) -> Option<String> {
    shared
        .app_states
        .get(host, app)
        .filter(|s| !s.release.is_empty())
        .map(|s| s.release)
}

/// Whether `on_app_state` would check this report (the first of its app on the session),
/// without marking it.
pub fn would_check(shared: &Shared, host: &str, session: u64, app: &str) -> bool {
    lock(&shared.convergence.checked).get(&(host.to_owned(), app.to_owned())) != Some(&session)
}

/// Every app state report: the first of each app on a session is checked. Returns
/// whether it was the first.
pub fn on_app_state(shared: &Arc<Shared>, host: &str, session: u64, state: &AppState) -> bool {
    let key = (host.to_owned(), state.app.clone());
    if lock(&shared.convergence.checked).insert(key, session) == Some(session) {
        return false;
    }
    let release = (!state.release.is_empty()).then(|| state.release.clone());
    check(shared, host, &state.app, release);
    true
}

/// A session started: apps the host should run but never reported get it too.
pub fn session_started(shared: &Arc<Shared>, host: &str, session: u64) {
    let (shared, host) = (shared.clone(), host.to_owned());
    tokio::spawn(async move {
        tokio::time::sleep(SETTLE).await;
        if shared.sessions.session_id(&host) != Some(session) {
            return;
        }
        let h = host.clone();
        let read = shared
            .off_workers(move |s| s.store.desired_on::<Desired>(&h))
            .await;
        let wanted: Vec<(String, Desired)> = match read.map_err(|e| e.to_string()) {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                tracing::error!(%host, error = %e, "cannot read desired releases");
                return;
            }
            Err(e) => {
                tracing::error!(%host, error = %e, "cannot read desired releases");
                return;
            }
        };
        for (app, _) in wanted {
            let reported = lock(&shared.convergence.checked).get(&(host.clone(), app.clone()))
                == Some(&session);
            if !reported {
                check(&shared, &host, &app, running(&shared, &host, &app));
            }
        }
    });
}

fn check(shared: &Arc<Shared>, host: &str, app: &str, running: Option<String>) {
    let desired: Desired = match shared.store.desired(app, host) {
        Ok(Some(d)) => d,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(%app, %host, error = %e, "cannot read the desired release");
            return;
        }
    };
    if running.as_deref() == Some(desired.version.as_str()) || shared.rollouts.active(app) {
        return;
    }
    // Stopped on purpose: it comes back only with `fleetctl app start`. Cordoned: out
    // of deploys and rollouts, so out of their catching up too, until uncordoned.
    let left_alone = shared
        .store
        .is_stopped(app, host)
        .and_then(|stopped| Ok(stopped || shared.store.is_cordoned(host)?));
    match left_alone {
        Ok(false) => {}
        Ok(true) => return,
        Err(e) => {
            tracing::error!(%app, %host, error = %e, "cannot read whether the host is cordoned or the app stopped");
            return;
        }
    }
    if !lock(&shared.convergence.running).insert((host.to_owned(), app.to_owned())) {
        return;
    }
    let (shared, host, app) = (shared.clone(), host.to_owned(), app.to_owned());
    tokio::spawn(async move {
        let outcome = converge(&shared, &host, &app, &desired, running.as_deref()).await;
        finish(&shared, &host, &app, &desired, running.as_deref(), outcome);
        lock(&shared.convergence.running).remove(&(host, app));
    });
}

impl Desired {
    fn gate(&self) -> Gate {
        Gate {
            min_healthy_ms: self.min_healthy_ms,
            healthy_deadline_ms: self.healthy_deadline_ms,
        }
    }
}

/// Why a host did not converge; the text lands in the audit log and the rollout's record.
#[derive(Debug, thiserror::Error)]
enum ConvergeError {
    #[error(transparent)]
    Activate(#[from] ActivateError),
    #[error("staging {version} failed: {source}; nothing was restarted")]
    Stage {
        version: String,
        source: CommandFailed,
    },
    #[error(transparent)]
    Command(#[from] CommandFailed),
    #[error("{why}; back on {prev}")]
    WentBack { why: CommandFailed, prev: String },
    #[error("{why}; going back to {prev} failed too: {back}")]
    BackFailed {
        why: CommandFailed,
        prev: String,
        back: Box<ConvergeError>,
    },
}

/// Stage, then activate health-gated; a release that fails goes back to what ran.
async fn converge(
    shared: &Arc<Shared>,
    host: &str,
    app: &str,
    d: &Desired,
    running: Option<&str>,
) -> Result<String, ConvergeError> {
    tracing::info!(%host, %app, version = %d.version, from = ?running, "converging");
    let (kind, spec) = activate_stored(shared, app, &d.version, d.gate())?;
    let Kind::Activate(a) = &kind else {
        unreachable!("activate() builds an Activate")
    };
    let stage = Kind::Stage(StageRelease {
        app: app.to_owned(),
        version: d.version.clone(),
        sha256: a.sha256.clone(),
        size: a.size,
        user: spec.user.clone(),
    });
    outcome(
        shared
            .commands
            .call(&shared.sessions, host, stage, STAGE_TIMEOUT)
            .await,
    )
    .map_err(|source| ConvergeError::Stage {
        version: d.version.clone(),
        source,
    })?;
    let limit = Duration::from_millis(d.healthy_deadline_ms) + ACTIVATE_SLACK;
    let r = outcome(
        shared
            .commands
            .call(&shared.sessions, host, kind, limit)
            .await,
    );
    let why = match r {
        Ok(msg) => return Ok(msg),
        Err(why) => why,
    };
    let Some(prev) = running else {
        return Err(why.into());
    };
    let back = match activate_stored(shared, app, prev, d.gate()) {
        Ok((k, _)) => outcome(shared.commands.call(&shared.sessions, host, k, limit).await)
            .map_err(ConvergeError::from),
        Err(e) => Err(e.into()),
    };
    let prev = prev.to_owned();
    Err(match back {
        Ok(_) => ConvergeError::WentBack { why, prev },
        Err(back) => ConvergeError::BackFailed {
            why,
            prev,
            back: Box::new(back),
        },
    })
}

fn finish(
    shared: &Shared,
    host: &str,
    app: &str,
    d: &Desired,
    running: Option<&str>,
    r: Result<String, ConvergeError>,
) {
    let from = running.unwrap_or("nothing");
    let (ok, detail) = match &r {
        Ok(m) => (
            true,
            format!("{host} converged from {from} to {}: {m}", d.version),
        ),
        Err(e) => (
            false,
            format!("{host} did not converge from {from} to {}: {e}", d.version),
        ),
    };
    if ok {
        tracing::info!(%host, %app, "{detail}");
    } else {
        tracing::warn!(%host, %app, "{detail}");
    }
    let _ = shared.audit(
        "controller",
        if ok {
            "rollout.converge"
        } else {
            "rollout.converge_failed"
        },
        &format!("{app}@{}", d.version),
        &detail,
    );
    // The rollout that decided it shows the host's fate in its status.
    let mut info = None;
    if !d.rollout.is_empty() && !shared.rollouts.active(app) {
        if let Ok(all) = shared.store.rollouts::<Record>() {
            if let Some(mut rec) = all.into_iter().find(|r| r.id == d.rollout) {
                if let Some(h) = rec.hosts.iter_mut().find(|h| h.host == host) {
                    if ok {
                        h.phase = Phase::Converged;
                    }
                    h.message = detail.clone();
                    if let Err(e) = shared.store.put_rollout(&rec.id, &rec) {
                        tracing::error!(rollout = %rec.id, error = %e, "cannot record convergence");
                    }
                }
                info = Some(rec.info());
            }
        }
    }
    let info = info.unwrap_or_else(|| fleet_proto::v1::RolloutInfo {
        app: app.to_owned(),
        version: d.version.clone(),
        ..Default::default()
    });
    crate::webhook::notify(
        shared,
        if ok { "converged" } else { "converge_failed" },
        &format!("fleet: {detail}"),
        &info,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::record::HostStep;

    fn rec(state: State, hosts: &[(&str, Phase, bool)]) -> Record {
        Record {
            id: "shop/1".into(),
            app: "shop".into(),
            version: "2.0".into(),
            sha256: String::new(),
            size: 0,
            spec_toml: String::new(),
            canary: 1,
            batches: vec![],
            hosts: hosts
                .iter()
                .map(|(h, phase, switched)| HostStep {
                    host: (*h).into(),
                    batch: 0,
                    phase: *phase,
                    previous: Some("1.0".into()),
                    switched: *switched,
                    message: String::new(),
                })
                .collect(),
            current_batch: 0,
            state,
            min_healthy_ms: 1,
            healthy_deadline_ms: 2,
            auto_revert: true,
            skip_down: true,
            rollback: false,
            aborted: false,
            pre_start_done: false,
            actor: "admin".into(),
            started_ms: 0,
            ended_ms: 0,
            message: String::new(),
            analysis: None,
            verdicts: Vec::new(),
            bake_until_ms: 0,
            reference: None,
            gates: Vec::new(),
        }
    }

    fn get(v: &[(String, Option<String>)], h: &str) -> Option<String> {
        v.iter().find(|(x, _)| x == h).unwrap().1.clone()
    }

    #[test]
    fn a_success_wants_the_new_release_even_on_skipped_hosts() {
        let r = rec(
            State::Succeeded,
            &[("h1", Phase::Healthy, true), ("h2", Phase::Skipped, false)],
        );
        let d = desired_after(&r);
        assert_eq!(get(&d, "h1").as_deref(), Some("2.0"));
        assert_eq!(get(&d, "h2").as_deref(), Some("2.0"));
    }

    #[test]
    fn a_revert_wants_the_reverted_to_release_never_the_failed_one() {
        let r = rec(
            State::Failed,
            &[
                ("h1", Phase::Reverted, true),
                ("h2", Phase::RevertFailed, true),
                ("h3", Phase::Pending, false),
                ("h4", Phase::Staged, false),
            ],
        );
        let d = desired_after(&r);
        for h in ["h1", "h2", "h3", "h4"] {
            assert_eq!(get(&d, h).as_deref(), Some("1.0"), "{h}");
        }
        // Without auto-revert a switched, failed host is left undecided.
        let r = rec(
            State::Failed,
            &[("h1", Phase::Healthy, true), ("h2", Phase::Failed, true)],
        );
        let d = desired_after(&r);
        assert_eq!(get(&d, "h1").as_deref(), Some("2.0"));
        assert_eq!(get(&d, "h2"), None);
    }
}
