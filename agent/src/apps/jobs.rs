//! What start, restart, stop and remove have in common: the app's two unit names, how
//! long one systemd job of it may take, the health deadline an RPC asks for, the start of
//! both units and the wait for health that ends an operation.

use std::time::Duration;

use fleet_proto::spec::{AppName, AppSpec};

use super::{App, Inner, Outcome};
use crate::host_paths;
use crate::systemd::{JobKind, Systemd, SystemdError};

/// When an RPC asks for no health deadline.
const DEFAULT_HEALTHY_DEADLINE: Duration = Duration::from_secs(60);

/// On top of the graceful stop: room for a start (imports, workers binding).
const JOB_ALLOWANCE: Duration = Duration::from_secs(120);

/// An app's socket and service unit names.
pub(super) struct AppUnits {
    pub socket: String,
    pub service: String,
}

impl AppUnits {
    pub fn of(app: &AppName) -> AppUnits {
        AppUnits {
            socket: host_paths::socket_name(app),
            service: host_paths::service_name(app),
        }
    }

    pub fn both(&self) -> [&str; 2] {
        [&self.socket, &self.service]
    }

    /// Socket first, then service: once the socket is down no connection can start the
    /// service again. Units not loaded are left alone.
    pub async fn stop(&self, bus: &Systemd, timeout: Duration) -> Result<(), SystemdError> {
        bus.stop_if_loaded(&self.socket, timeout).await?;
        bus.stop_if_loaded(&self.service, timeout).await
    }
}

/// How long one systemd job of the app may take.
pub(super) fn job_timeout(spec: &AppSpec) -> Duration {
    spec.graceful_timeout + JOB_ALLOWANCE
}

/// Stop-or-kill bound for an app this agent has no spec of.
pub(super) const UNKNOWN_APP_JOB_TIMEOUT: Duration = JOB_ALLOWANCE;

/// The deadline an RPC asked for; 0 is the default.
pub(super) fn healthy_deadline(ms: u64) -> Duration {
    match ms {
        0 => DEFAULT_HEALTHY_DEADLINE,
        ms => Duration::from_millis(ms),
    }
}

impl Inner {
    /// Clears both units' failed state, starts the socket and runs `service_job` (start
    /// or restart) on the service, as an agent job (so no crash is reported for it).
    pub(super) async fn start_units(
        &self,
        bus: &Systemd,
        app: &App,
        service_job: JobKind,
    ) -> Result<(), SystemdError> {
        let units = AppUnits::of(&app.name);
        let timeout = job_timeout(&super::lock(&app.data).spec);
        self.agent_job(bus, app, async {
            for unit in units.both() {
                bus.reset_failed(unit).await?;
            }
            bus.job(JobKind::Start, &units.socket, timeout).await?;
            bus.job(service_job, &units.service, timeout).await
        })
        .await
    }

    /// The end of an operation that (re)started the app: healthy within `deadline`, or a
    /// failure with the journal's last lines. `what` is "started", "restarted"….
    pub(super) async fn settled(
        &self,
        app: &App,
        release: &str,
        deadline: Duration,
        what: &str,
    ) -> Outcome {
        let name = &app.name;
        match self.wait_healthy(app, deadline).await {
            Ok(detail) => Ok(format!("{name} {release} {what}: {detail}")),
            Err(why) => Err(self
                .failure(
                    name,
                    format!("{name} {release} {what} but not healthy: {why}"),
                )
                .await),
        }
    }
}
