//! Names of an app's things on the host that more than one module needs: the systemd
//! unit names and the log file paths. A leaf below `units` (which puts them into the
//! unit) and `logrotate` (which rotates the files and signals the unit), so neither
//! has to import the other. Only names live here; each file is written by its owner.

use std::path::{Path, PathBuf};

use fleet_proto::spec::AppName;

pub fn service_name(app: &AppName) -> String {
    format!("fleet-app-{app}.service")
}

pub fn socket_name(app: &AppName) -> String {
    format!("fleet-app-{app}.socket")
}

/// Parent of every app's log directory (apps in `logs.mode = "files"`).
pub const LOG_DIR: &str = "/var/log/fleet";
/// Files of the app's log directory that are logs (current and rotated).
pub const LOG_NAMES: [&str; 2] = ["access.log", "error.log"];

pub fn log_dir(app: &AppName) -> PathBuf {
    Path::new(LOG_DIR).join(app.as_str())
}

pub fn access_log(app: &AppName) -> PathBuf {
    log_dir(app).join(LOG_NAMES[0])
}

pub fn error_log(app: &AppName) -> PathBuf {
    log_dir(app).join(LOG_NAMES[1])
}

/// The unit's `LogsDirectory=` value (relative to /var/log).
pub fn logs_directory(app: &AppName) -> String {
    format!("fleet/{app}")
}
