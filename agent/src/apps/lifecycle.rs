//! StopApp, StartApp and RemoveApp: an app taken down on purpose, brought back, or
//! removed with everything the agent installed for it.
//!
//! A stopped app's units are stopped and disabled (so a reboot does not start them, and
//! no connection to the socket starts the service), and the agent's record of it says
//! so, so an agent restart re-adopts it as stopped. The record is written after the
//! units are down: an agent killed in between is asked again by the controller, which
//! compares the record it reports with the operator's intent.

use std::time::Duration;

use fleet_proto::v1::{RemoveApp, StartApp, StopApp};

use super::{lock, parse_app, App, AppError, Inner, Outcome, DEFAULT_HEALTHY_DEADLINE};
use crate::host_paths;
use crate::logrotate;
use crate::systemd::{JobKind, Systemd, SystemdError};
use crate::units;

impl Inner {
    pub(super) async fn stop_app(&self, s: StopApp) -> Outcome {
        let app = self.known(&s.app)?;
        let _op = app.ops.lock().await;
        let bus = self.bus().await?;
        self.down(&bus, &app).await?;
        self.set_stopped(&app, true)?;
        self.push_state(&app, false).await;
        Ok(format!("{} stopped; it stays down until started", app.name))
    }

    pub(super) async fn start_app(&self, s: StartApp) -> Outcome {
        let app = self.known(&s.app)?;
        let _op = app.ops.lock().await;
        let (spec, release) = {
            let d = lock(&app.data);
            (d.spec.clone(), d.release.clone())
        };
        let name = app.name.clone();
        let deadline = match s.healthy_deadline_ms {
            0 => DEFAULT_HEALTHY_DEADLINE,
            ms => Duration::from_millis(ms),
        };
        let bus = self.bus().await?;
        let socket_unit = host_paths::socket_name(&name);
        let service_unit = host_paths::service_name(&name);
        let job_timeout = spec.graceful_timeout + Duration::from_secs(120);
        bus.enable(&[&socket_unit, &service_unit]).await?;
        // Recorded as running before it starts: a crash of the agent from here on must
        // not leave an app that runs but is remembered as stopped.
        self.set_stopped(&app, false)?;
        self.restart_health(&app, "starting");
        let started = self
            .agent_job(&bus, &app, async {
                for unit in [&socket_unit, &service_unit] {
                    bus.reset_failed(unit).await?;
                }
                bus.job(JobKind::Start, &socket_unit, job_timeout).await?;
                bus.job(JobKind::Start, &service_unit, job_timeout).await
            })
            .await;
        if let Err(e) = started {
            return Err(self.failure(&name, e.to_string()).await);
        }
        match self.wait_healthy(&app, deadline).await {
            Ok(detail) => Ok(format!("{name} {release} started: {detail}")),
            Err(why) => Err(self
                .failure(
                    &name,
                    format!("{name} {release} started but not healthy: {why}"),
                )
                .await),
        }
    }

    /// Removes the app's units, env file, log rotation, releases and record; its logs
    /// and its system user stay (the operator's data, and files may still be theirs).
    /// Idempotent: whatever an earlier attempt left is removed, and an app this agent
    /// never ran succeeds.
    pub(super) async fn remove_app(&self, r: RemoveApp) -> Outcome {
        let name = parse_app(&r.app)?;
        let app = self.get(&name);
        let _op = match &app {
            Some(a) => Some(a.ops.lock().await),
            None => None,
        };
        let bus = self.bus().await?;
        match &app {
            Some(a) => self.down(&bus, a).await?,
            None => {
                let timeout = Duration::from_secs(120);
                bus.stop_if_loaded(&host_paths::socket_name(&name), timeout)
                    .await?;
                bus.stop_if_loaded(&host_paths::service_name(&name), timeout)
                    .await?;
                bus.disable(&[
                    &host_paths::socket_name(&name),
                    &host_paths::service_name(&name),
                ])
                .await?;
            }
        }
        let dirs = units::Dirs {
            unit: self.unit_dir.clone(),
            env: self.env_dir.clone(),
            worker: self.worker_dir.clone(),
        };
        units::remove_files(&dirs, &name)?;
        bus.daemon_reload().await?;
        for unit in [
            host_paths::socket_name(&name),
            host_paths::service_name(&name),
        ] {
            bus.reset_failed(&unit).await?;
        }
        logrotate::remove(&self.logrotate_dir, &name)?;
        self.releases.remove_all(&name).await?;
        match std::fs::remove_file(self.record_path(&name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AppError::File(fleet_proto::files::FileError {
                    action: "remove",
                    path: self.record_path(&name),
                    source,
                }))
            }
        }
        self.requests.forget(&name);
        self.metrics.remove(name.as_str());
        if let Some(a) = &app {
            lock(&self.apps).remove(&name);
            a.removed.send_replace(true);
        }
        tracing::info!(app = %name, "app removed from this host");
        Ok(match app {
            Some(_) => format!(
                "{name} removed: units, env file, log rotation and releases (its logs in {} \
                 and its system user stay)",
                host_paths::log_dir(&name).display()
            ),
            None => format!("{name} was not on this host; nothing left of it"),
        })
    }

    /// Stops socket then service (so no connection starts the service again), as an
    /// agent job (not a crash), and disables both so a reboot leaves them down.
    async fn down(&self, bus: &Systemd, app: &App) -> Result<(), SystemdError> {
        let socket_unit = host_paths::socket_name(&app.name);
        let service_unit = host_paths::service_name(&app.name);
        let timeout = lock(&app.data).spec.graceful_timeout + Duration::from_secs(120);
        {
            let mut d = lock(&app.data);
            let failures = d.spec.health.failures;
            d.health.reset(failures, "stopped by an operator");
            d.health_epoch += 1;
        }
        self.agent_job(bus, app, async {
            bus.stop_if_loaded(&socket_unit, timeout).await?;
            bus.stop_if_loaded(&service_unit, timeout).await
        })
        .await?;
        bus.disable(&[&socket_unit, &service_unit]).await
    }

    fn set_stopped(&self, app: &App, stopped: bool) -> Result<(), AppError> {
        let mut rec = self.read_record(&app.name)?;
        if rec.stopped != stopped {
            rec.stopped = stopped;
            self.write_record(&app.name, &rec)?;
        }
        lock(&app.data).stopped = stopped;
        Ok(())
    }
}
