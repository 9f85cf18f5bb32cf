//! The engine: runs a rollout record step by step (stage, pre-start, batches, revert) to
//! its end, persisting every step through `Live::step` so a restart resumes where it was.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::spec::AppSpec;
use fleet_proto::v1::command::Kind;
use fleet_proto::v1::{RunPreStart, StageRelease};
use tokio::sync::{mpsc, Semaphore};

use super::judge;
use super::live::{Control, Live};
use super::record::{outcome, HostStep, Phase, Record, State, Step};
use super::step::{activate_as, step_id, ACTIVATE_SLACK};
use crate::commands::CommandFailed;
use crate::desired::{self, Release};
use crate::shared::Shared;
use crate::timefmt::now_ms;

/// Hosts staging at once: fetching is served by this controller, so bound its load.
const STAGE_PARALLEL: usize = 16;
/// Fetch, unpack and venv of one release.
const STAGE_TIMEOUT: Duration = Duration::from_secs(600);

pub(super) async fn drive(shared: Arc<Shared>, live: Arc<Live>) {
    let writer = tokio::spawn(super::live::persist(shared.clone(), live.clone()));
    loop {
        // Each phase starts from a record the store holds.
        live.durable().await;
        let rec = live.rec();
        match rec.next_step() {
            Step::Stage => stage(&shared, &live).await,
            Step::Batch(b) => batch(&shared, &live, b).await,
            Step::Finish => match rec.analysis.filter(|t| t.bake_ms > 0) {
                Some(t) => {
                    let until = now_ms() + t.bake_ms as i64;
                    let bake = humantime::format_duration(Duration::from_millis(t.bake_ms));
                    let msg = format!(
                        "every batch passed: judging the fleet on {} for {bake} (a regression reverts every host)",
                        rec.version
                    );
                    live.step("baking", "", rec.batches.len(), &msg, |r| {
                        r.state = State::Baking;
                        r.bake_until_ms = until;
                    });
                }
                None => {
                    let msg = finished_message(&rec);
                    live.step("succeeded", "", 0, &msg.clone(), |r| {
                        r.state = State::Succeeded;
                        r.message = msg;
                    });
                }
            },
            Step::Bake => judge::bake_step(&shared, &live).await,
            Step::WaitResume => {
                let mut rx = live.control.subscribe();
                let c = *rx.borrow_and_update();
                match c {
                    Control::Run | Control::EndBake => {
                        live.step("resumed", "", rec.current_batch, "resumed", |r| {
                            r.state = State::Running
                        })
                    }
                    Control::Abort => abort(&live),
                    Control::Pause => {
                        let _ = rx.changed().await;
                    }
                }
            }
            Step::Revert => revert(&shared, &live).await,
            Step::Done => break,
        }
    }
    let rec = live.rec();
    let took = Duration::from_millis(now_ms().saturating_sub(rec.started_ms).max(0) as u64);
    shared.metrics.observe_rollout(rec.state, took);
    let outcome = format!(
        "{} of {} to {} {}{}",
        if rec.rollback { "rollback" } else { "rollout" },
        rec.app,
        rec.version,
        rec.state.as_str(),
        if rec.message.is_empty() {
            String::new()
        } else {
            format!(": {}", rec.message)
        }
    );
    let _ = shared.audit(
        &rec.actor,
        &format!("rollout.{}", rec.state.as_str()),
        &format!("{}@{}", rec.app, rec.version),
        &format!("rollout {}: {}", rec.id, rec.message),
    );
    crate::webhook::notify(
        &shared,
        rec.state.as_str(),
        &format!("fleet: {outcome}"),
        &rec.info(),
    );
    live.step("finished", "", 0, &outcome, |r| r.ended_ms = now_ms());
    live.durable().await;
    writer.abort();
    shared.rollouts.remove(&rec.app);
    crate::converge::after_rollout(&shared, &live.rec());
}

pub(super) fn finished_message(rec: &Record) -> String {
    let n = rec
        .hosts
        .iter()
        .filter(|h| h.phase == Phase::Healthy)
        .count();
    let skipped = rec
        .hosts
        .iter()
        .filter(|h| h.phase == Phase::Skipped)
        .count();
    if skipped > 0 {
        format!(
            "{n} hosts on {}; {skipped} skipped while down (they converge when back)",
            rec.version
        )
    } else {
        format!("{n} hosts on {}", rec.version)
    }
}

pub(super) fn abort(live: &Live) {
    live.step("aborting", "", 0, "aborted by an operator", |r| {
        r.aborted = true;
        r.halt("aborted by an operator".into());
    });
}

async fn wait_up(shared: &Shared, host: &str, deadline: Duration) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if shared.sessions.up(host).is_some() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stage(shared: &Arc<Shared>, live: &Arc<Live>) {
    let rec = live.rec();
    let deadline = Duration::from_millis(rec.healthy_deadline_ms);
    live.step(
        "staging",
        "",
        0,
        &format!("staging {} on {} hosts", rec.version, rec.hosts.len()),
        |_| {},
    );
    let sem = Arc::new(Semaphore::new(STAGE_PARALLEL));
    let mut tasks = tokio::task::JoinSet::new();
    // The venv is built as the app's user; a spec that no longer parses fails at activate.
    let user = AppSpec::parse(&rec.spec_toml)
        .map(|s| s.user)
        .unwrap_or_default();
    for h in rec.hosts.iter().filter(|h| h.phase == Phase::Pending) {
        let (shared, sem, host) = (shared.clone(), sem.clone(), h.host.clone());
        let kind = Kind::Stage(StageRelease {
            app: rec.app.clone(),
            version: rec.version.clone(),
            sha256: rec.sha256.clone(),
            size: rec.size,
            user: user.clone(),
        });
        let skip_down = rec.skip_down;
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            // --skip-down: a host down now is skipped now; it converges when it is back.
            let wait = if skip_down { Duration::ZERO } else { deadline };
            if !wait_up(&shared, &host, wait).await {
                return (
                    host,
                    if skip_down {
                        None
                    } else {
                        Some(Err(HostError::DownWhileStaging(deadline)))
                    },
                );
            }
            let r = shared
                .commands
                .call(&shared.sessions, &host, kind, STAGE_TIMEOUT)
                .await;
            (host, Some(outcome(r).map_err(HostError::from)))
        });
    }
    let mut control = live.control.subscribe();
    loop {
        tokio::select! {
            next = tasks.join_next() => {
                let Some(joined) = next else { break };
                let Ok((host, result)) = joined else { continue };
                match result {
                    None => live.step("skipped", &host, 0, "down: skipped, converges when it comes back", |r| {
                        let h = r.host_mut(&host);
                        h.phase = Phase::Skipped;
                        h.message = "down during staging".into();
                    }),
                    Some(Ok(msg)) => live.step("staged", &host, 0, &msg.clone(), |r| {
                        let h = r.host_mut(&host);
                        h.phase = Phase::Staged;
                        h.message = msg;
                    }),
                    Some(Err(e)) => {
                        let msg = e.to_string();
                        let why = format!("staging failed on {host}: {msg}; no host was restarted");
                        live.step("failed", &host, 0, &why.clone(), |r| {
                            let h = r.host_mut(&host);
                            h.phase = Phase::Failed;
                            h.message = msg;
                            r.halt(why);
                        });
                        return;
                    }
                }
            }
            _ = control.changed() => {
                if *control.borrow_and_update() == Control::Abort {
                    abort(live);
                    return;
                }
            }
        }
    }
    if !pre_start(shared, live).await {
        return;
    }
    live.step("staged", "", 0, "staged everywhere", |r| {
        r.state = State::Running
    });
}

/// The spec's pre-start hook, once, on the first staged target, before any restart.
/// Returns whether the rollout goes on (false: it halted or was aborted).
async fn pre_start(shared: &Arc<Shared>, live: &Arc<Live>) -> bool {
    let rec = live.rec();
    let spec = match AppSpec::parse(&rec.spec_toml) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("the rollout's app spec no longer validates: {e}");
            live.step("failed", "", 0, &why.clone(), |r| r.halt(why));
            return false;
        }
    };
    if spec.pre_start.is_empty() || rec.pre_start_done {
        return true;
    }
    let Some(host) = rec
        .hosts
        .iter()
        .find(|h| h.phase == Phase::Staged)
        .map(|h| h.host.clone())
    else {
        // Every target was skipped: nothing will restart, so nothing needs the hook yet.
        return true;
    };
    let secrets = match spec_secrets(shared, &rec) {
        Ok(s) => s,
        Err(e) => {
            let e = e.to_string();
            live.step("failed", "", 0, &e.clone(), |r| r.halt(e));
            return false;
        }
    };
    let argv = spec.pre_start.join(" ");
    live.step(
        "pre_start",
        &host,
        0,
        &format!("running pre-start `{argv}` with {}", rec.version),
        |_| {},
    );
    let kind = Kind::RunPreStart(RunPreStart {
        spec_toml: rec.spec_toml.clone(),
        version: rec.version.clone(),
        secrets: secrets.into_iter().collect(),
    });
    let id = step_id(&rec, "pre-start", &host, false);
    let call = shared.commands.call_as(
        &shared.sessions,
        &host,
        &id,
        kind,
        spec.pre_start_timeout + ACTIVATE_SLACK,
    );
    let mut control = live.control.subscribe();
    tokio::pin!(call);
    let r = loop {
        tokio::select! {
            r = &mut call => break outcome(r),
            _ = control.changed() => {
                // The hook is not interrupted (a half-run migration is worse); abort waits.
                if *control.borrow_and_update() == Control::Abort {
                    live.step("pre_start", &host, 0, "abort requested: waiting for the pre-start hook to end", |_| {});
                }
            }
        }
    };
    match r {
        Ok(msg) => {
            live.step("pre_start_done", &host, 0, &msg, |r| {
                r.pre_start_done = true
            });
            if *live.control.borrow() == Control::Abort {
                abort(live);
                return false;
            }
            true
        }
        Err(msg) => {
            let why = format!("pre-start hook failed on {host}; no host was restarted: {msg}");
            live.step("failed", &host, 0, &why.clone(), |r| r.halt(why));
            false
        }
    }
}

enum HostMsg {
    Switching(String),
    Done(String, Result<String, HostError>),
    Skipped(String),
}

/// Why one host's step failed; the text lands in the record, the audit log and fleetctl.
#[derive(Debug, thiserror::Error)]
enum HostError {
    #[error(transparent)]
    Command(#[from] CommandFailed),
    #[error("host is down (waited {}); no host was restarted", humantime::format_duration(*.0))]
    DownWhileStaging(Duration),
    #[error(
        "host is down (waited {} for it; --skip-down would skip it)",
        humantime::format_duration(*.0)
    )]
    DownForBatch(Duration),
    #[error("no previous release on this host: left on the new release")]
    NoPrevious,
    #[error("release {0} is no longer known to the controller")]
    ReleaseGone(String),
    /// Carries the version the host may still run.
    #[error("host is down: it still runs {0} (or whatever it reached)")]
    DownForRevert(String),
}

/// Why the rollout's secrets could not be read for an activation.
#[derive(Debug, thiserror::Error)]
enum SecretsError {
    #[error("the rollout's app spec no longer validates: {0}")]
    Spec(#[from] fleet_proto::spec::SpecError),
    /// `wanted_secrets`' refusal, which names the missing secrets and how to set them.
    #[error("{}", .0.message())]
    Refused(tonic::Status),
}

async fn batch(shared: &Arc<Shared>, live: &Arc<Live>, b: usize) {
    let mut control = live.control.subscribe();
    match *control.borrow_and_update() {
        Control::Pause => {
            live.step(
                "paused",
                "",
                b,
                &format!("paused before batch {}", b + 1),
                |r| r.state = State::Paused,
            );
            return;
        }
        Control::Abort => return abort(live),
        Control::Run | Control::EndBake => {}
    }
    let rec = live.rec();
    let deadline = Duration::from_millis(rec.healthy_deadline_ms);
    let secrets = match spec_secrets(shared, &rec) {
        Ok(s) => s,
        Err(e) => {
            let e = e.to_string();
            live.step("failed", "", b, &e.clone(), |r| r.halt(e));
            return;
        }
    };
    let todo: Vec<HostStep> = rec
        .hosts
        .iter()
        .filter(|h| h.batch == b && !matches!(h.phase, Phase::Healthy | Phase::Skipped))
        .cloned()
        .collect();
    let todo = super::exclude::leave_out_cordoned_and_stopped(shared, live, &rec.app, b, todo);
    let label = if b == 0 && rec.canary > 0 {
        "canary".to_string()
    } else {
        format!("batch {}", b + 1)
    };
    live.step(
        "batch",
        "",
        b,
        &if todo.is_empty() {
            // Resumed after a restart with every host already healthy: only its analysis
            // (if any) is left.
            format!("{label}: every host already healthy")
        } else {
            format!(
                "{label}: {}",
                todo.iter()
                    .map(|h| h.host.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        |_| {},
    );
    let (tx, mut rx) = mpsc::channel(64);
    let mut tasks = tokio::task::JoinSet::new();
    for h in &todo {
        let (shared, tx, host) = (shared.clone(), tx.clone(), h.host.clone());
        let kind = desired::activate(
            &rec.spec_toml,
            &Release {
                version: &rec.version,
                sha256: &rec.sha256,
                size: rec.size,
            },
            secrets.clone(),
            rec.gate(),
        );
        let skip_down = rec.skip_down;
        let id = step_id(&rec, "activate", &host, h.phase == Phase::Failed);
        tasks.spawn(async move {
            let wait = if skip_down { Duration::ZERO } else { deadline };
            if !wait_up(&shared, &host, wait).await {
                let _ = tx
                    .send(if skip_down {
                        HostMsg::Skipped(host)
                    } else {
                        HostMsg::Done(host, Err(HostError::DownForBatch(deadline)))
                    })
                    .await;
                return;
            }
            let _ = tx.send(HostMsg::Switching(host.clone())).await;
            let r = activate_as(&shared, &host, &id, kind, deadline).await;
            let _ = tx
                .send(HostMsg::Done(host, outcome(r).map_err(HostError::from)))
                .await;
        });
    }
    drop(tx);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                None => break,
                Some(HostMsg::Switching(host)) => live.step("switching", &host, b, &format!("switching to {}", rec.version), |r| {
                    let h = r.host_mut(&host);
                    h.phase = Phase::Switching;
                    h.switched = true;
                }),
                Some(HostMsg::Skipped(host)) => live.step("skipped", &host, b, "down: skipped, converges when it comes back", |r| {
                    let h = r.host_mut(&host);
                    h.phase = Phase::Skipped;
                    h.message = "down when its batch came".into();
                }),
                Some(HostMsg::Done(host, Ok(msg))) => live.step("healthy", &host, b, &msg.clone(), |r| {
                    let h = r.host_mut(&host);
                    h.phase = Phase::Healthy;
                    h.message = msg;
                }),
                Some(HostMsg::Done(host, Err(e))) => {
                    let msg = e.to_string();
                    let why = format!("{host} failed: {msg}");
                    live.step("failed", &host, b, &msg.clone(), |r| {
                        let h = r.host_mut(&host);
                        h.phase = Phase::Failed;
                        h.message = msg;
                    });
                    // Halt means halt: the rest of the batch is reverted, not awaited.
                    tasks.abort_all();
                    live.step("halted", &host, b, &why.clone(), |r| r.halt(why));
                    return;
                }
            },
            _ = control.changed() => {
                if *control.borrow_and_update() == Control::Abort {
                    tasks.abort_all();
                    return abort(live);
                }
            }
        }
    }
    if !judge::after_batch(shared, live, b, &label).await {
        return;
    }
    live.step("batch_done", "", b, &format!("{label} healthy"), |r| {
        r.current_batch = b + 1
    });
}

/// Secrets are read at each activation, never stored in the rollout record.
fn spec_secrets(shared: &Shared, rec: &Record) -> Result<BTreeMap<String, String>, SecretsError> {
    let spec = AppSpec::parse(&rec.spec_toml)?;
    desired::wanted_secrets(shared, &rec.app, &spec).map_err(SecretsError::Refused)
}

async fn revert(shared: &Arc<Shared>, live: &Arc<Live>) {
    let rec = live.rec();
    let deadline = Duration::from_millis(rec.healthy_deadline_ms);
    let hosts = rec.to_revert();
    live.step(
        "reverting",
        "",
        0,
        &format!("reverting {}", hosts.join(", ")),
        |_| {},
    );
    // Without its secrets a revert would fail on every host anyway; try with none and let
    // each host say why.
    let secrets = spec_secrets(shared, &rec).unwrap_or_default();
    let mut tasks = tokio::task::JoinSet::new();
    for host in hosts {
        let step = rec.host(&host).cloned().expect("host of this rollout");
        let shared = shared.clone();
        let rec = rec.clone();
        let secrets = secrets.clone();
        live.step(
            "reverting",
            &host,
            step.batch,
            &format!("back to {}", step.previous.as_deref().unwrap_or("(none)")),
            |r| r.host_mut(&host).phase = Phase::Reverting,
        );
        let id = step_id(&rec, "revert", &host, step.phase == Phase::RevertFailed);
        tasks.spawn(async move {
            let Some(prev) = step.previous else {
                return (host, Err(HostError::NoPrevious));
            };
            let release = match shared.store.release(&rec.app, &prev) {
                Ok(Some(r)) => r,
                _ => return (host, Err(HostError::ReleaseGone(prev))),
            };
            if !wait_up(&shared, &host, deadline).await {
                return (host, Err(HostError::DownForRevert(rec.version.clone())));
            }
            let kind =
                desired::activate(&rec.spec_toml, &Release::of(&release), secrets, rec.gate());
            let r = activate_as(&shared, &host, &id, kind, deadline).await;
            (host, outcome(r).map_err(HostError::from))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((host, r)) = joined else { continue };
        let b = rec.host(&host).map(|h| h.batch).unwrap_or(0);
        match r {
            Ok(msg) => live.step("reverted", &host, b, &msg.clone(), |r| {
                let h = r.host_mut(&host);
                h.phase = Phase::Reverted;
                h.message = msg;
            }),
            Err(e) => {
                let msg = e.to_string();
                live.step("revert_failed", &host, b, &msg.clone(), |r| {
                    let h = r.host_mut(&host);
                    h.phase = Phase::RevertFailed;
                    h.message = msg;
                })
            }
        }
    }
    live.step("revert_done", "", 0, "", |r| r.state = r.after_revert());
}
