//! Rolling updates: stage everywhere, then activate a canary and batches, each host
//! health-gated by the agent (Activate with `min_healthy_ms`), halting at the first failure
//! and reverting every switched host to the release it ran before.
//!
//! The rollout record is the state machine: every step rewrites it in the store before the
//! next one starts, and the engine only ever reads where it is from the record, so a
//! controller restart resumes (or finishes a revert) by running the same engine on it.
//!
//! Health gating lives in the agent: it probes every `health.interval`, sees unit changes
//! over D-Bus at once and knows the main pid, so it decides "healthy for min-healthy, no
//! crash" from first-hand facts and answers with one CommandResult. The controller only
//! sees a lossy push of that state and would have to re-derive the same thing.
//!
//! Here: the entry points (start, watch, control, resume). `record` is the state machine's
//! data (a leaf), `plan` the batches, `live` the in-process registry and event streams,
//! `drive` the engine that runs a record to its end, `judge` its traffic analysis steps
//! (the arithmetic in `analysis`).

mod analysis;
mod drive;
mod exclude;
mod gates;
mod judge;
mod live;
pub mod plan;
pub mod record;
mod step;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::spec::{Analysis, AppSpec, Version};
use fleet_proto::v1::{ControlRolloutRequest, RolloutInfo, RolloutRequest, WatchRolloutRequest};
use fleet_proto::values::MaxParallel;
use tonic::Status;

pub use live::{Control, EventStream, Live, Rollouts};
pub use plan::{natural_sort, plan_batches};
pub use record::{outcome, HostStep, Phase, Record, State, Step};

use crate::shared::{internal, Shared};
use crate::timefmt::now_ms;
use live::{follow, single};

const DEFAULT_MIN_HEALTHY: Duration = Duration::from_secs(10);
const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

fn load_record(shared: &Shared, app: &str) -> Result<Option<Record>, Status> {
    let all: Vec<Record> = shared.store.rollouts().map_err(internal)?;
    Ok(all.into_iter().rev().find(|r| r.app == app))
}

/// The previous release present on every target: what the app's last finished rollout
/// replaced, when every target ran the same one (agents keep the last releases on disk).
fn rollback_version(shared: &Shared, app: &str, hosts: &[String]) -> Result<String, Status> {
    let all: Vec<Record> = shared.store.rollouts().map_err(internal)?;
    let last = all
        .into_iter()
        .rev()
        .find(|r| r.app == app && r.state == State::Succeeded)
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "{app} has no finished rollout to roll back: name a version with `fleetctl rollout {app} --version V`"
            ))
        })?;
    let mut previous: Vec<Option<String>> = hosts
        .iter()
        .map(|h| last.host(h).and_then(|s| s.previous.clone()))
        .collect();
    previous.dedup();
    match previous.as_slice() {
        [Some(v)] => Ok(v.clone()),
        _ => Err(Status::failed_precondition(format!(
            "the hosts of {app} did not all run one release before {}: name a version with `fleetctl rollout {app} --version V`",
            last.version
        ))),
    }
}

pub async fn start(
    shared: Arc<Shared>,
    actor: String,
    req: RolloutRequest,
) -> Result<EventStream, Status> {
    let app = req.app.clone();
    // Checked before any store read: a bad request costs nothing.
    let max_parallel = MaxParallel::parse_wire(&req.max_parallel)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let rec = shared.store.app(&app).map_err(internal)?.ok_or_else(|| {
        Status::not_found(format!(
            "no app named {app}: create it with `fleetctl app apply FILE.toml`"
        ))
    })?;
    let spec = AppSpec::parse(&rec.spec_toml)
        .map_err(|e| Status::internal(format!("stored spec of {app} no longer validates: {e}")))?;
    let analysis = Analysis::with_override(spec.analysis, &req.analysis.unwrap_or_default())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    end_previous(&shared, &app, req.force).await?;
    if let Some(host) = shared.convergence.busy(&app) {
        return Err(Status::failed_precondition(format!(
            "{host} is converging to the desired release of {app} (it came back after a rollout); retry when it is done"
        )));
    }
    let hosts = crate::desired::targets(&shared, &req.hosts)?;
    // A stopped app stays down: the rollout leaves its hosts out, as it does cordoned ones.
    let (mut hosts, stopped) = crate::desired::without_stopped(&shared, &app, hosts)?;
    natural_sort(&mut hosts);
    let version = if req.rollback {
        rollback_version(&shared, &app, &hosts)?
    } else {
        req.version.clone()
    };
    let version: Version = version
        .parse()
        .map_err(|e: fleet_proto::spec::SpecError| Status::invalid_argument(e.to_string()))?;
    let release = shared
        .store
        .release(&app, version.as_str())
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("{app} has no release {version}: upload it with `fleetctl release upload {app} FILE.tar.gz --version {version}`")))?;
    crate::desired::wanted_secrets(&shared, &app, &spec)?;
    let max_parallel = max_parallel.hosts(hosts.len());
    let batches = plan_batches(&hosts, req.canary as usize, max_parallel);
    let running: BTreeMap<String, String> = shared
        .app_states
        .all()
        .into_iter()
        .filter(|(_, s)| s.app == app && !s.release.is_empty())
        .map(|(h, s)| (h, s.release))
        .collect();
    let steps = batches
        .iter()
        .enumerate()
        .flat_map(|(i, b)| b.iter().map(move |h| (i, h.clone())))
        .map(|(batch, host)| HostStep {
            previous: running.get(&host).cloned(),
            host,
            batch,
            phase: Phase::Pending,
            switched: false,
            message: String::new(),
        })
        .collect();
    let started_ms = now_ms();
    let record = Record {
        id: format!("{app}/{started_ms:016}"),
        app: app.clone(),
        version: version.to_string(),
        sha256: release.sha256,
        size: release.size,
        spec_toml: rec.spec_toml,
        canary: (req.canary as usize).min(hosts.len()),
        batches,
        hosts: steps,
        current_batch: 0,
        state: State::Staging,
        min_healthy_ms: match req.min_healthy_ms {
            0 => DEFAULT_MIN_HEALTHY.as_millis() as u64,
            ms => ms,
        },
        healthy_deadline_ms: match req.healthy_deadline_ms {
            0 => DEFAULT_DEADLINE.as_millis() as u64,
            ms => ms,
        },
        auto_revert: !req.no_auto_revert,
        skip_down: req.skip_down,
        rollback: req.rollback,
        aborted: false,
        pre_start_done: false,
        actor: actor.clone(),
        started_ms,
        ended_ms: 0,
        message: String::new(),
        analysis: analysis.map(Into::into),
        verdicts: Vec::new(),
        bake_until_ms: 0,
        reference: None,
        gates: match analysis {
            Some(_) => spec.gates.iter().map(Into::into).collect(),
            None => Vec::new(),
        },
    };
    if record.min_healthy_ms >= record.healthy_deadline_ms {
        return Err(Status::invalid_argument(
            "min-healthy must be shorter than healthy-deadline (the hold counts inside the deadline)",
        ));
    }
    shared
        .store
        .put_rollout(&record.id, &record)
        .map_err(internal)?;
    let live = shared
        .rollouts
        .insert(record.clone(), shared.events.clone())?;
    shared
        .audit(
            &actor,
            if req.rollback {
                "rollout.rollback"
            } else {
                "rollout.start"
            },
            &format!("{app}@{version}"),
            &format!(
                "rollout {}: {} hosts in {} batches (canary {}, max-parallel {max_parallel}), min-healthy {}ms, deadline {}ms, auto-revert {}, skip-down {}, analysis {}",
                record.id,
                hosts.len(),
                record.batches.len(),
                record.canary,
                record.min_healthy_ms,
                record.healthy_deadline_ms,
                record.auto_revert,
                record.skip_down,
                match &analysis {
                    None => "off".to_owned(),
                    Some(a) => format!(
                        "window {} min-requests {} max-error-ratio {} max-error-increase {} max-p99-increase {} bake {}",
                        humantime::format_duration(a.window),
                        a.min_requests,
                        a.max_error_ratio,
                        a.max_error_increase,
                        a.max_p99_increase,
                        humantime::format_duration(a.bake)
                    ),
                }
            ),
        )
        .map_err(internal)?;
    let stream = follow(&live);
    let text = format!(
        "fleet: {} of {app} to {version} started by {actor} on {} hosts",
        if req.rollback { "rollback" } else { "rollout" },
        hosts.len()
    );
    live.step("started", "", 0, &text, |_| {});
    // Said, not hidden: a host left out is one the operator may have forgotten about.
    for host in &stopped {
        live.step(
            "skipped",
            host,
            0,
            &format!("{app} is stopped here: left out of the rollout (`fleetctl app start {app}`)"),
            |_| {},
        );
    }
    crate::webhook::notify(&shared, "started", &text, &record.info());
    tokio::spawn(drive::drive(shared, live));
    Ok(stream)
}

/// How long a start waits for the app's previous rollout to be recorded as ended.
const END_WAIT: Duration = Duration::from_secs(30);

/// Clears the way for a new rollout of `app`. A rollout that has ended but is still being
/// stored (its watchers saw "finished" a moment ago) is waited for. One that is baking
/// blocks a new one: a regression found by the bake reverts every host, which would race
/// the new rollout's switches, and the new rollout's "previous release" would be a release
/// still on trial. `force` ends the bake (recorded as superseded, the release counts as
/// rolled out) and waits for that to be stored. A rollout still switching hosts is refused
/// by `Rollouts::insert` as before.
async fn end_previous(shared: &Shared, app: &str, force: bool) -> Result<(), Status> {
    let Some(live) = shared.rollouts.get(app) else {
        return Ok(());
    };
    let rec = live.rec();
    match rec.state {
        s if s.terminal() => {}
        State::Baking if force => {
            live.control.send_replace(Control::EndBake);
        }
        State::Baking => {
            let left = Duration::from_secs(((rec.bake_until_ms - now_ms()).max(0) / 1000) as u64);
            return Err(Status::failed_precondition(format!(
                "{app} {} is baking for {} more (rollout {}): a regression found meanwhile reverts every host, so no new rollout starts during a bake. \
                 Wait for it (`fleetctl rollout status {app} --watch`), revert it now (`fleetctl rollout abort {app}`), \
                 or pass --force to end the bake early and start this rollout",
                rec.version,
                humantime::format_duration(left),
                rec.id
            )));
        }
        // Refused with its state by `Rollouts::insert`.
        _ => return Ok(()),
    }
    let until = tokio::time::Instant::now() + END_WAIT;
    while shared.rollouts.active(app) {
        if tokio::time::Instant::now() >= until {
            return Err(Status::unavailable(format!(
                "the previous rollout of {app} did not end within {}s; retry",
                END_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub fn watch(shared: &Shared, req: WatchRolloutRequest) -> Result<EventStream, Status> {
    if let Some(live) = shared.rollouts.get(&req.app) {
        if req.follow {
            return Ok(follow(&live));
        }
        return Ok(single(live.rec().info()));
    }
    let rec = load_record(shared, &req.app)?
        .ok_or_else(|| Status::not_found(format!("{} has never been rolled out", req.app)))?;
    Ok(single(rec.info()))
}

pub fn control(
    shared: &Shared,
    actor: &str,
    req: ControlRolloutRequest,
) -> Result<RolloutInfo, Status> {
    let live = shared.rollouts.get(&req.app).ok_or_else(|| {
        Status::failed_precondition(format!("{} has no rollout in progress", req.app))
    })?;
    let want = match req.action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Run,
        "abort" => Control::Abort,
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown action {other:?}: pause, resume or abort"
            )))
        }
    };
    let rec = live.rec();
    if *live.control.borrow() == Control::Abort {
        return Err(Status::failed_precondition(format!(
            "rollout {} is being aborted",
            rec.id
        )));
    }
    live.control.send_replace(want);
    shared
        .audit(
            actor,
            &format!("rollout.{}", req.action),
            &format!("{}@{}", rec.app, rec.version),
            &format!("rollout {}", rec.id),
        )
        .map_err(internal)?;
    Ok(live.rec().info())
}

/// Resumes every rollout a previous controller process left unfinished.
pub fn resume_all(shared: &Arc<Shared>) {
    let all: Vec<Record> = match shared.store.rollouts() {
        Ok(all) => all,
        Err(e) => {
            tracing::error!(error = %e, "cannot read rollouts to resume");
            return;
        }
    };
    for rec in all.into_iter().filter(|r| !r.state.terminal()) {
        let id = rec.id.clone();
        let Ok(live) = shared.rollouts.insert(rec.clone(), shared.events.clone()) else {
            continue;
        };
        let _ = shared.audit(
            "controller",
            "rollout.resume",
            &format!("{}@{}", rec.app, rec.version),
            &format!(
                "rollout {id} resumed after a controller restart ({})",
                rec.state.as_str()
            ),
        );
        tracing::info!(rollout = %id, state = rec.state.as_str(), "resuming rollout");
        tokio::spawn(drive::drive(shared.clone(), live));
    }
}
