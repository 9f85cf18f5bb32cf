//! Watching each app: its service unit over D-Bus (PropertiesChanged, no polling), the
//! health probe loop, the deleted-log check, and systemd jobs the agent runs itself
//! (which are not crashes).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::spec::LogMode;
use fleet_proto::v1::{Event, Restart};
use tokio::time::sleep;
use tokio_stream::StreamExt;

use super::{is_up, lock, App, Inner, LOG_CHECK_INTERVAL, WATCH_RETRY_MAX};
use crate::clock::now_ms;
use crate::crash::Verdict;
use crate::health;
use crate::host_paths;
use crate::logrotate;
use crate::systemd::{Systemd, SystemdError, UnitProps};

/// Why watching a unit's D-Bus properties stopped; the watch starts over after a pause.
#[derive(Debug, thiserror::Error)]
pub(super) enum WatchError {
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error("subscribe to {unit}: {source}")]
    Subscribe { unit: String, source: zbus::Error },
    #[error("signal stream ended")]
    Ended,
}

impl Inner {
    pub(super) async fn watch_unit(self: Arc<Self>, app: Arc<App>) {
        let unit = host_paths::service_name(&app.name);
        let mut retry = Duration::from_secs(1);
        loop {
            let Err(e) = self.watch_once(&app, &unit).await;
            tracing::warn!(app = %app.name, "watching {unit} failed: {e}; retrying in {}s", retry.as_secs());
            sleep(retry).await;
            retry = (retry * 2).min(WATCH_RETRY_MAX);
        }
    }

    pub(super) async fn watch_once(&self, app: &App, unit: &str) -> Result<Infallible, WatchError> {
        let bus = self.bus().await?;
        let path = bus.unit_path(unit).await?;
        let props = bus.properties(&path).await?;
        // Subscribed before the first read: no change can fall between the two.
        let mut changes =
            props
                .receive_properties_changed()
                .await
                .map_err(|source| WatchError::Subscribe {
                    unit: unit.to_owned(),
                    source,
                })?;
        let p = Systemd::read_props(&props, unit).await?;
        self.observe(app, p).await;
        while changes.next().await.is_some() {
            let p = Systemd::read_props(&props, unit).await?;
            self.observe(app, p).await;
        }
        Err(WatchError::Ended)
    }

    pub(super) async fn observe(&self, app: &App, p: UnitProps) {
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
            let fields = BTreeMap::from([
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

    pub(super) async fn probe_loop(self: Arc<Self>, app: Arc<App>) {
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
                        let unit = host_paths::service_name(&app.name);
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
                Some((false, state)) => Err(health::ProbeError::UnitDown { state }),
                None => Err(health::ProbeError::UnitUnknown),
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
    pub(super) async fn log_watch(self: Arc<Self>, app: Arc<App>) {
        let unit = host_paths::service_name(&app.name);
        let dir = host_paths::log_dir(&app.name);
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
                Err(e) => ("failed", e.to_string()),
            };
            let fields = BTreeMap::from([
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

    /// Runs `f` (systemd jobs the agent asked for) with crash detection paused, then takes
    /// the unit's state after it as the new baseline.
    pub(super) async fn agent_job<F, T>(&self, bus: &Systemd, app: &App, f: F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        lock(&app.data).agent_job = true;
        let out = f.await;
        let unit = host_paths::service_name(&app.name);
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
}
