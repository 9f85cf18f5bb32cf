//! The app manager: every app on this host, for the whole life of `fleet-agent run` (not
//! per session). It answers the app commands (Stage, Activate, Restart, TailLogs,
//! StopLogs), watches each app's service unit over D-Bus (PropertiesChanged, no polling)
//! and probes its health, and pushes `AppState` on every change and `Event`s for crashes.
//!
//! Apps are systemd's, not the agent's: the agent starts, restarts or reloads a unit only
//! when a command says so. On agent start it re-adopts what it ran before (from
//! `<state-dir>/apps/<app>.toml`) by reading and watching the units, never touching them,
//! so `kill -9` or a restart of the agent leaves every app's main pid as it was.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::spec::{AppName, AppSpec, LogMode, Version};
use fleet_proto::v1::{
    agent_message, command, command_result, Activate, AppState, Command, CommandResult, Event,
    LogLine, Restart, RunPreStart, StageRelease, StopLogs, TailLogs,
};
use serde::{Deserialize, Serialize};
use tokio::io::BufReader;
use tokio::process::Command as Process;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_stream::StreamExt;

use crate::crash::{Tracker, Verdict};
use crate::fetch::Fetcher;
use crate::health::{self, Health};
use crate::journal::{self, now_ms};
use crate::logrotate;
use crate::metrics::AppMetrics;
use crate::outbox::{self, Outbox};
use crate::releases::{venv_bin, Releases, RunAs};
use crate::systemd::{JobKind, Systemd, SystemdError, UnitProps};
use crate::units::{self, Layout, Runtime};

const DEFAULT_HEALTHY_DEADLINE: Duration = Duration::from_secs(60);
/// Bound on the reload preflight (importing the app once).
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(60);
/// Journal lines quoted in a failure message.
const FAILURE_LINES: u32 = 8;
const WATCH_RETRY_MAX: Duration = Duration::from_secs(30);
/// How often apps with log files are checked for processes writing into deleted logs.
const LOG_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// What runs, persisted so an agent restart re-adopts it.
#[derive(Serialize, Deserialize)]
struct Persisted {
    version: String,
    spec_toml: String,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Apps {
    inner: Arc<Inner>,
}

struct Inner {
    outbox: Outbox,
    metrics: AppMetrics,
    fetcher: Fetcher,
    releases: Releases,
    /// `<agent state dir>/apps`
    state_dir: PathBuf,
    unit_dir: PathBuf,
    env_dir: PathBuf,
    logrotate_dir: PathBuf,
    cores: u32,
    /// This agent's own /metrics port (0: off): no app may take it.
    metrics_port: u16,
    bus: tokio::sync::Mutex<Option<Systemd>>,
    apps: Mutex<HashMap<AppName, Arc<App>>>,
    tails: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

struct App {
    name: AppName,
    /// One command at a time per app (deploy and restart of the same app never interleave).
    ops: tokio::sync::Mutex<()>,
    data: Mutex<AppData>,
    /// Bumped on every change, for commands waiting on health.
    changed: watch::Sender<u64>,
    probe_now: Notify,
    tasks_started: AtomicBool,
}

struct AppData {
    spec: AppSpec,
    release: String,
    props: Option<UnitProps>,
    tracker: Tracker,
    health: Health,
    /// Probes started before the last reset are discarded when they finish.
    health_epoch: u64,
    /// The agent is running a job on the unit: its transitions are not crashes.
    agent_job: bool,
    last_sent: Option<AppState>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_up(p: &UnitProps) -> bool {
    p.active_state == "active" || p.active_state == "reloading"
}

impl AppData {
    fn state(&self, app: &AppName) -> AppState {
        let p = self.props.clone().unwrap_or_default();
        AppState {
            app: app.to_string(),
            release: self.release.clone(),
            active_state: if self.props.is_some() {
                p.active_state
            } else {
                "unknown".into()
            },
            sub_state: p.sub_state,
            result: p.result,
            healthy: self.health.healthy,
            restarts: p.n_restarts,
            main_pid: p.main_pid,
            since: (p.active_enter_us / 1_000_000) as i64,
            crash_loop: self.tracker.crash_loop,
            time_ms: now_ms(),
            health_detail: self.health.detail.clone(),
        }
    }
}

fn same_state(a: &AppState, b: &AppState) -> bool {
    AppState {
        time_ms: 0,
        ..a.clone()
    } == AppState {
        time_ms: 0,
        ..b.clone()
    }
}

/// Whether `c` is one of the commands this module answers.
pub fn handles(c: &Command) -> bool {
    matches!(
        c.kind,
        Some(
            command::Kind::Stage(_)
                | command::Kind::Activate(_)
                | command::Kind::Restart(_)
                | command::Kind::TailLogs(_)
                | command::Kind::StopLogs(_)
                | command::Kind::RunPreStart(_)
        )
    )
}

type Outcome = Result<String, String>;

impl Apps {
    /// `agent_state` is the agent's state dir; apps' own files live in the system paths.
    pub fn new(
        agent_state: &Path,
        fetcher: Fetcher,
        metrics: AppMetrics,
        metrics_port: u16,
    ) -> Apps {
        Apps {
            inner: Arc::new(Inner {
                outbox: Outbox::default(),
                metrics,
                fetcher,
                releases: Releases::default(),
                state_dir: agent_state.join("apps"),
                unit_dir: units::UNIT_DIR.into(),
                env_dir: units::ENV_DIR.into(),
                logrotate_dir: logrotate::CONF_DIR.into(),
                cores: std::thread::available_parallelism()
                    .map(|n| n.get() as u32)
                    .unwrap_or(1),
                metrics_port,
                bus: tokio::sync::Mutex::new(None),
                apps: Mutex::default(),
                tails: Mutex::default(),
            }),
        }
    }

    /// Re-adopts the apps this agent ran before it (re)started: watch and probe only.
    pub fn adopt(&self) {
        let entries = match std::fs::read_dir(&self.inner.state_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(dir = %self.inner.state_dir.display(), "cannot list adopted apps: {e}");
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let loaded = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| toml::from_str::<Persisted>(&t).map_err(|e| e.to_string()))
                .and_then(|p| {
                    AppSpec::parse(&p.spec_toml)
                        .map(|s| (s, p.version))
                        .map_err(|e| e.to_string())
                });
            match loaded {
                Ok((spec, version)) => {
                    let release = self
                        .inner
                        .releases
                        .current(&spec.name)
                        .ok()
                        .flatten()
                        .map(|v| v.to_string())
                        .unwrap_or(version);
                    tracing::info!(app = %spec.name, %release, "re-adopting app (its units are left as they are)");
                    let app = self.inner.entry(spec, &release);
                    self.inner.ensure_tasks(&app);
                }
                Err(e) => tracing::error!(file = %path.display(), "cannot re-adopt app: {e}"),
            }
        }
    }

    /// Called by each session when its stream is open; keep the guard for its lifetime.
    pub fn attach(&self, tx: mpsc::Sender<AgentMessage>) -> outbox::Attached {
        self.inner.outbox.attach(tx)
    }

    /// After Welcome: events kept while disconnected, then every app's state.
    pub fn resync(&self) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.outbox.flush_events().await;
            let apps: Vec<Arc<App>> = lock(&inner.apps).values().cloned().collect();
            for app in apps {
                inner.push_state(&app, true).await;
            }
        });
    }

    /// Runs an app command in a task of its own (it may take minutes; the session loop
    /// must keep heartbeating and feeding release downloads) and sends its one result.
    pub fn dispatch(&self, c: Command) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let id = c.id.clone();
            let session = inner.outbox.session();
            let outcome = match c.kind {
                Some(command::Kind::Stage(s)) => inner.stage(s).await,
                Some(command::Kind::Activate(a)) => inner.activate(a).await,
                Some(command::Kind::Restart(r)) => inner.restart(r).await,
                Some(command::Kind::TailLogs(t)) => inner.tail(&id, t, session).await,
                Some(command::Kind::StopLogs(s)) => Ok(inner.stop_tail(s)),
                Some(command::Kind::RunPreStart(p)) => inner.pre_start(p).await,
                Some(
                    command::Kind::Ping(_)
                    | command::Kind::ApplyFirewall(_)
                    | command::Kind::ConfirmFirewall(_),
                )
                | None => Err("not an app command (channel.rs routes it)".into()),
            };
            let (status, message) = match outcome {
                Ok(m) => (command_result::Status::Ok, m),
                Err(m) => {
                    tracing::warn!(command = %id, "app command failed: {m}");
                    (command_result::Status::Failed, m)
                }
            };
            let result = CommandResult {
                id,
                status: status as i32,
                message,
            };
            inner.outbox.send(agent_message::Body::Result(result)).await;
        });
    }
}

use fleet_proto::v1::AgentMessage;

fn parse_app(name: &str) -> Result<AppName, String> {
    name.parse().map_err(|e| format!("invalid app name: {e}"))
}

impl Inner {
    fn get(&self, name: &AppName) -> Option<Arc<App>> {
        lock(&self.apps).get(name).cloned()
    }

    fn known(&self, name: &str) -> Result<Arc<App>, String> {
        let name = parse_app(name)?;
        self.get(&name)
            .ok_or_else(|| format!("app {name} is not deployed on this host"))
    }

    /// The user of the spec this host runs `name` with, if it runs it.
    fn entry_user(&self, name: &AppName) -> Option<String> {
        self.get(name).map(|app| lock(&app.data).spec.user.clone())
    }

    /// The app's entry, made on first use; a known app keeps its state.
    fn entry(&self, spec: AppSpec, release: &str) -> Arc<App> {
        let mut apps = lock(&self.apps);
        apps.entry(spec.name.clone())
            .or_insert_with(|| {
                let failures = spec.health.failures;
                Arc::new(App {
                    name: spec.name.clone(),
                    ops: tokio::sync::Mutex::new(()),
                    data: Mutex::new(AppData {
                        spec,
                        release: release.to_owned(),
                        props: None,
                        tracker: Tracker::default(),
                        health: Health::new(failures),
                        health_epoch: 0,
                        agent_job: false,
                        last_sent: None,
                    }),
                    changed: watch::Sender::new(0),
                    probe_now: Notify::new(),
                    tasks_started: AtomicBool::new(false),
                })
            })
            .clone()
    }

    async fn bus(&self) -> Result<Systemd, String> {
        let mut bus = self.bus.lock().await;
        if let Some(b) = bus.as_ref() {
            return Ok(b.clone());
        }
        let b = Systemd::connect().await.map_err(|e| e.to_string())?;
        *bus = Some(b.clone());
        Ok(b)
    }

    fn ensure_tasks(self: &Arc<Self>, app: &Arc<App>) {
        if app.tasks_started.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(self.clone().watch_unit(app.clone()));
        tokio::spawn(self.clone().probe_loop(app.clone()));
        tokio::spawn(self.clone().log_watch(app.clone()));
    }

    /// Pushes the app's state when it differs from what was last sent (or always).
    async fn push_state(&self, app: &App, always: bool) {
        let state = {
            let d = lock(&app.data);
            let s = d.state(&app.name);
            self.metrics.set_state(
                &s.app,
                &s.release,
                s.active_state == "active",
                s.healthy,
                u64::from(s.restarts),
                s.crash_loop,
            );
            if !always && d.last_sent.as_ref().is_some_and(|l| same_state(l, &s)) {
                return;
            }
            s
        };
        app.changed.send_modify(|n| *n += 1);
        if self
            .outbox
            .send(agent_message::Body::AppState(state.clone()))
            .await
        {
            lock(&app.data).last_sent = Some(state);
        }
    }

    // ---- unit watch ----

    async fn watch_unit(self: Arc<Self>, app: Arc<App>) {
        let unit = units::service_name(&app.name);
        let mut retry = Duration::from_secs(1);
        loop {
            let Err(e) = self.watch_once(&app, &unit).await;
            tracing::warn!(app = %app.name, "watching {unit} failed: {e}; retrying in {}s", retry.as_secs());
            sleep(retry).await;
            retry = (retry * 2).min(WATCH_RETRY_MAX);
        }
    }

    async fn watch_once(&self, app: &App, unit: &str) -> Result<Infallible, String> {
        let bus = self.bus().await?;
        let path = bus.unit_path(unit).await.map_err(|e| e.to_string())?;
        let props = bus.properties(&path).await.map_err(|e| e.to_string())?;
        // Subscribed before the first read: no change can fall between the two.
        let mut changes = props
            .receive_properties_changed()
            .await
            .map_err(|e| format!("subscribe to {unit}: {e}"))?;
        let p = Systemd::read_props(&props, unit)
            .await
            .map_err(|e| e.to_string())?;
        self.observe(app, p).await;
        while changes.next().await.is_some() {
            let p = Systemd::read_props(&props, unit)
                .await
                .map_err(|e| e.to_string())?;
            self.observe(app, p).await;
        }
        Err("signal stream ended".into())
    }

    async fn observe(&self, app: &App, p: UnitProps) {
        let now = now_ms();
        let verdicts = {
            let mut d = lock(&app.data);
            let verdicts = if d.agent_job {
                d.tracker.rebase(&p);
                Vec::new()
            } else {
                d.tracker.observe(&p, now)
            };
            let crashed = verdicts
                .iter()
                .any(|v| matches!(v, Verdict::Crash(_) | Verdict::CrashLoop(_)));
            if crashed || (!is_up(&p) && d.health.healthy) {
                // A new process must prove itself; a dead one is not healthy.
                let failures = d.spec.health.failures;
                d.health.reset(
                    failures,
                    &format!("unit {} ({})", p.active_state, p.sub_state),
                );
                d.health_epoch += 1;
            }
            d.props = Some(p.clone());
            verdicts
        };
        for v in verdicts {
            match v {
                Verdict::State(_) => {
                    tracing::info!(app = %app.name, kind = v.kind(), "{}", v.message())
                }
                _ => tracing::warn!(app = %app.name, kind = v.kind(), "{}", v.message()),
            }
            let fields = HashMap::from([
                ("active_state".to_string(), p.active_state.clone()),
                ("sub_state".to_string(), p.sub_state.clone()),
                ("result".to_string(), p.result.clone()),
                ("restarts".to_string(), p.n_restarts.to_string()),
                ("main_pid".to_string(), p.main_pid.to_string()),
            ]);
            self.outbox
                .event(Event {
                    time_ms: now,
                    kind: v.kind().into(),
                    subject: app.name.to_string(),
                    message: v.message().to_owned(),
                    fields,
                })
                .await;
        }
        self.push_state(app, false).await;
        app.probe_now.notify_one();
    }

    // ---- health ----

    async fn probe_loop(self: Arc<Self>, app: Arc<App>) {
        loop {
            let (spec, epoch, up) = {
                let d = lock(&app.data);
                (
                    d.spec.clone(),
                    d.health_epoch,
                    d.props.as_ref().map(|p| (is_up(p), p.active_state.clone())),
                )
            };
            // Never probe a unit that is not up: a connection to its socket would start
            // it, and the agent starts nothing on its own.
            let outcome = match up {
                Some((true, _)) => {
                    let started = std::time::Instant::now();
                    let outcome = health::probe(
                        health::probe_addr(spec.listen),
                        &spec.health.path,
                        spec.health.timeout,
                    )
                    .await;
                    self.metrics
                        .observe_probe(app.name.as_str(), started.elapsed().as_secs_f64());
                    if let Ok(bus) = self.bus().await {
                        let unit = units::service_name(&app.name);
                        let usage = match bus.usage(&unit).await {
                            (Some(mem), Some(cpu)) => Some((mem, cpu as f64 / 1e9)),
                            // No cgroup accounting (hybrid cgroup hosts, or turned off):
                            // add up the unit's processes instead.
                            _ => match bus.unit_pids(&unit).await {
                                Ok(pids) => crate::metrics::procfs::processes_usage(&pids),
                                Err(_) => None,
                            },
                        };
                        if let Some((mem, cpu)) = usage {
                            self.metrics.set_usage(app.name.as_str(), mem, cpu);
                        }
                    }
                    outcome
                }
                Some((false, state)) => Err(format!("unit is {state}")),
                None => Err("unit state not known yet".into()),
            };
            {
                let mut d = lock(&app.data);
                if d.health_epoch == epoch {
                    d.health.record(outcome);
                    let healthy = d.health.healthy;
                    d.tracker.settle(now_ms(), healthy);
                }
            }
            self.push_state(&app, false).await;
            tokio::select! {
                _ = sleep(spec.health.interval) => {}
                _ = app.probe_now.notified() => {}
            }
        }
    }

    // ---- log files ----

    /// Restarts an app (gracefully, the usual restart path) whose processes still write
    /// into a deleted log file, and reports it as a `log-restart` event.
    ///
    /// A periodic check rather than a signal from the postrotate script: rotations also
    /// come from logrotate.timer, from `logrotate -f` by hand, or from a config someone
    /// edited (or a postrotate that failed), and what matters is the outcome (a process
    /// writing into a file that is gone, so its lines are lost), not which rotation caused
    /// it. Reading /proc/<pid>/fd of an app's few processes every LOG_CHECK_INTERVAL
    /// costs next to nothing and needs no state that a crash of the agent could lose. A
    /// holder must be seen by two checks in a row, so the instant between logrotate
    /// removing a file and Gunicorn reopening on its signal never triggers a restart.
    async fn log_watch(self: Arc<Self>, app: Arc<App>) {
        let unit = units::service_name(&app.name);
        let dir = logrotate::log_dir(&app.name);
        let mut seen_before: BTreeSet<u32> = BTreeSet::new();
        loop {
            sleep(LOG_CHECK_INTERVAL).await;
            if lock(&app.data).spec.logs.mode != LogMode::Files {
                seen_before.clear();
                continue;
            }
            let pids = match self.bus().await {
                Ok(bus) => match bus.unit_pids(&unit).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(app = %app.name, "deleted-log check: {e}");
                        continue;
                    }
                },
                Err(e) => {
                    tracing::warn!(app = %app.name, "deleted-log check: {e}");
                    continue;
                }
            };
            let held = logrotate::holders_of_deleted_logs(Path::new("/proc"), &pids, &dir);
            let now: BTreeSet<u32> = held.iter().map(|(pid, _)| *pid).collect();
            let stuck: Vec<&(u32, String)> = held
                .iter()
                .filter(|(pid, _)| seen_before.contains(pid))
                .collect();
            if stuck.is_empty() {
                seen_before = now;
                continue;
            }
            seen_before.clear();
            let what = stuck
                .iter()
                .map(|(pid, file)| format!("pid {pid} writes into {file}"))
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(app = %app.name, "{what}: restarting gracefully so it writes into the live log files");
            let outcome = self
                .restart(Restart {
                    app: app.name.to_string(),
                    reload: false,
                    healthy_deadline_ms: 0,
                })
                .await;
            let (result, detail) = match &outcome {
                Ok(m) => ("ok", m.clone()),
                Err(m) => ("failed", m.clone()),
            };
            let fields = HashMap::from([
                (
                    "files".to_string(),
                    stuck
                        .iter()
                        .map(|(_, f)| f.as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                ("restart".to_string(), result.to_string()),
            ]);
            self.outbox
                .event(Event {
                    time_ms: now_ms(),
                    kind: "log-restart".into(),
                    subject: app.name.to_string(),
                    message: format!("{what}; graceful restart {result}: {detail}"),
                    fields,
                })
                .await;
        }
    }

    /// Waits until the app is healthy, crash-loops, fails, or `deadline` passes.
    async fn wait_healthy(&self, app: &App, deadline: Duration) -> Outcome {
        let mut rx = app.changed.subscribe();
        let until = Instant::now() + deadline;
        loop {
            {
                let d = lock(&app.data);
                let p = d.props.clone().unwrap_or_default();
                if d.health.healthy {
                    return Ok(format!(
                        "healthy ({}), pid {}, {} restarts",
                        d.health.detail, p.main_pid, p.n_restarts
                    ));
                }
                if d.tracker.crash_loop {
                    return Err(format!(
                        "crash loop: unit {} ({}, result {}), {} restarts; last probe: {}",
                        p.active_state, p.sub_state, p.result, p.n_restarts, d.health.detail
                    ));
                }
                if p.active_state == "failed" {
                    return Err(format!(
                        "unit failed (result {}); last probe: {}",
                        p.result, d.health.detail
                    ));
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err("app state lost".into()) },
                _ = sleep_until(until) => {
                    let d = lock(&app.data);
                    return Err(format!(
                        "not healthy within {}: {}",
                        humantime::format_duration(deadline),
                        d.health.detail
                    ));
                }
            }
        }
    }

    /// Succeeds when the app stays healthy, with the same main process and restart count,
    /// for `hold`. A single later failed probe does not count (the probe's own failure
    /// threshold decides "unhealthy"), a crash or restart does at once.
    async fn stay_healthy(&self, app: &App, hold: Duration) -> Result<(), String> {
        let mut rx = app.changed.subscribe();
        let (pid, restarts) = {
            let d = lock(&app.data);
            let p = d.props.clone().unwrap_or_default();
            (p.main_pid, p.n_restarts)
        };
        let until = Instant::now() + hold;
        loop {
            {
                let d = lock(&app.data);
                let p = d.props.clone().unwrap_or_default();
                let why = if d.tracker.crash_loop {
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
                };
                if let Some(why) = why {
                    return Err(format!(
                        "did not stay healthy for {}: {why}",
                        humantime::format_duration(hold)
                    ));
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err("app state lost".into()) },
                _ = sleep_until(until) => return Ok(()),
            }
        }
    }

    /// Starts a fresh health history (new process or release) and probes at once.
    fn restart_health(&self, app: &App, why: &str) {
        let mut d = lock(&app.data);
        let failures = d.spec.health.failures;
        d.health.reset(failures, why);
        d.health_epoch += 1;
        d.tracker.reset();
    }

    /// Runs `f` (systemd jobs the agent asked for) with crash detection paused, then takes
    /// the unit's state after it as the new baseline.
    async fn agent_job<F, T>(&self, bus: &Systemd, app: &App, f: F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        lock(&app.data).agent_job = true;
        let out = f.await;
        let unit = units::service_name(&app.name);
        let fresh = async {
            let path = bus.unit_path(&unit).await.ok()?;
            let props = bus.properties(&path).await.ok()?;
            Systemd::read_props(&props, &unit).await.ok()
        }
        .await;
        {
            let mut d = lock(&app.data);
            d.agent_job = false;
            if let Some(p) = fresh {
                d.tracker.rebase(&p);
                d.props = Some(p);
            }
        }
        self.push_state(app, false).await;
        app.probe_now.notify_one();
        out
    }

    async fn failure(&self, app: &AppName, what: String) -> String {
        let unit = units::service_name(app);
        let tail = journal::recent(&unit, FAILURE_LINES).await;
        if tail.is_empty() {
            format!("{what} (see: fleetctl logs {app})")
        } else {
            format!("{what}; last journal lines of {unit}:{tail}")
        }
    }

    // ---- commands ----

    async fn stage(&self, s: StageRelease) -> Outcome {
        let name = parse_app(&s.app)?;
        let version: Version = s
            .version
            .parse()
            .map_err(|e| format!("invalid version: {e}"))?;
        // The venv's builder: the user the controller names, else the one of the spec this
        // host runs (an older controller sends none).
        let user = match s.user.as_str() {
            "" => self.entry_user(&name),
            u => Some(u.to_owned()),
        };
        let run_as = match user {
            Some(u) => {
                fleet_proto::spec::check_user(&u).map_err(|e| format!("invalid user: {e}"))?;
                Some(ensure_user(&u, &name).await?)
            }
            None => None,
        };
        let dir = self
            .releases
            .stage(&name, &version, &s.sha256, s.size, &self.fetcher, run_as)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("{name} {version} staged in {}", dir.display()))
    }

    /// The spec's pre-start hook with a staged release; touches nothing that runs.
    async fn pre_start(&self, p: RunPreStart) -> Outcome {
        let spec = AppSpec::parse(&p.spec_toml).map_err(|e| format!("invalid spec: {e}"))?;
        let version: Version = p
            .version
            .parse()
            .map_err(|e| format!("invalid version: {e}"))?;
        if spec.pre_start.is_empty() {
            return Err(format!("{} has no pre_start hook in its spec", spec.name));
        }
        let release_dir = self.releases.release_dir(&spec.name, &version);
        if !release_dir.join(crate::releases::MARKER).is_file() {
            return Err(format!(
                "{} {version} is not staged on this host: stage it before its pre-start hook",
                spec.name
            ));
        }
        let env = units::render_env(&spec, &p.secrets).map_err(|e| e.to_string())?;
        ensure_user(&spec.user, &spec.name).await?;
        units::ensure_dir(&self.env_dir, 0o700)
            .map_err(|e| format!("cannot create {}: {e}", self.env_dir.display()))?;
        // Its own env file: the running app's keeps the running release's env.
        let env_file = self.env_dir.join(format!("{}.prestart.env", spec.name));
        units::write_if_changed(&env_file, &env, 0o600)
            .map_err(|e| format!("cannot write {}: {e}", env_file.display()))?;
        let out = crate::hook::run(&spec, &release_dir, &env_file).await;
        let _ = std::fs::remove_file(&env_file);
        match &out {
            Ok(_) => tracing::info!(app = %spec.name, %version, "pre-start hook succeeded"),
            Err(e) => tracing::warn!(app = %spec.name, %version, "pre-start hook failed: {e}"),
        }
        out
    }

    async fn activate(self: &Arc<Self>, a: Activate) -> Outcome {
        let spec = AppSpec::parse(&a.spec_toml).map_err(|e| format!("invalid spec: {e}"))?;
        let version: Version = a
            .version
            .parse()
            .map_err(|e| format!("invalid version: {e}"))?;
        // Everything that can be refused is refused before the host is touched.
        if self.metrics_port != 0 && spec.listen.port() == self.metrics_port {
            return Err(format!(
                "listen {}: port {} is this host's fleet-agent metrics port (metrics_listen); pick another port",
                spec.listen, self.metrics_port
            ));
        }
        let env = units::render_env(&spec, &a.secrets).map_err(|e| e.to_string())?;
        let socket = units::render_socket(&spec).map_err(|e| e.to_string())?;
        let rotate = logrotate::Plan::prepare(&spec, &self.logrotate_dir)
            .await
            .map_err(|e| e.to_string())?;
        let name = spec.name.clone();
        let deadline = match a.healthy_deadline_ms {
            0 => DEFAULT_HEALTHY_DEADLINE,
            ms => Duration::from_millis(ms),
        };
        let app = self.entry(spec.clone(), version.as_str());
        let _op = app.ops.lock().await;

        let run_as = ensure_user(&spec.user, &name).await?;
        let app_dir = self.releases.app_dir(&name);
        let release_dir = self
            .releases
            .stage(
                &name,
                &version,
                &a.sha256,
                a.size,
                &self.fetcher,
                Some(run_as),
            )
            .await
            .map_err(|e| e.to_string())?;
        let runtime = runtime_for(&release_dir, &app_dir);
        let service = units::render_service(
            &spec,
            &Layout {
                app_dir: &app_dir,
                env_dir: &self.env_dir,
            },
            &runtime,
            self.cores,
        )
        .map_err(|e| e.to_string())?;

        let bus = self.bus().await?;
        let write = |path: PathBuf, text: &str, mode| {
            units::write_if_changed(&path, text, mode)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        units::ensure_dir(&self.env_dir, 0o700)
            .map_err(|e| format!("cannot create {}: {e}", self.env_dir.display()))?;
        write(units::env_path(&self.env_dir, &name), &env, 0o600)?;
        let socket_unit = units::socket_name(&name);
        let service_unit = units::service_name(&name);
        let socket_changed = write(self.unit_dir.join(&socket_unit), &socket, 0o644)?;
        let service_changed = write(self.unit_dir.join(&service_unit), &service, 0o644)?;
        if socket_changed || service_changed {
            bus.daemon_reload().await.map_err(|e| e.to_string())?;
            bus.enable(&[&socket_unit, &service_unit])
                .await
                .map_err(|e| e.to_string())?;
        }
        rotate.apply().map_err(|e| e.to_string())?;
        let previous = self
            .releases
            .switch_current(&name, &version)
            .await
            .map_err(|e| e.to_string())?;
        {
            let mut d = lock(&app.data);
            d.spec = spec.clone();
            d.release = version.to_string();
        }
        self.persist(&name, &a.spec_toml, &version)?;
        self.restart_health(&app, &format!("starting release {version}"));
        self.ensure_tasks(&app);

        let job_timeout = spec.graceful_timeout + Duration::from_secs(120);
        let started = self
            .agent_job(&bus, &app, async {
                for unit in [&socket_unit, &service_unit] {
                    bus.reset_failed(unit).await?;
                }
                let socket_kind = if socket_changed && previous.is_some() {
                    // A new listen address needs a new socket (open connections drop).
                    JobKind::Restart
                } else {
                    JobKind::Start
                };
                bus.job(socket_kind, &socket_unit, job_timeout).await?;
                let running = lock(&app.data).props.as_ref().is_some_and(is_up);
                let kind = if running {
                    JobKind::Restart
                } else {
                    JobKind::Start
                };
                bus.job(kind, &service_unit, job_timeout).await
            })
            .await;
        if let Err(e) = started {
            return Err(self.failure(&name, e.to_string()).await);
        }
        let started_at = Instant::now();
        let healthy = match self.wait_healthy(&app, deadline).await {
            Ok(detail) if a.min_healthy_ms > 0 => {
                // The hold counts inside the deadline, so a rollout can bound each host's
                // turn by the deadline alone.
                let hold = Duration::from_millis(a.min_healthy_ms);
                let left = deadline.saturating_sub(started_at.elapsed());
                if left < hold {
                    Err(format!(
                        "healthy only after {} ({detail}), too late to stay healthy for {} within the deadline of {}",
                        humantime::format_duration(Duration::from_millis(started_at.elapsed().as_millis() as u64)),
                        humantime::format_duration(hold),
                        humantime::format_duration(deadline)
                    ))
                } else {
                    self.stay_healthy(&app, hold).await.map(|()| detail)
                }
            }
            other => other,
        };
        match healthy {
            Ok(detail) => {
                // Only after success: a failed release leaves every older one in place.
                match self
                    .releases
                    .prune(&name, spec.releases_kept as usize)
                    .await
                {
                    Ok(removed) if !removed.is_empty() => {
                        tracing::info!(app = %name, removed = ?removed.iter().map(Version::as_str).collect::<Vec<_>>(), "old releases pruned")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(app = %name, "cannot prune old releases: {e}"),
                }
                Ok(format!("{name} {version} is running: {detail}"))
            }
            Err(why) => Err(self
                .failure(&name, format!("{name} {version} is not healthy: {why}"))
                .await),
        }
    }

    async fn restart(&self, r: Restart) -> Outcome {
        let app = self.known(&r.app)?;
        let _op = app.ops.lock().await;
        let (spec, release) = {
            let d = lock(&app.data);
            (d.spec.clone(), d.release.clone())
        };
        let name = app.name.clone();
        let deadline = match r.healthy_deadline_ms {
            0 => DEFAULT_HEALTHY_DEADLINE,
            ms => Duration::from_millis(ms),
        };
        let bus = self.bus().await?;
        let socket_unit = units::socket_name(&name);
        let service_unit = units::service_name(&name);
        let job_timeout = spec.graceful_timeout + Duration::from_secs(120);
        if r.reload {
            // HUP with code that cannot import kills the master (workers exit 3, the
            // master follows): prove the import first, as the app's user with its env.
            self.preflight(&spec).await?;
            self.restart_health(&app, "reloading");
            let reloaded = self
                .agent_job(
                    &bus,
                    &app,
                    bus.job(JobKind::Reload, &service_unit, job_timeout),
                )
                .await;
            if let Err(e) = reloaded {
                return Err(self.failure(&name, e.to_string()).await);
            }
        } else {
            self.restart_health(&app, "restarting");
            let restarted = self
                .agent_job(&bus, &app, async {
                    for unit in [&socket_unit, &service_unit] {
                        bus.reset_failed(unit).await?;
                    }
                    bus.job(JobKind::Start, &socket_unit, job_timeout).await?;
                    bus.job(JobKind::Restart, &service_unit, job_timeout).await
                })
                .await;
            if let Err(e) = restarted {
                return Err(self.failure(&name, e.to_string()).await);
            }
        }
        let what = if r.reload { "reloaded" } else { "restarted" };
        match self.wait_healthy(&app, deadline).await {
            Ok(detail) => Ok(format!("{name} {release} {what}: {detail}")),
            Err(why) => Err(self
                .failure(
                    &name,
                    format!("{name} {release} {what} but not healthy: {why}"),
                )
                .await),
        }
    }

    /// Imports the entry point of the current release once, as the app would.
    async fn preflight(&self, spec: &AppSpec) -> Result<(), String> {
        let current = self.releases.app_dir(&spec.name).join("current");
        let python = venv_bin(&current)
            .map(|b| b.join("python"))
            .unwrap_or_else(|| units::SYSTEM_PYTHON.into());
        let (module, callable) = spec
            .entry
            .split_once(':')
            .ok_or_else(|| format!("entry {:?} has no ':'", spec.entry))?;
        let user = nix::unistd::User::from_name(&spec.user)
            .map_err(|e| format!("cannot look up user {}: {e}", spec.user))?
            .ok_or_else(|| format!("user {} does not exist", spec.user))?;
        let env_file = units::env_path(&self.env_dir, &spec.name);
        let env = std::fs::read_to_string(&env_file)
            .map_err(|e| format!("cannot read {}: {e}", env_file.display()))?;
        let mut cmd = Process::new("setpriv");
        cmd.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .args(["--clear-groups", "--no-new-privs", "--"])
            .arg(&python)
            .args([
                "-c",
                "import importlib, sys; getattr(importlib.import_module(sys.argv[1]), sys.argv[2])",
                module,
                callable,
            ])
            .current_dir(&current)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .envs(units::parse_env(&env))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run the preflight import: {e}"))?;
        let out = tokio::time::timeout(PREFLIGHT_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                format!(
                    "preflight: importing {} took longer than {}; not reloading",
                    spec.entry,
                    humantime::format_duration(PREFLIGHT_TIMEOUT)
                )
            })?
            .map_err(|e| format!("preflight import: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "preflight: importing {} failed ({}); not reloading, the running workers keep serving:\n  {}",
            spec.entry,
            out.status,
            tail.join("\n  ")
        ))
    }

    async fn tail(&self, id: &str, t: TailLogs, session: Option<u64>) -> Outcome {
        let app = self.known(&t.app)?;
        let Some(session) = session else {
            return Err("no session to send lines to".into());
        };
        let unit = units::service_name(&app.name);
        let files = lock(&app.data).spec.logs.mode == LogMode::Files;
        let mut child = if files {
            let paths = [
                logrotate::access_log(&app.name),
                logrotate::error_log(&app.name),
            ];
            journal::spawn_files(&paths, t.lines, t.follow)
                .map_err(|e| format!("cannot run tail: {e}"))?
        } else {
            journal::spawn(&unit, t.lines, t.follow)
                .map_err(|e| format!("cannot run journalctl: {e}"))?
        };
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| "the log reader has no stdout".to_string())?;
        let (stop_tx, mut stop_rx) = oneshot::channel();
        lock(&self.tails).insert(id.to_owned(), stop_tx);
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        let mut sent = 0u64;
        let ended = self.outbox.session_ended(session);
        tokio::pin!(ended);
        let why = loop {
            tokio::select! {
                line = journal::next_line(&mut reader, &mut buf) => match line {
                    Ok(Some(line)) => {
                        let msg = agent_message::Body::LogLine(LogLine {
                            tail_id: id.to_owned(),
                            host: String::new(),
                            line,
                            time_ms: now_ms(),
                        });
                        if !self.outbox.send_to(Some(session), msg).await {
                            break "session ended";
                        }
                        sent += 1;
                    }
                    Ok(None) => break "end of log",
                    Err(_) => break "log output unreadable",
                },
                _ = &mut stop_rx => break "stopped",
                _ = &mut ended => break "session ended",
            }
        };
        lock(&self.tails).remove(id);
        // Our own child, by its pid (tokio's Child); then reaped.
        let _ = child.start_kill();
        let _ = child.wait().await;
        Ok(format!("{sent} lines ({why})"))
    }

    fn stop_tail(&self, s: StopLogs) -> String {
        match lock(&self.tails).remove(&s.tail_id) {
            Some(stop) => {
                let _ = stop.send(());
                format!("tail {} stopped", s.tail_id)
            }
            None => format!("no tail {} running", s.tail_id),
        }
    }

    fn persist(&self, name: &AppName, spec_toml: &str, version: &Version) -> Result<(), String> {
        let text = toml::to_string(&Persisted {
            version: version.to_string(),
            spec_toml: spec_toml.to_owned(),
        })
        .map_err(|e| format!("cannot record app {name}: {e}"))?;
        units::ensure_dir(&self.state_dir, 0o700)
            .and_then(|()| {
                units::write_if_changed(&self.state_dir.join(format!("{name}.toml")), &text, 0o600)
            })
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "cannot record app {name} in {}: {e}",
                    self.state_dir.display()
                )
            })
    }
}

/// The release's own gunicorn if its venv has one (run through `current`, so the unit
/// does not change between releases), else Debian's.
fn runtime_for(release_dir: &Path, app_dir: &Path) -> Runtime {
    let has_own = venv_bin(release_dir).is_some_and(|b| b.join("gunicorn").exists());
    Runtime {
        gunicorn: if has_own {
            app_dir.join("current/.venv/bin/gunicorn")
        } else {
            units::SYSTEM_GUNICORN.into()
        },
    }
}

/// The comment (GECOS field) fleet gives the user it creates for `app`: how it later
/// tells its own users from the system's.
fn user_comment(app: &AppName) -> String {
    format!("{USER_COMMENT} {app}")
}
/// What agents before per-app comments wrote; still accepted as fleet's own.
const USER_COMMENT: &str = "fleet app";

/// Whether an existing account with this GECOS field may run `app`: only one fleet made,
/// for this app (or, from an older agent, for an app).
pub fn user_is_fleets(gecos: &str, app: &AppName) -> bool {
    gecos == user_comment(app) || gecos == USER_COMMENT
}

/// Creates the app's system user if missing and returns its ids. An existing account is
/// used only if fleet created it for this app: naming `daemon`, `www-data` or another
/// app's user would hand this app their files. There is no D-Bus API for users; useradd
/// is what Debian's own maintainer scripts use.
async fn ensure_user(user: &str, app: &AppName) -> Result<RunAs, String> {
    let look = || match nix::unistd::User::from_name(user) {
        Ok(u) => Ok(u),
        Err(e) => Err(format!("cannot look up user {user}: {e}")),
    };
    if let Some(u) = look()? {
        if !user_is_fleets(&u.gecos.to_string_lossy(), app) {
            return Err(format!(
                "user {user} already exists and was not created by fleet for app {app}; \
                 set `user` in the spec to a name of the app's own (fleet creates it)"
            ));
        }
        return Ok(RunAs {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        });
    }
    let out = Process::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            &user_comment(app),
            "--",
            user,
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run useradd: {e}"))?;
    if out.status.success() {
        tracing::info!(%user, %app, "created system user for app");
        let u = look()?.ok_or_else(|| format!("useradd {user} succeeded but it does not exist"))?;
        Ok(RunAs {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
    } else {
        Err(format!(
            "useradd {user} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl From<SystemdError> for String {
    fn from(e: SystemdError) -> String {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_accounts_fleet_made_for_the_app_are_used() {
        let shop: AppName = "shop".parse().unwrap();
        assert_eq!(user_comment(&shop), "fleet app shop");
        assert!(user_is_fleets("fleet app shop", &shop));
        // Made by an agent before comments named the app.
        assert!(user_is_fleets("fleet app", &shop));
        for other in [
            "",
            "daemon",
            "www-data",
            "fleet app api",
            "fleet app shopx",
            "Fleet App shop",
        ] {
            assert!(!user_is_fleets(other, &shop), "{other:?}");
        }
    }
}
