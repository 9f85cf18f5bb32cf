//! StopApp, StartApp and RemoveApp: an app taken down on purpose, brought back, or
//! removed with everything the agent installed for it.
//!
//! A stopped app's units are stopped and disabled (so a reboot does not start them, and
//! no connection to the socket starts the service), and the agent's record of it says
//! so, so an agent restart re-adopts it as stopped. The record is written after the
//! units are down: an agent killed in between is asked again by the controller, which
//! compares the record it reports with the operator's intent.

use fleet_proto::v1::{RemoveApp, StartApp, StopApp};

use super::jobs::{healthy_deadline, job_timeout, AppUnits, UNKNOWN_APP_JOB_TIMEOUT};
use super::{lock, parse_app, App, AppError, Inner, Outcome};
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
        let release = lock(&app.data).release.clone();
        let bus = self.bus().await?;
        let units = AppUnits::of(&app.name);
        bus.enable(&units.both()).await?;
        // Recorded as running before it starts: a crash of the agent from here on must
        // not leave an app that runs but is remembered as stopped.
        self.set_stopped(&app, false)?;
        self.restart_health(&app, "starting");
        if let Err(e) = self.start_units(&bus, &app, JobKind::Start).await {
            return Err(self.failure(&app.name, e.to_string()).await);
        }
        let deadline = healthy_deadline(s.healthy_deadline_ms);
        self.settled(&app, &release, deadline, "started").await
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
                let units = AppUnits::of(&name);
                units.stop(&bus, UNKNOWN_APP_JOB_TIMEOUT).await?;
                bus.disable(&units.both()).await?;
            }
        }
        let dirs = units::Dirs {
            unit: self.unit_dir.clone(),
            env: self.env_dir.clone(),
            worker: self.worker_dir.clone(),
        };
        units::remove_files(&dirs, &name)?;
        bus.daemon_reload().await?;
        for unit in AppUnits::of(&name).both() {
            bus.reset_failed(unit).await?;
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
        let units = AppUnits::of(&app.name);
        let timeout = job_timeout(&lock(&app.data).spec);
        {
            let mut d = lock(&app.data);
            let failures = d.spec.health.failures;
            d.health.reset(failures, "stopped by an operator");
            d.health_epoch += 1;
        }
        self.agent_job(bus, app, units.stop(bus, timeout)).await?;
        bus.disable(&units.both()).await
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
