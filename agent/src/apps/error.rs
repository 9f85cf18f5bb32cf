//! Why an app command failed. The text is what the operator reads in fleetctl, so each
//! variant names the app, version, file or program it was about; errors of the modules
//! below (releases, units, logrotate, systemd) pass through with their own context.

use fleet_proto::files::FileError;
use fleet_proto::spec::{AppName, SpecError, Version};

use super::restart::PreflightError;
use super::user::UserError;
use crate::hook::HookError;
use crate::logrotate::LogrotateError;
use crate::releases::ReleaseError;
use crate::systemd::SystemdError;
use crate::units::RenderError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid app name: {0}")]
    AppName(SpecError),
    #[error("invalid version: {0}")]
    Version(SpecError),
    #[error("invalid user: {0}")]
    User(SpecError),
    #[error("invalid spec: {0}")]
    Spec(SpecError),
    #[error(
        "listen {listen}: port {port} is this host's fleet-agent metrics port (metrics_listen); \
         pick another port"
    )]
    MetricsPort { listen: String, port: u16 },
    #[error("app {0} is not deployed on this host")]
    NotDeployed(AppName),
    #[error("{0} is stopped on this host by an operator: `fleetctl app start {0}` first")]
    Stopped(AppName),
    #[error("cannot read the record of app {app}: {reason}")]
    RecordRead { app: AppName, reason: String },
    #[error("not an app command (channel.rs routes it)")]
    NotAppCommand,
    #[error("{0} has no pre_start hook in its spec")]
    NoPreStart(AppName),
    #[error("{app} {version} is not staged on this host: stage it before its pre-start hook")]
    NotStagedForHook { app: AppName, version: Version },
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("invalid exec id {0:?}: the controller sends lowercase hex")]
    ExecId(String),
    #[error("exec: {0}")]
    ExecArgv(String),
    #[error("exec: the app's user {0} is root on this host; fleet never runs anything as root")]
    ExecAsRoot(String),
    #[error("exec: the app's user {0} does not exist on this host (deploy the app first)")]
    ExecNoUser(String),
    #[error("exec: {0} commands already run on this host; try again when one has ended")]
    ExecBusy(usize),
    #[error("timed out after {0}; the command's unit was stopped")]
    ExecTimedOut(String),
    #[error("cancelled; the command's unit was stopped")]
    ExecCancelled,
    #[error("the controller's session ended; the command's unit was stopped")]
    ExecSessionGone,
    #[error("no session to send lines to")]
    NoSession,
    #[error("cannot run {program}: {source}")]
    LogReader {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("the log reader has no stdout")]
    LogReaderStdout,
    #[error("cannot record app {app}: {source}")]
    RecordEncode {
        app: AppName,
        source: toml::ser::Error,
    },
    #[error("cannot record app {app}: {source}")]
    RecordWrite { app: AppName, source: FileError },
    /// A start, restart or reload that did not end healthy, with the unit's last journal
    /// lines (or where to find them) appended.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    SystemUser(#[from] UserError),
    /// Boxed: the largest error by far, and every command's result carries the enum.
    #[error(transparent)]
    Release(Box<ReleaseError>),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Logrotate(#[from] LogrotateError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
}

impl From<ReleaseError> for AppError {
    fn from(e: ReleaseError) -> Self {
        AppError::Release(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn texts_name_what_they_are_about() {
        let e = AppError::MetricsPort {
            listen: "0.0.0.0:9437".into(),
            port: 9437,
        };
        assert_eq!(
            e.to_string(),
            "listen 0.0.0.0:9437: port 9437 is this host's fleet-agent metrics port \
             (metrics_listen); pick another port"
        );
        let e = AppError::from(PreflightError::Import {
            entry: "shop.wsgi:app".into(),
            status: std::process::ExitStatus::from_raw(256),
            tail: "ImportError: no module named shop".into(),
        });
        assert_eq!(
            e.to_string(),
            "preflight: importing shop.wsgi:app failed (exit status: 1); not reloading, the \
             running workers keep serving:\n  ImportError: no module named shop"
        );
        let app: AppName = "shop".parse().unwrap();
        assert_eq!(
            AppError::NotDeployed(app).to_string(),
            "app shop is not deployed on this host"
        );
    }
}
