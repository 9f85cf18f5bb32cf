//! The app manager: every app on this host, for the whole life of `fleet-agent run` (not
//! per session). It answers the app commands (Stage, Activate, Restart, TailLogs,
//! StopLogs, RunPreStart, and QueryRequests from the counts of `crate::requests`), watches
//! each app's service unit over D-Bus (PropertiesChanged, no polling) and probes its
//! health, and pushes `AppState` on every change and `Event`s for crashes.
//!
//! Apps are systemd's, not the agent's: the agent starts, restarts or reloads a unit only
//! when a command says so. On agent start it re-adopts what it ran before (from
//! `<state-dir>/apps/<app>.toml`) by reading and watching the units, never touching them,
//! so `kill -9` or a restart of the agent leaves every app's main pid as it was.
//!
//! Here: the app table, dispatch and adoption. One file per command or concern below:
//! `activate` (Stage, Activate), `restart`, `prestart`, `watch` (unit watch, probes,
//! deleted logs), `gate` (health gate), `tail` (logs), `exec` (Exec, CancelExec).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::files::{ensure_dir, write_if_changed};
use fleet_proto::spec::{AppName, AppSpec, Version};
use fleet_proto::v1::{
    agent_message, command, command_result, AgentMessage, AppState, Command, CommandResult,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::clock::now_ms;
use crate::crash::Tracker;
use crate::fetch::Fetcher;
use crate::health::Health;
use crate::host_paths;
use crate::journal;
use crate::logrotate;
use crate::metrics::AppMetrics;
use crate::outbox::{self, Outbox};
use crate::releases::Releases;
use crate::requests::Requests;
use crate::systemd::{Systemd, SystemdError, UnitProps};
use crate::units;
pub use error::AppError;

mod activate;
mod dedup;
mod error;
mod exec;
mod gate;
mod jobs;
mod lifecycle;
mod prestart;
mod restart;
mod tail;
mod user;
mod watch;

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
    /// Stopped by an operator (StopApp): adoption leaves it down and says so.
    #[serde(default)]
    stopped: bool,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Apps {
    inner: Arc<Inner>,
}

struct Inner {
    outbox: Outbox,
    /// Ids of the commands that change an app, so one re-sent runs once.
    dedup: dedup::Dedup,
    metrics: AppMetrics,
    requests: Requests,
    fetcher: Fetcher,
    releases: Releases,
    /// `<agent state dir>/apps`
    state_dir: PathBuf,
    unit_dir: PathBuf,
    env_dir: PathBuf,
    worker_dir: PathBuf,
    logrotate_dir: PathBuf,
    cores: u32,
    /// This agent's own /metrics port (0: off): no app may take it.
    metrics_port: u16,
    bus: tokio::sync::Mutex<Option<Systemd>>,
    apps: Mutex<HashMap<AppName, Arc<App>>>,
    tails: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Running execs by command id, to stop one on CancelExec.
    execs: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

struct App {
    name: AppName,
    /// One command at a time per app (deploy and restart of the same app never interleave).
    ops: tokio::sync::Mutex<()>,
    data: Mutex<AppData>,
    /// Bumped on every change, for commands waiting on health.
    changed: tokio::sync::watch::Sender<u64>,
    probe_now: Notify,
    tasks_started: AtomicBool,
    /// Set when the app is removed: its watch, probe and log tasks end.
    removed: tokio::sync::watch::Sender<bool>,
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
    /// Stopped by an operator: down on purpose, not a crash.
    stopped: bool,
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
            stopped: self.stopped,
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
                | command::Kind::QueryRequests(_)
                | command::Kind::StopApp(_)
                | command::Kind::StartApp(_)
                | command::Kind::RemoveApp(_)
                | command::Kind::Exec(_)
                | command::Kind::CancelExec(_)
        )
    )
}

/// A command's one result: what happened, or why it did not.
type Outcome = Result<String, AppError>;

impl Apps {
    /// `agent_state` is the agent's state dir; apps' own files live in the system paths.
    pub fn new(
        agent_state: &Path,
        fetcher: Fetcher,
        metrics: AppMetrics,
        requests: Requests,
        metrics_port: u16,
    ) -> Apps {
        Apps {
            inner: Arc::new(Inner {
                outbox: Outbox::default(),
                dedup: dedup::Dedup::default(),
                metrics,
                requests,
                fetcher,
                releases: Releases::default(),
                state_dir: agent_state.join("apps"),
                unit_dir: units::UNIT_DIR.into(),
                env_dir: units::ENV_DIR.into(),
                worker_dir: crate::asgi_worker::DIR.into(),
                logrotate_dir: logrotate::CONF_DIR.into(),
                cores: std::thread::available_parallelism()
                    .map(|n| n.get() as u32)
                    .unwrap_or(1),
                metrics_port,
                bus: tokio::sync::Mutex::new(None),
                apps: Mutex::default(),
                tails: Mutex::default(),
                execs: Mutex::default(),
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
                        .map(|s| (s, p.version, p.stopped))
                        .map_err(|e| e.to_string())
                });
            match loaded {
                Ok((spec, version, stopped)) => {
                    let release = self
                        .inner
                        .releases
                        .current(&spec.name)
                        .ok()
                        .flatten()
                        .map(|v| v.to_string())
                        .unwrap_or(version);
                    tracing::info!(app = %spec.name, %release, stopped, "re-adopting app (its units are left as they are)");
                    self.inner.count_requests(&spec);
                    let app = self.inner.entry(spec, &release);
                    lock(&app.data).stopped = stopped;
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
            if let Some(command::Kind::QueryRequests(q)) = &c.kind {
                let result = inner.query_requests(id, &q.app);
                inner.outbox.send(agent_message::Body::Result(result)).await;
                return;
            }
            let session = inner.outbox.session();
            if let Some(command::Kind::Exec(e)) = c.kind {
                // Its result carries the exit code.
                let result = inner.exec(id, e, session).await;
                inner.outbox.send(agent_message::Body::Result(result)).await;
                return;
            }
            let changes_app = matches!(
                c.kind,
                Some(
                    command::Kind::Stage(_)
                        | command::Kind::Activate(_)
                        | command::Kind::Restart(_)
                        | command::Kind::RunPreStart(_)
                        | command::Kind::StopApp(_)
                        | command::Kind::StartApp(_)
                        | command::Kind::RemoveApp(_)
                )
            );
            if changes_app {
                if let dedup::Claim::Repeat(first) = inner.dedup.claim(&id) {
                    tracing::info!(command = %id, "command received again: answering with its first run's result");
                    if let Some(result) = dedup::wait(first).await {
                        inner.outbox.send(agent_message::Body::Result(result)).await;
                    }
                    return;
                }
            }
            let outcome = match c.kind {
                Some(command::Kind::Stage(s)) => inner.stage(s).await,
                Some(command::Kind::Activate(a)) => inner.activate(a).await,
                Some(command::Kind::Restart(r)) => inner.restart(r).await,
                Some(command::Kind::TailLogs(t)) => inner.tail(&id, t, session).await,
                Some(command::Kind::StopLogs(s)) => Ok(inner.stop_tail(s)),
                Some(command::Kind::RunPreStart(p)) => inner.pre_start(p).await,
                Some(command::Kind::StopApp(s)) => inner.stop_app(s).await,
                Some(command::Kind::StartApp(s)) => inner.start_app(s).await,
                Some(command::Kind::RemoveApp(r)) => inner.remove_app(r).await,
                Some(command::Kind::CancelExec(x)) => Ok(inner.cancel_exec(x)),
                Some(
                    command::Kind::Ping(_)
                    | command::Kind::ApplyFirewall(_)
                    | command::Kind::ConfirmFirewall(_)
                    | command::Kind::UpgradeAgent(_)
                    // Answered above: their results carry counts or an exit code.
                    | command::Kind::QueryRequests(_)
                    | command::Kind::Exec(_),
                )
                | None => Err(AppError::NotAppCommand),
            };
            let (status, message) = match outcome {
                Ok(m) => (command_result::Status::Ok, m),
                Err(e) => {
                    tracing::warn!(command = %id, "app command failed: {e}");
                    (command_result::Status::Failed, e.to_string())
                }
            };
            let result = CommandResult {
                id,
                status: status as i32,
                message,
                request_stats: None,
                exit_code: 0,
            };
            if changes_app {
                inner.dedup.finish(&result);
            }
            inner.outbox.send(agent_message::Body::Result(result)).await;
        });
    }
}

/// Runs one of the app's tasks until it ends or the app is removed.
fn until_removed(app: &App, task: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut removed = app.removed.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            _ = removed.wait_for(|r| *r) => {}
        }
    });
}

fn parse_app(name: &str) -> Result<AppName, AppError> {
    name.parse().map_err(AppError::AppName)
}

impl Inner {
    fn get(&self, name: &AppName) -> Option<Arc<App>> {
        lock(&self.apps).get(name).cloned()
    }

    fn known(&self, name: &str) -> Result<Arc<App>, AppError> {
        let name = parse_app(name)?;
        self.get(&name).ok_or(AppError::NotDeployed(name))
    }

    /// Starts counting the app's requests from its access log (or takes the new spec's
    /// health path and log mode); before its new master starts, so none are missed.
    fn count_requests(&self, spec: &AppSpec) {
        self.requests
            .watch(spec, host_paths::access_log(&spec.name));
    }

    /// `QueryRequests`: the app's request counts since this agent started.
    fn query_requests(&self, id: String, app: &str) -> CommandResult {
        let found = self.known(app).and_then(|a| {
            self.requests
                .stats(&a.name)
                .ok_or_else(|| AppError::NotDeployed(a.name.clone()))
        });
        match found {
            Ok(stats) => CommandResult {
                id,
                status: command_result::Status::Ok as i32,
                message: String::new(),
                request_stats: Some(stats),
                exit_code: 0,
            },
            Err(e) => CommandResult {
                id,
                status: command_result::Status::Failed as i32,
                message: e.to_string(),
                request_stats: None,
                exit_code: 0,
            },
        }
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
                        stopped: false,
                        last_sent: None,
                    }),
                    changed: tokio::sync::watch::Sender::new(0),
                    probe_now: Notify::new(),
                    tasks_started: AtomicBool::new(false),
                    removed: tokio::sync::watch::Sender::new(false),
                })
            })
            .clone()
    }

    async fn bus(&self) -> Result<Systemd, SystemdError> {
        let mut bus = self.bus.lock().await;
        if let Some(b) = bus.as_ref() {
            return Ok(b.clone());
        }
        let b = Systemd::connect().await?;
        self.metrics.share_bus(b.connection());
        *bus = Some(b.clone());
        Ok(b)
    }

    fn ensure_tasks(self: &Arc<Self>, app: &Arc<App>) {
        if app.tasks_started.swap(true, Ordering::SeqCst) {
            return;
        }
        until_removed(app, self.clone().watch_unit(app.clone()));
        until_removed(app, self.clone().probe_loop(app.clone()));
        until_removed(app, self.clone().log_watch(app.clone()));
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

    async fn failure(&self, app: &AppName, what: String) -> AppError {
        let unit = host_paths::service_name(app);
        let tail = journal::recent(&unit, FAILURE_LINES).await;
        if tail.is_empty() {
            AppError::Failed(format!("{what} (see: fleetctl logs {app})"))
        } else {
            AppError::Failed(format!("{what}; last journal lines of {unit}:{tail}"))
        }
    }

    fn persist(&self, name: &AppName, spec_toml: &str, version: &Version) -> Result<(), AppError> {
        self.write_record(
            name,
            &Persisted {
                version: version.to_string(),
                spec_toml: spec_toml.to_owned(),
                stopped: false,
            },
        )
    }

    fn record_path(&self, name: &AppName) -> PathBuf {
        self.state_dir.join(format!("{name}.toml"))
    }

    fn read_record(&self, name: &AppName) -> Result<Persisted, AppError> {
        std::fs::read_to_string(self.record_path(name))
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str::<Persisted>(&t).map_err(|e| e.to_string()))
            .map_err(|reason| AppError::RecordRead {
                app: name.clone(),
                reason,
            })
    }

    fn write_record(&self, name: &AppName, rec: &Persisted) -> Result<(), AppError> {
        let text = toml::to_string(rec).map_err(|source| AppError::RecordEncode {
            app: name.clone(),
            source,
        })?;
        let path = self.record_path(name);
        ensure_dir(&self.state_dir, 0o700)
            .and_then(|()| write_if_changed(&path, text.as_bytes(), 0o600))
            .map(|_| ())
            .map_err(|source| AppError::RecordWrite {
                app: name.clone(),
                source,
            })
    }
}
