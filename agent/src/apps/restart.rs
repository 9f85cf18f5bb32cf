//! Restart and reload of a running app, with the reload preflight (import the new code
//! once, as the app, before sending HUP).

use std::process::Stdio;

use fleet_proto::spec::AppSpec;
use fleet_proto::v1::Restart;
use tokio::process::Command as Process;

use super::jobs::{healthy_deadline, job_timeout, AppUnits};
use super::{lock, Inner, Outcome, PREFLIGHT_TIMEOUT};
use crate::releases::venv_bin;
use crate::systemd::JobKind;
use crate::units;

/// Why a reload was refused before the running workers were touched.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("entry {entry:?} has no ':'")]
    NoColon { entry: String },
    #[error("cannot look up user {user}: {source}")]
    LookUp { user: String, source: nix::Error },
    #[error("user {user} does not exist")]
    NoUser { user: String },
    #[error("cannot read {}: {source}", path.display())]
    ReadEnv {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run the preflight import: {0}")]
    Spawn(std::io::Error),
    #[error("preflight: importing {entry} took longer than {after}; not reloading")]
    Timeout { entry: String, after: String },
    #[error("preflight import: {0}")]
    Wait(std::io::Error),
    #[error(
        "preflight: importing {entry} failed ({status}); not reloading, the running workers \
         keep serving:\n  {tail}"
    )]
    Import {
        entry: String,
        status: std::process::ExitStatus,
        tail: String,
    },
}

impl Inner {
    pub(super) async fn restart(&self, r: Restart) -> Outcome {
        let app = self.known(&r.app)?;
        let _op = app.ops.lock().await;
        if lock(&app.data).stopped {
            return Err(super::AppError::Stopped(app.name.clone()));
        }
        let (spec, release) = {
            let d = lock(&app.data);
            (d.spec.clone(), d.release.clone())
        };
        let bus = self.bus().await?;
        if r.reload {
            // HUP with code that cannot import kills the master (workers exit 3, the
            // master follows): prove the import first, as the app's user with its env.
            self.preflight(&spec).await?;
            self.restart_health(&app, "reloading");
            let service = AppUnits::of(&app.name).service;
            let reloaded = self
                .agent_job(
                    &bus,
                    &app,
                    bus.job(JobKind::Reload, &service, job_timeout(&spec)),
                )
                .await;
            if let Err(e) = reloaded {
                return Err(self.failure(&app.name, e.to_string()).await);
            }
        } else {
            self.restart_health(&app, "restarting");
            if let Err(e) = self.start_units(&bus, &app, JobKind::Restart).await {
                return Err(self.failure(&app.name, e.to_string()).await);
            }
        }
        let what = if r.reload { "reloaded" } else { "restarted" };
        let deadline = healthy_deadline(r.healthy_deadline_ms);
        self.settled(&app, &release, deadline, what).await
    }

    /// Imports the entry point of the current release once, as the app would.
    pub(super) async fn preflight(&self, spec: &AppSpec) -> Result<(), PreflightError> {
        let current = self.releases.app_dir(&spec.name).join("current");
        let python = venv_bin(&current)
            .map(|b| b.join("python"))
            .unwrap_or_else(|| units::SYSTEM_PYTHON.into());
        let (module, callable) =
            spec.entry
                .split_once(':')
                .ok_or_else(|| PreflightError::NoColon {
                    entry: spec.entry.clone(),
                })?;
        let user = nix::unistd::User::from_name(&spec.user)
            .map_err(|source| PreflightError::LookUp {
                user: spec.user.clone(),
                source,
            })?
            .ok_or_else(|| PreflightError::NoUser {
                user: spec.user.clone(),
            })?;
        let env_file = units::env_path(&self.env_dir, &spec.name);
        let env = std::fs::read_to_string(&env_file).map_err(|source| PreflightError::ReadEnv {
            path: env_file.clone(),
            source,
        })?;
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
        let child = cmd.spawn().map_err(PreflightError::Spawn)?;
        let out = tokio::time::timeout(PREFLIGHT_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| PreflightError::Timeout {
                entry: spec.entry.clone(),
                after: humantime::format_duration(PREFLIGHT_TIMEOUT).to_string(),
            })?
            .map_err(PreflightError::Wait)?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(PreflightError::Import {
            entry: spec.entry.clone(),
            status: out.status,
            tail: tail.join("\n  "),
        })
    }
}
