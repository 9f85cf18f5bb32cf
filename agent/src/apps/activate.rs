//! Stage and Activate: fetch and unpack a release, then switch the app to it, health-gated.
//! Everything that can be refused is refused before the host is touched.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::spec::{AppSpec, Version};
use fleet_proto::v1::{Activate, StageRelease};
use tokio::time::Instant;

use super::gate::{too_late, Unhealthy};
use super::jobs::{healthy_deadline, job_timeout};
use super::user::ensure_user;
use super::{is_up, lock, parse_app, AppError, Inner, Outcome};
use crate::logrotate;
use crate::releases::venv_bin;
use crate::systemd::JobKind;
use crate::units::{self, Runtime};

impl Inner {
    /// Whether `app` runs `version` now, up and healthy and not crash-looping, with
    /// `current` naming that release: the one state an Activate of it would not improve.
    fn runs_healthy(&self, app: &super::App, version: &Version) -> bool {
        let up = {
            let d = lock(&app.data);
            d.release == version.as_str()
                && d.health.healthy
                && !d.tracker.crash_loop
                && !d.stopped
                && d.props.as_ref().is_some_and(is_up)
        };
        up && matches!(self.releases.current(&app.name), Ok(Some(v)) if v == *version)
    }

    pub(super) async fn stage(&self, s: StageRelease) -> Outcome {
        let name = parse_app(&s.app)?;
        let version: Version = s.version.parse().map_err(AppError::Version)?;
        // The venv's builder: the user the controller names, else the one of the spec this
        // host runs (an older controller sends none).
        let user = match s.user.as_str() {
            "" => self.entry_user(&name),
            u => Some(u.to_owned()),
        };
        let run_as = match user {
            Some(u) => {
                fleet_proto::spec::check_user(&u).map_err(AppError::User)?;
                Some(ensure_user(&u, &name).await?)
            }
            None => None,
        };
        let dir = self
            .releases
            .stage(&name, &version, &s.sha256, s.size, &self.fetcher, run_as)
            .await?;
        Ok(format!("{name} {version} staged in {}", dir.display()))
    }

    pub(super) async fn activate(self: &Arc<Self>, a: Activate) -> Outcome {
        let spec = AppSpec::parse(&a.spec_toml).map_err(AppError::Spec)?;
        let version: Version = a.version.parse().map_err(AppError::Version)?;
        // Everything that can be refused is refused before the host is touched.
        if self.metrics_port != 0 && spec.listen.port() == self.metrics_port {
            return Err(AppError::MetricsPort {
                listen: spec.listen.to_string(),
                port: self.metrics_port,
            });
        }
        let dirs = units::Dirs {
            unit: self.unit_dir.clone(),
            env: self.env_dir.clone(),
            worker: self.worker_dir.clone(),
        };
        let files = units::Prepared::render(&spec, &a.secrets, &dirs)?;
        let rotate = logrotate::Plan::prepare(&spec, &self.logrotate_dir).await?;
        let name = spec.name.clone();
        let deadline = healthy_deadline(a.healthy_deadline_ms);
        let app = self.entry(spec.clone(), version.as_str());
        let _op = app.ops.lock().await;
        if lock(&app.data).stopped {
            return Err(AppError::Stopped(name));
        }

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
            .await?;
        let runtime = runtime_for(&release_dir, &app_dir, &version);
        let files = files.with_service(&spec, &app_dir, &runtime, self.cores)?;

        let bus = self.bus().await?;
        let written = files.apply()?;
        let socket_unit = files.socket_unit();
        let service_unit = files.service_unit();
        let socket_changed = written.socket_changed;
        if written.units_changed() {
            bus.daemon_reload().await?;
            bus.enable(&[&socket_unit, &service_unit]).await?;
        }
        rotate.apply()?;
        self.count_requests(&spec);
        // The release it already runs, healthy, with the same files: a step re-sent after
        // a controller failover or restart (docs/ha.md) must not restart the app again.
        let unchanged = !written.units_changed() && !written.env_changed;
        if unchanged && self.runs_healthy(&app, &version) {
            lock(&app.data).spec = spec.clone();
            self.persist(&name, &a.spec_toml, &version)?;
            return Ok(format!(
                "{name} already runs release {version}, healthy: nothing restarted"
            ));
        }
        let previous = self.releases.switch_current(&name, &version).await?;
        {
            let mut d = lock(&app.data);
            d.spec = spec.clone();
            d.release = version.to_string();
        }
        self.persist(&name, &a.spec_toml, &version)?;
        self.restart_health(&app, &format!("starting release {version}"));
        self.ensure_tasks(&app);

        let job_timeout = job_timeout(&spec);
        let started = self
            .agent_job(&bus, &app, async {
                for unit in [&socket_unit, &service_unit] {
                    bus.reset_failed(unit).await?;
                }
                let (socket_kind, _) = jobs(socket_changed, previous.is_some(), false);
                bus.job(socket_kind, &socket_unit, job_timeout).await?;
                // Read after the socket job: starting the socket may have started it.
                let running = lock(&app.data).props.as_ref().is_some_and(is_up);
                let (_, kind) = jobs(socket_changed, previous.is_some(), running);
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
                match too_late(started_at.elapsed(), hold, deadline, &detail) {
                    Some(why) => Err(Unhealthy(why)),
                    None => self.stay_healthy(&app, hold).await.map(|()| detail),
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
                // The agent's own record of every activation (the HA lab test counts them).
                tracing::info!(app = %name, %version, "release activated");
                Ok(format!("{name} {version} is running: {detail}"))
            }
            Err(why) => Err(self
                .failure(&name, format!("{name} {version} is not healthy: {why}"))
                .await),
        }
    }
}

/// The jobs that start a release, socket first (it owns the listener) then service. The
/// socket is restarted only when its unit changed on a host that already ran the app: a
/// new listen address needs a new socket (open connections drop), anything else keeps the
/// kernel backlog across the switch. The service restarts if it runs, else starts.
fn jobs(socket_changed: bool, had_release: bool, service_running: bool) -> (JobKind, JobKind) {
    let socket = if socket_changed && had_release {
        JobKind::Restart
    } else {
        JobKind::Start
    };
    let service = if service_running {
        JobKind::Restart
    } else {
        JobKind::Start
    };
    (socket, service)
}

/// The release's own gunicorn if its venv has one (run through `current`, so its path
/// does not change between releases), else Debian's; and the release, which the unit
/// writes into every access line.
fn runtime_for(release_dir: &Path, app_dir: &Path, version: &Version) -> Runtime {
    let has_own = venv_bin(release_dir).is_some_and(|b| b.join("gunicorn").exists());
    Runtime {
        gunicorn: if has_own {
            app_dir.join("current/.venv/bin/gunicorn")
        } else {
            units::SYSTEM_GUNICORN.into()
        },
        release: version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobKind::{Restart, Start};

    #[test]
    fn the_socket_restarts_only_when_it_changed_under_a_running_release() {
        assert_eq!(jobs(false, false, false), (Start, Start), "first deploy");
        assert_eq!(
            jobs(true, false, false),
            (Start, Start),
            "new unit, no release yet"
        );
        assert_eq!(
            jobs(false, true, true),
            (Start, Restart),
            "same socket: backlog kept"
        );
        assert_eq!(
            jobs(true, true, true),
            (Restart, Restart),
            "new listen address"
        );
        assert_eq!(
            jobs(false, true, false),
            (Start, Start),
            "stopped app starts"
        );
    }
}
