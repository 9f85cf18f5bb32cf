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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::spec::{AppSpec, Version};
use fleet_proto::v1::command::Kind;
use fleet_proto::v1::command_result::Status as CmdStatus;
use fleet_proto::v1::{
    Activate, ControlRolloutRequest, RolloutBatch, RolloutEvent, RolloutHost, RolloutInfo,
    RolloutRequest, RunPreStart, StageRelease, WatchRolloutRequest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::shared::{internal, Shared};
use crate::timefmt::now_ms;

const DEFAULT_MIN_HEALTHY: Duration = Duration::from_secs(10);
const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
/// Hosts staging at once: fetching is served by this controller, so bound its load.
const STAGE_PARALLEL: usize = 16;
/// Fetch, unpack and venv of one release.
const STAGE_TIMEOUT: Duration = Duration::from_secs(600);
/// On top of the health deadline: unit file writes and systemd jobs.
const ACTIVATE_SLACK: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Staging,
    Running,
    Paused,
    Reverting,
    Succeeded,
    Reverted,
    Failed,
    Aborted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Staging => "staging",
            State::Running => "running",
            State::Paused => "paused",
            State::Reverting => "reverting",
            State::Succeeded => "succeeded",
            State::Reverted => "reverted",
            State::Failed => "failed",
            State::Aborted => "aborted",
        }
    }

    pub fn terminal(self) -> bool {
        matches!(
            self,
            State::Succeeded | State::Reverted | State::Failed | State::Aborted
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Staged,
    Switching,
    Healthy,
    Failed,
    Skipped,
    Reverting,
    Reverted,
    RevertFailed,
    Converged,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Staged => "staged",
            Phase::Switching => "switching",
            Phase::Healthy => "healthy",
            Phase::Failed => "failed",
            Phase::Skipped => "skipped",
            Phase::Reverting => "reverting",
            Phase::Reverted => "reverted",
            Phase::RevertFailed => "revert_failed",
            Phase::Converged => "converged",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostStep {
    pub host: String,
    pub batch: usize,
    pub phase: Phase,
    /// Release the host ran when the rollout started.
    pub previous: Option<String>,
    /// An Activate of the new release was sent: the host needs a revert on failure.
    pub switched: bool,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub app: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    /// The spec at start: a spec change mid-rollout does not change what is rolled out.
    pub spec_toml: String,
    pub canary: usize,
    pub batches: Vec<Vec<String>>,
    pub hosts: Vec<HostStep>,
    pub current_batch: usize,
    pub state: State,
    pub min_healthy_ms: u64,
    pub healthy_deadline_ms: u64,
    pub auto_revert: bool,
    pub skip_down: bool,
    pub rollback: bool,
    /// Set by abort: the revert (if any) ends in `aborted`, not `reverted`.
    pub aborted: bool,
    /// The spec's pre-start hook ran (and succeeded): a resumed rollout does not rerun it.
    #[serde(default)]
    pub pre_start_done: bool,
    pub actor: String,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub message: String,
}

/// What the engine does next with a record (also what a restarted controller does).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Stage,
    Batch(usize),
    Finish,
    WaitResume,
    Revert,
    Done,
}

impl Record {
    pub fn host(&self, name: &str) -> Option<&HostStep> {
        self.hosts.iter().find(|h| h.host == name)
    }

    fn host_mut(&mut self, name: &str) -> &mut HostStep {
        self.hosts
            .iter_mut()
            .find(|h| h.host == name)
            .expect("host of this rollout")
    }

    pub fn next_step(&self) -> Step {
        match self.state {
            State::Staging => Step::Stage,
            State::Running if self.current_batch < self.batches.len() => {
                Step::Batch(self.current_batch)
            }
            State::Running => Step::Finish,
            State::Paused => Step::WaitResume,
            State::Reverting => Step::Revert,
            _ => Step::Done,
        }
    }

    /// Hosts that still need to go back: switched and not yet reverted.
    pub fn to_revert(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| h.switched && h.phase != Phase::Reverted)
            .map(|h| h.host.clone())
            .collect()
    }

    /// Halts at a failure: revert what was switched, or end failed.
    pub fn halt(&mut self, why: String) {
        self.message = why;
        self.state = if self.auto_revert && self.hosts.iter().any(|h| h.switched) {
            State::Reverting
        } else if self.aborted {
            State::Aborted
        } else {
            State::Failed
        };
    }

    /// The end state once the revert has run.
    pub fn after_revert(&self) -> State {
        if self.aborted {
            State::Aborted
        } else if self.hosts.iter().any(|h| h.phase == Phase::RevertFailed) {
            State::Failed
        } else {
            State::Reverted
        }
    }

    pub fn info(&self) -> RolloutInfo {
        RolloutInfo {
            id: self.id.clone(),
            app: self.app.clone(),
            version: self.version.clone(),
            state: self.state.as_str().into(),
            batches: self
                .batches
                .iter()
                .map(|b| RolloutBatch { hosts: b.clone() })
                .collect(),
            hosts: self
                .hosts
                .iter()
                .map(|h| RolloutHost {
                    host: h.host.clone(),
                    batch: h.batch as u32,
                    phase: h.phase.as_str().into(),
                    previous: h.previous.clone().unwrap_or_default(),
                    message: h.message.clone(),
                })
                .collect(),
            current_batch: self.current_batch as u32,
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
            message: self.message.clone(),
            auto_revert: self.auto_revert,
            skip_down: self.skip_down,
            min_healthy_ms: self.min_healthy_ms,
            healthy_deadline_ms: self.healthy_deadline_ms,
            canary: self.canary as u32,
            actor: self.actor.clone(),
        }
    }
}

/// `--max-parallel`: "N" hosts or "P%" of `targets` (rounded up, at least 1).
pub fn parse_max_parallel(s: &str, targets: usize) -> Result<usize, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(1);
    }
    let bad = || format!("max-parallel {s:?}: expected a host count (2) or a percentage (25%)");
    if let Some(p) = s.strip_suffix('%') {
        let p: usize = p.trim().parse().map_err(|_| bad())?;
        if p == 0 || p > 100 {
            return Err(format!(
                "max-parallel {s:?}: the percentage must be 1 to 100"
            ));
        }
        Ok((targets * p).div_ceil(100).max(1))
    } else {
        let n: usize = s.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(format!("max-parallel {s:?}: must be at least 1"));
        }
        Ok(n)
    }
}

/// Canary batch (if any) then batches of `max_parallel`, in the order given.
pub fn plan_batches(hosts: &[String], canary: usize, max_parallel: usize) -> Vec<Vec<String>> {
    let canary = canary.min(hosts.len());
    let mut out = Vec::new();
    if canary > 0 {
        out.push(hosts[..canary].to_vec());
    }
    for chunk in hosts[canary..].chunks(max_parallel.max(1)) {
        out.push(chunk.to_vec());
    }
    out
}

/// Orders host names as people count: host2 before host10.
pub fn natural_sort(hosts: &mut [String]) {
    fn key(s: &str) -> (String, u64, String) {
        let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (stem, num) = s.split_at(s.len() - digits);
        (stem.to_owned(), num.parse().unwrap_or(0), s.to_owned())
    }
    hosts.sort_by_key(|h| key(h));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Run,
    Pause,
    Abort,
}

/// A rollout the engine is running in this process.
pub struct Live {
    rec: Mutex<Record>,
    events: broadcast::Sender<RolloutEvent>,
    control: watch::Sender<Control>,
}

#[derive(Default)]
pub struct Rollouts(Mutex<HashMap<String, Arc<Live>>>);

impl Rollouts {
    fn get(&self, app: &str) -> Option<Arc<Live>> {
        self.0.lock().expect("rollouts lock").get(app).cloned()
    }

    /// A rollout of `app` runs in this process.
    pub fn active(&self, app: &str) -> bool {
        self.get(app).is_some()
    }

    /// Registers a rollout; refuses a second one for the same app.
    fn insert(&self, rec: Record) -> Result<Arc<Live>, Status> {
        let mut map = self.0.lock().expect("rollouts lock");
        if let Some(other) = map.get(&rec.app) {
            let r = other.rec.lock().expect("record lock");
            return Err(Status::failed_precondition(format!(
                "{} already has a rollout {} ({} to {}): see `fleetctl rollout status {}`, or `fleetctl rollout abort {}`",
                r.app, r.id, r.state.as_str(), r.version, r.app, r.app
            )));
        }
        let live = Arc::new(Live {
            rec: Mutex::new(rec.clone()),
            events: broadcast::channel(4096).0,
            control: watch::channel(Control::Run).0,
        });
        map.insert(rec.app.clone(), live.clone());
        Ok(live)
    }

    fn remove(&self, app: &str) {
        self.0.lock().expect("rollouts lock").remove(app);
    }
}

impl Live {
    fn rec(&self) -> Record {
        self.rec.lock().expect("record lock").clone()
    }

    /// Applies `f`, persists the record, and announces the event to every watcher.
    fn step(
        &self,
        shared: &Shared,
        kind: &str,
        host: &str,
        batch: usize,
        message: &str,
        f: impl FnOnce(&mut Record),
    ) {
        let mut rec = self.rec.lock().expect("record lock");
        f(&mut rec);
        if let Err(e) = shared.store.put_rollout(&rec.id, &*rec) {
            tracing::error!(rollout = %rec.id, error = %e, "cannot persist rollout step");
        }
        tracing::info!(rollout = %rec.id, app = %rec.app, kind, host, batch, state = rec.state.as_str(), message, "rollout");
        let _ = self.events.send(RolloutEvent {
            time_ms: now_ms(),
            kind: kind.into(),
            host: host.into(),
            batch: batch as u32,
            message: message.into(),
            info: Some(rec.info()),
        });
    }
}

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

type EventStream = ReceiverStream<Result<RolloutEvent, Status>>;

/// Streams `live`'s events from a snapshot on; ends after "finished".
fn follow(live: &Arc<Live>) -> EventStream {
    let (tx, rx) = mpsc::channel(256);
    let (snapshot, mut sub) = {
        // Under the record lock: no event can fall between the snapshot and the subscription.
        let rec = live.rec.lock().expect("record lock");
        (rec.info(), live.events.subscribe())
    };
    tokio::spawn(async move {
        let first = RolloutEvent {
            time_ms: now_ms(),
            kind: "snapshot".into(),
            info: Some(snapshot),
            ..Default::default()
        };
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            match sub.recv().await {
                Ok(ev) => {
                    let last = ev.kind == "finished";
                    if tx.send(Ok(ev)).await.is_err() || last {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

pub fn start(
    shared: Arc<Shared>,
    actor: String,
    req: RolloutRequest,
) -> Result<EventStream, Status> {
    let app = req.app.clone();
    let rec = shared.store.app(&app).map_err(internal)?.ok_or_else(|| {
        Status::not_found(format!(
            "no app named {app}: create it with `fleetctl app apply FILE.toml`"
        ))
    })?;
    let spec = AppSpec::parse(&rec.spec_toml)
        .map_err(|e| Status::internal(format!("stored spec of {app} no longer validates: {e}")))?;
    if let Some(host) = shared.convergence.busy(&app) {
        return Err(Status::failed_precondition(format!(
            "{host} is converging to the desired release of {app} (it came back after a rollout); retry when it is done"
        )));
    }
    let mut hosts = crate::apps::targets(&shared, &req.hosts)?;
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
    crate::apps::wanted_secrets(&shared, &app, &spec)?;
    let max_parallel =
        parse_max_parallel(&req.max_parallel, hosts.len()).map_err(Status::invalid_argument)?;
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
    let live = shared.rollouts.insert(record.clone())?;
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
                "rollout {}: {} hosts in {} batches (canary {}, max-parallel {max_parallel}), min-healthy {}ms, deadline {}ms, auto-revert {}, skip-down {}",
                record.id,
                hosts.len(),
                record.batches.len(),
                record.canary,
                record.min_healthy_ms,
                record.healthy_deadline_ms,
                record.auto_revert,
                record.skip_down
            ),
        )
        .map_err(internal)?;
    let stream = follow(&live);
    let text = format!(
        "fleet: {} of {app} to {version} started by {actor} on {} hosts",
        if req.rollback { "rollback" } else { "rollout" },
        hosts.len()
    );
    live.step(&shared, "started", "", 0, &text, |_| {});
    crate::webhook::notify(&shared, "started", &text, &record.info());
    tokio::spawn(drive(shared, live));
    Ok(stream)
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

fn single(info: RolloutInfo) -> EventStream {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(RolloutEvent {
        time_ms: now_ms(),
        kind: "snapshot".into(),
        info: Some(info),
        ..Default::default()
    }));
    ReceiverStream::new(rx)
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
        let Ok(live) = shared.rollouts.insert(rec.clone()) else {
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
        tokio::spawn(drive(shared.clone(), live));
    }
}

async fn drive(shared: Arc<Shared>, live: Arc<Live>) {
    loop {
        let rec = live.rec();
        match rec.next_step() {
            Step::Stage => stage(&shared, &live).await,
            Step::Batch(b) => batch(&shared, &live, b).await,
            Step::Finish => {
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
                let msg = if skipped > 0 {
                    format!(
                        "{n} hosts on {}; {skipped} skipped while down (they converge when back)",
                        rec.version
                    )
                } else {
                    format!("{n} hosts on {}", rec.version)
                };
                live.step(&shared, "succeeded", "", 0, &msg.clone(), |r| {
                    r.state = State::Succeeded;
                    r.message = msg;
                });
            }
            Step::WaitResume => {
                let mut rx = live.control.subscribe();
                let c = *rx.borrow_and_update();
                match c {
                    Control::Run => {
                        live.step(&shared, "resumed", "", rec.current_batch, "resumed", |r| {
                            r.state = State::Running
                        })
                    }
                    Control::Abort => abort(&shared, &live),
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
    live.step(&shared, "finished", "", 0, &outcome, |r| {
        r.ended_ms = now_ms()
    });
    shared.rollouts.remove(&rec.app);
    crate::converge::after_rollout(&shared, &live.rec());
}

fn abort(shared: &Shared, live: &Live) {
    live.step(shared, "aborting", "", 0, "aborted by an operator", |r| {
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

/// A command's result as the message on success or the reason it failed.
pub(crate) fn outcome(
    r: Result<fleet_proto::v1::CommandResult, crate::commands::CommandError>,
) -> Result<String, String> {
    match r {
        Ok(r) if r.status == CmdStatus::Ok as i32 => Ok(r.message),
        Ok(r) if r.status == CmdStatus::Unsupported as i32 => Err(format!(
            "the agent on this host is too old for this command: {}",
            r.message
        )),
        Ok(r) => Err(r.message),
        Err(e) => Err(e.to_string()),
    }
}

async fn stage(shared: &Arc<Shared>, live: &Arc<Live>) {
    let rec = live.rec();
    let deadline = Duration::from_millis(rec.healthy_deadline_ms);
    live.step(
        shared,
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
                        Some(Err(format!(
                            "host is down (waited {}); no host was restarted",
                            humantime::format_duration(deadline)
                        )))
                    },
                );
            }
            let r = shared
                .commands
                .call(&shared.sessions, &host, kind, STAGE_TIMEOUT)
                .await;
            (host, Some(outcome(r)))
        });
    }
    let mut control = live.control.subscribe();
    loop {
        tokio::select! {
            next = tasks.join_next() => {
                let Some(joined) = next else { break };
                let Ok((host, result)) = joined else { continue };
                match result {
                    None => live.step(shared, "skipped", &host, 0, "down: skipped, converges when it comes back", |r| {
                        let h = r.host_mut(&host);
                        h.phase = Phase::Skipped;
                        h.message = "down during staging".into();
                    }),
                    Some(Ok(msg)) => live.step(shared, "staged", &host, 0, &msg.clone(), |r| {
                        let h = r.host_mut(&host);
                        h.phase = Phase::Staged;
                        h.message = msg;
                    }),
                    Some(Err(msg)) => {
                        let why = format!("staging failed on {host}: {msg}; no host was restarted");
                        live.step(shared, "failed", &host, 0, &why.clone(), |r| {
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
                    abort(shared, live);
                    return;
                }
            }
        }
    }
    if !pre_start(shared, live).await {
        return;
    }
    live.step(shared, "staged", "", 0, "staged everywhere", |r| {
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
            live.step(shared, "failed", "", 0, &why.clone(), |r| r.halt(why));
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
            live.step(shared, "failed", "", 0, &e.clone(), |r| r.halt(e));
            return false;
        }
    };
    let argv = spec.pre_start.join(" ");
    live.step(
        shared,
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
    let call = shared.commands.call(
        &shared.sessions,
        &host,
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
                    live.step(shared, "pre_start", &host, 0, "abort requested: waiting for the pre-start hook to end", |_| {});
                }
            }
        }
    };
    match r {
        Ok(msg) => {
            live.step(shared, "pre_start_done", &host, 0, &msg, |r| {
                r.pre_start_done = true
            });
            if *live.control.borrow() == Control::Abort {
                abort(shared, live);
                return false;
            }
            true
        }
        Err(msg) => {
            let why = format!("pre-start hook failed on {host}; no host was restarted: {msg}");
            live.step(shared, "failed", &host, 0, &why.clone(), |r| r.halt(why));
            false
        }
    }
}

enum HostMsg {
    Switching(String),
    Done(String, Result<String, String>),
    Skipped(String),
}

async fn batch(shared: &Arc<Shared>, live: &Arc<Live>, b: usize) {
    let mut control = live.control.subscribe();
    match *control.borrow_and_update() {
        Control::Pause => {
            live.step(
                shared,
                "paused",
                "",
                b,
                &format!("paused before batch {}", b + 1),
                |r| r.state = State::Paused,
            );
            return;
        }
        Control::Abort => return abort(shared, live),
        Control::Run => {}
    }
    let rec = live.rec();
    let deadline = Duration::from_millis(rec.healthy_deadline_ms);
    let secrets = match spec_secrets(shared, &rec) {
        Ok(s) => s,
        Err(e) => {
            live.step(shared, "failed", "", b, &e.clone(), |r| r.halt(e));
            return;
        }
    };
    let todo: Vec<HostStep> = rec
        .hosts
        .iter()
        .filter(|h| h.batch == b && !matches!(h.phase, Phase::Healthy | Phase::Skipped))
        .cloned()
        .collect();
    let label = if b == 0 && rec.canary > 0 {
        "canary".to_string()
    } else {
        format!("batch {}", b + 1)
    };
    live.step(
        shared,
        "batch",
        "",
        b,
        &format!(
            "{label}: {}",
            todo.iter()
                .map(|h| h.host.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        |_| {},
    );
    let (tx, mut rx) = mpsc::channel(64);
    let mut tasks = tokio::task::JoinSet::new();
    for h in &todo {
        let (shared, tx, host) = (shared.clone(), tx.clone(), h.host.clone());
        let kind = Kind::Activate(Activate {
            spec_toml: rec.spec_toml.clone(),
            version: rec.version.clone(),
            sha256: rec.sha256.clone(),
            size: rec.size,
            secrets: secrets.clone().into_iter().collect(),
            healthy_deadline_ms: rec.healthy_deadline_ms,
            min_healthy_ms: rec.min_healthy_ms,
        });
        let skip_down = rec.skip_down;
        tasks.spawn(async move {
            let wait = if skip_down { Duration::ZERO } else { deadline };
            if !wait_up(&shared, &host, wait).await {
                let _ = tx
                    .send(if skip_down {
                        HostMsg::Skipped(host)
                    } else {
                        HostMsg::Done(
                            host,
                            Err(format!(
                                "host is down (waited {} for it; --skip-down would skip it)",
                                humantime::format_duration(deadline)
                            )),
                        )
                    })
                    .await;
                return;
            }
            let _ = tx.send(HostMsg::Switching(host.clone())).await;
            let r = shared
                .commands
                .call(&shared.sessions, &host, kind, deadline + ACTIVATE_SLACK)
                .await;
            let _ = tx.send(HostMsg::Done(host, outcome(r))).await;
        });
    }
    drop(tx);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                None => break,
                Some(HostMsg::Switching(host)) => live.step(shared, "switching", &host, b, &format!("switching to {}", rec.version), |r| {
                    let h = r.host_mut(&host);
                    h.phase = Phase::Switching;
                    h.switched = true;
                }),
                Some(HostMsg::Skipped(host)) => live.step(shared, "skipped", &host, b, "down: skipped, converges when it comes back", |r| {
                    let h = r.host_mut(&host);
                    h.phase = Phase::Skipped;
                    h.message = "down when its batch came".into();
                }),
                Some(HostMsg::Done(host, Ok(msg))) => live.step(shared, "healthy", &host, b, &msg.clone(), |r| {
                    let h = r.host_mut(&host);
                    h.phase = Phase::Healthy;
                    h.message = msg;
                }),
                Some(HostMsg::Done(host, Err(msg))) => {
                    let why = format!("{host} failed: {msg}");
                    live.step(shared, "failed", &host, b, &msg.clone(), |r| {
                        let h = r.host_mut(&host);
                        h.phase = Phase::Failed;
                        h.message = msg;
                    });
                    // Halt means halt: the rest of the batch is reverted, not awaited.
                    tasks.abort_all();
                    live.step(shared, "halted", &host, b, &why.clone(), |r| r.halt(why));
                    return;
                }
            },
            _ = control.changed() => {
                if *control.borrow_and_update() == Control::Abort {
                    tasks.abort_all();
                    return abort(shared, live);
                }
            }
        }
    }
    live.step(
        shared,
        "batch_done",
        "",
        b,
        &format!("{label} healthy"),
        |r| r.current_batch = b + 1,
    );
}

/// Secrets are read at each activation, never stored in the rollout record.
fn spec_secrets(shared: &Shared, rec: &Record) -> Result<BTreeMap<String, String>, String> {
    let spec = AppSpec::parse(&rec.spec_toml)
        .map_err(|e| format!("the rollout's app spec no longer validates: {e}"))?;
    crate::apps::wanted_secrets(shared, &rec.app, &spec).map_err(|e| e.message().to_owned())
}

async fn revert(shared: &Arc<Shared>, live: &Arc<Live>) {
    let rec = live.rec();
    let deadline = Duration::from_millis(rec.healthy_deadline_ms);
    let hosts = rec.to_revert();
    live.step(
        shared,
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
            &shared,
            "reverting",
            &host,
            step.batch,
            &format!("back to {}", step.previous.as_deref().unwrap_or("(none)")),
            |r| r.host_mut(&host).phase = Phase::Reverting,
        );
        tasks.spawn(async move {
            let Some(prev) = step.previous else {
                return (
                    host,
                    Err("no previous release on this host: left on the new release".to_string()),
                );
            };
            let release = match shared.store.release(&rec.app, &prev) {
                Ok(Some(r)) => r,
                _ => {
                    return (
                        host,
                        Err(format!(
                            "release {prev} is no longer known to the controller"
                        )),
                    )
                }
            };
            if !wait_up(&shared, &host, deadline).await {
                return (
                    host,
                    Err(format!(
                        "host is down: it still runs {} (or whatever it reached)",
                        rec.version
                    )),
                );
            }
            let kind = Kind::Activate(Activate {
                spec_toml: rec.spec_toml.clone(),
                version: prev,
                sha256: release.sha256,
                size: release.size,
                secrets: secrets.into_iter().collect(),
                healthy_deadline_ms: rec.healthy_deadline_ms,
                min_healthy_ms: rec.min_healthy_ms,
            });
            let r = shared
                .commands
                .call(&shared.sessions, &host, kind, deadline + ACTIVATE_SLACK)
                .await;
            (host, outcome(r))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((host, r)) = joined else { continue };
        let b = rec.host(&host).map(|h| h.batch).unwrap_or(0);
        match r {
            Ok(msg) => live.step(shared, "reverted", &host, b, &msg.clone(), |r| {
                let h = r.host_mut(&host);
                h.phase = Phase::Reverted;
                h.message = msg;
            }),
            Err(msg) => live.step(shared, "revert_failed", &host, b, &msg.clone(), |r| {
                let h = r.host_mut(&host);
                h.phase = Phase::RevertFailed;
                h.message = msg;
            }),
        }
    }
    live.step(shared, "revert_done", "", 0, "", |r| {
        r.state = r.after_revert()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("host{i}")).collect()
    }

    #[test]
    fn batches_from_canary_and_max_parallel() {
        let b = plan_batches(&names(5), 1, 2);
        assert_eq!(
            b,
            vec![
                vec!["host1"],
                vec!["host2", "host3"],
                vec!["host4", "host5"]
            ]
        );
        assert_eq!(plan_batches(&names(3), 0, 5), vec![names(3)]);
        assert_eq!(plan_batches(&names(2), 5, 1), vec![names(2)]);
        assert!(plan_batches(&[], 1, 1).is_empty());
    }

    #[test]
    fn max_parallel_counts_and_percentages() {
        assert_eq!(parse_max_parallel("", 10), Ok(1));
        assert_eq!(parse_max_parallel("3", 10), Ok(3));
        assert_eq!(parse_max_parallel("25%", 10), Ok(3));
        assert_eq!(parse_max_parallel("1%", 10), Ok(1));
        assert_eq!(parse_max_parallel("100%", 7), Ok(7));
        for bad in ["0", "0%", "101%", "x", "-1", "%"] {
            assert!(parse_max_parallel(bad, 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_sort_as_people_count() {
        let mut h: Vec<String> = ["host10", "host2", "host1", "db"]
            .map(String::from)
            .to_vec();
        natural_sort(&mut h);
        assert_eq!(h, ["db", "host1", "host2", "host10"]);
    }

    fn record(n: usize) -> Record {
        let batches = plan_batches(&names(n), 1, 2);
        Record {
            id: "shop/1".into(),
            app: "shop".into(),
            version: "2.0".into(),
            sha256: String::new(),
            size: 0,
            spec_toml: String::new(),
            canary: 1,
            hosts: batches
                .iter()
                .enumerate()
                .flat_map(|(i, b)| {
                    b.iter().map(move |h| HostStep {
                        host: h.clone(),
                        batch: i,
                        phase: Phase::Pending,
                        previous: Some("1.0".into()),
                        switched: false,
                        message: String::new(),
                    })
                })
                .collect(),
            batches,
            current_batch: 0,
            state: State::Staging,
            min_healthy_ms: 2000,
            healthy_deadline_ms: 60000,
            auto_revert: true,
            skip_down: false,
            rollback: false,
            aborted: false,
            pre_start_done: false,
            actor: "admin".into(),
            started_ms: 1,
            ended_ms: 0,
            message: String::new(),
        }
    }

    #[test]
    fn steps_follow_the_record() {
        let mut r = record(5);
        assert_eq!(r.next_step(), Step::Stage);
        r.state = State::Running;
        assert_eq!(r.next_step(), Step::Batch(0));
        r.current_batch = 2;
        assert_eq!(r.next_step(), Step::Batch(2));
        r.current_batch = 3;
        assert_eq!(r.next_step(), Step::Finish);
        r.state = State::Paused;
        assert_eq!(r.next_step(), Step::WaitResume);
        r.state = State::Succeeded;
        assert_eq!(r.next_step(), Step::Done);
    }

    #[test]
    fn halt_reverts_only_switched_hosts() {
        let mut r = record(5);
        r.state = State::Running;
        for h in ["host1", "host2", "host3"] {
            r.host_mut(h).switched = true;
        }
        r.host_mut("host1").phase = Phase::Healthy;
        r.host_mut("host2").phase = Phase::Healthy;
        r.host_mut("host3").phase = Phase::Failed;
        r.halt("host3 failed".into());
        assert_eq!(r.state, State::Reverting);
        assert_eq!(r.next_step(), Step::Revert);
        assert_eq!(r.to_revert(), ["host1", "host2", "host3"]);
        // Resuming a half-done revert only redoes what is left.
        r.host_mut("host1").phase = Phase::Reverted;
        assert_eq!(r.to_revert(), ["host2", "host3"]);
        r.host_mut("host2").phase = Phase::Reverted;
        r.host_mut("host3").phase = Phase::Reverted;
        assert_eq!(r.after_revert(), State::Reverted);
        r.host_mut("host3").phase = Phase::RevertFailed;
        assert_eq!(r.after_revert(), State::Failed);
        r.aborted = true;
        assert_eq!(r.after_revert(), State::Aborted);
    }

    #[test]
    fn halt_without_switched_hosts_or_auto_revert_fails() {
        let mut r = record(3);
        r.halt("staging failed".into());
        assert_eq!(r.state, State::Failed);
        let mut r = record(3);
        r.auto_revert = false;
        r.host_mut("host1").switched = true;
        r.halt("canary failed".into());
        assert_eq!(r.state, State::Failed);
        let mut r = record(3);
        r.aborted = true;
        r.halt("aborted".into());
        assert_eq!(r.state, State::Aborted);
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = record(4);
        let back: Record = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.info().hosts.len(), 4);
        assert_eq!(r.info().state, "staging");
    }
}
