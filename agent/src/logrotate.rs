//! Log files of apps in `logs.mode = "files"`. Owns `/etc/logrotate.d/fleet-app-<app>`
//! and the check that no process of an app still writes into a deleted log file.
//!
//! Gunicorn (the master and its workers) writes `access.log` and `error.log` under
//! `/var/log/fleet/<app>/`; the unit's `LogsDirectory=` makes that directory, owned by the
//! app's user with mode 0750, so logrotate needs no `su` (it only refuses directories that
//! are group- or world-writable). Rotation is rename + `create` + a signal: logrotate
//! renames the file (writers keep writing into the renamed one, nothing is lost), creates
//! a fresh one, and the postrotate makes Gunicorn reopen. `copytruncate` would lose the
//! lines written between copy and truncate, measured (docs/host.md), so it is never
//! used. Compression is always delayed by one rotation: the file just renamed may still
//! be written until the reopen, so only the one before it is compressed.
//!
//! The signal depends on the worker class:
//! - WSGI (sync workers): USR1 to the master, which reopens its own files and passes USR1
//!   on to every worker, which reopens too; nothing restarts.
//! - ASGI (Gunicorn with UvicornWorker, units.rs): Debian 12's uvicorn 0.17.6 resets
//!   USR1 to its default action in the worker (`init_signals`), so USR1 would kill every
//!   worker mid-request. These apps get HUP instead: a graceful reload, where the master
//!   reopens its files and starts new workers (which open the new files) while the old
//!   ones finish their requests. Trade-off: every rotation replaces the workers (the app
//!   is imported again; fleet's worker class keeps that from resetting connections,
//!   asgi_worker.rs), still far better than losing lines or killing requests.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use fleet_proto::spec::{AppName, AppSpec, LogMode, Server};
use tokio::process::Command;

use crate::host_paths::{self, access_log, error_log, LOG_NAMES};

pub const CONF_DIR: &str = "/etc/logrotate.d";

#[derive(Debug, thiserror::Error)]
pub enum LogrotateError {
    #[error("cannot run logrotate to check the rotation settings: {0}")]
    Run(std::io::Error),
    #[error("logrotate refuses the rotation settings for {app}: {detail}")]
    Invalid { app: AppName, detail: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] fleet_proto::files::FileError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogrotateError {
    let path = path.to_owned();
    move |source| LogrotateError::Io { what, path, source }
}

pub fn conf_path(conf_dir: &Path, app: &AppName) -> PathBuf {
    conf_dir.join(format!("fleet-app-{app}"))
}

/// The logrotate file for `spec`, or `None` in journal mode. Every value in it is typed
/// (validated app name, enum period, numbers), so nothing from the spec lands raw.
pub fn render(spec: &AppSpec) -> Option<String> {
    let rotation = spec.logs.rotation.as_ref()?;
    if spec.logs.mode != LogMode::Files {
        return None;
    }
    let app = &spec.name;
    let mut s = format!(
        "# Written by fleet-agent for app {app}; overwritten on every deploy.\n\
         {} {} {{\n",
        access_log(app).display(),
        error_log(app).display()
    );
    match (rotation.period, rotation.max_size) {
        (Some(p), Some(size)) => {
            let _ = writeln!(s, "    {}\n    maxsize {size}", p.as_str());
        }
        (Some(p), None) => {
            let _ = writeln!(s, "    {}", p.as_str());
        }
        (None, Some(size)) => {
            let _ = writeln!(s, "    size {size}");
        }
        (None, None) => {
            let _ = writeln!(s, "    daily");
        }
    }
    let _ = writeln!(s, "    rotate {}", rotation.keep);
    if rotation.compress {
        s.push_str("    compress\n    delaycompress\n");
    } else {
        s.push_str("    nocompress\n");
    }
    let _ = write!(
        s,
        "    missingok\n    notifempty\n    create\n    sharedscripts\n    postrotate\n        \
         systemctl kill --signal={signal} --kill-whom=main {unit} >/dev/null 2>&1 || true\n    \
         endscript\n}}\n",
        signal = reopen_signal(spec.server),
        unit = host_paths::service_name(app)
    );
    Some(s)
}

/// What makes the app's Gunicorn write into the new files (see the module comment).
pub fn reopen_signal(server: Server) -> &'static str {
    match server {
        Server::Gunicorn => "USR1",
        Server::Uvicorn => "HUP",
    }
}

/// Why `logrotate -d` refused a candidate, from its exit status and output, or `None` when
/// it accepts it. It exits 0 even for unknown options (it ignores the line), so any
/// `error:` line refuses the candidate too.
fn refusal(success: bool, output: &str) -> Option<String> {
    let errors: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::trim)
        .collect();
    if success && errors.is_empty() {
        None
    } else if errors.is_empty() {
        Some("logrotate -d failed".into())
    } else {
        Some(errors.join("; "))
    }
}

/// Checks `text` with `logrotate -d` (which only prints what it would do), from a private
/// temporary directory with its own state file, so a bad candidate changes nothing.
pub async fn validate(app: &AppName, text: &str) -> Result<(), LogrotateError> {
    let dir = tempfile::tempdir().map_err(|e| LogrotateError::Io {
        what: "cannot create a temporary directory for",
        path: std::env::temp_dir(),
        source: e,
    })?;
    let candidate = dir.path().join(format!("fleet-app-{app}"));
    // logrotate ignores config files writable by others; 0644 as installed.
    fleet_proto::files::write_if_changed(&candidate, text.as_bytes(), 0o644)?;
    let out = Command::new("logrotate")
        .arg("-d")
        .arg("-s")
        .arg(dir.path().join("state"))
        .arg(&candidate)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(LogrotateError::Run)?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
    .replace(&candidate.display().to_string(), "candidate");
    match refusal(out.status.success(), &output) {
        None => Ok(()),
        Some(detail) => Err(LogrotateError::Invalid {
            app: app.clone(),
            detail,
        }),
    }
}

/// The logrotate file an activation will install (or the removal it will do), checked
/// before anything on the host changes.
pub struct Plan {
    path: PathBuf,
    text: Option<String>,
}

impl Plan {
    /// Renders and validates; `Ok` means `apply` only has to write.
    pub async fn prepare(spec: &AppSpec, conf_dir: &Path) -> Result<Plan, LogrotateError> {
        let text = render(spec);
        if let Some(t) = &text {
            validate(&spec.name, t).await?;
        }
        Ok(Plan {
            path: conf_path(conf_dir, &spec.name),
            text,
        })
    }

    /// Installs the file atomically (only if it changed), or removes it when the app logs
    /// to the journal. Returns whether anything changed. Rotated logs are left in place:
    /// they are the operator's data.
    pub fn apply(&self) -> Result<bool, LogrotateError> {
        match &self.text {
            Some(t) => Ok(fleet_proto::files::write_if_changed(
                &self.path,
                t.as_bytes(),
                0o644,
            )?),
            None => match std::fs::remove_file(&self.path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(io("cannot remove", &self.path)(e)),
            },
        }
    }
}

/// Deletes the app's logrotate file (the app is removed); its rotated logs stay, as
/// `Plan::apply` leaves them.
pub fn remove(conf_dir: &Path, app: &AppName) -> Result<(), LogrotateError> {
    let path = conf_path(conf_dir, app);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("cannot remove", &path)(e)),
    }
}

/// Whether `target` (an fd link's text) is a deleted log file in `dir`: the kernel appends
/// " (deleted)" to links of unlinked files.
fn is_deleted_log(target: &str, dir: &Path) -> bool {
    let Some(path) = target.strip_suffix(" (deleted)") else {
        return false;
    };
    let path = Path::new(path);
    path.parent() == Some(dir)
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| LOG_NAMES.iter().any(|l| n.starts_with(l)))
}

/// The processes among `pids` that hold a deleted log of `dir` open, with that file.
/// Processes that exit while being read are skipped.
pub fn holders_of_deleted_logs(proc_root: &Path, pids: &[u32], dir: &Path) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if is_deleted_log(&target, dir) {
                found.push((*pid, target.into_owned()));
                break;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(logs: &str) -> AppSpec {
        crate::units::tests::spec(&format!("[logs]\n{logs}"))
    }

    #[test]
    fn journal_mode_has_no_logrotate_file() {
        assert_eq!(render(&spec("")), None);
        assert_eq!(render(&spec("rate_limit_burst = 10")), None);
    }

    #[test]
    fn files_mode_renames_creates_and_signals_the_master() {
        let text = render(&spec(
            "mode = \"files\"\nperiod = \"weekly\"\nmax_size = \"100M\"\nkeep = 3",
        ))
        .unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(
            lines[1],
            "/var/log/fleet/shop/access.log /var/log/fleet/shop/error.log {"
        );
        for want in [
            "weekly",
            "maxsize 104857600",
            "rotate 3",
            "compress",
            "delaycompress",
            "create",
            "missingok",
            "sharedscripts",
            "systemctl kill --signal=USR1 --kill-whom=main fleet-app-shop.service >/dev/null 2>&1 || true",
            "endscript",
            "}",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("copytruncate"), "loses lines");
        assert!(!text.contains("su "), "the directory is the app's, 0750");

        let mut asgi = spec("mode = \"files\"");
        asgi.server = Server::Uvicorn;
        let text = render(&asgi).unwrap();
        assert!(
            text.contains("systemctl kill --signal=HUP --kill-whom=main fleet-app-shop.service"),
            "UvicornWorker dies on USR1: {text}"
        );
        assert!(!text.contains("USR1"));

        let size_only = render(&spec(
            "mode = \"files\"\nmax_size = \"1G\"\ncompress = false",
        ))
        .unwrap();
        let lines: Vec<&str> = size_only.lines().map(str::trim).collect();
        assert!(lines.contains(&"size 1073741824"), "{size_only}");
        assert!(lines.contains(&"nocompress"), "{size_only}");
        assert!(!lines.contains(&"daily") && !lines.contains(&"delaycompress"));
    }

    #[test]
    fn logrotate_errors_refuse_even_with_exit_status_zero() {
        assert_eq!(
            refusal(true, "reading config file x\nHandling 1 logs\n"),
            None
        );
        assert_eq!(
            refusal(
                true,
                "error: candidate:4 unknown option 'rotat' -- ignoring line\n"
            )
            .as_deref(),
            Some("error: candidate:4 unknown option 'rotat' -- ignoring line")
        );
        assert!(refusal(false, "").is_some());
    }

    #[test]
    fn deleted_logs_are_found_by_their_fd_links() {
        let root = tempfile::tempdir().unwrap();
        let dir = Path::new("/var/log/fleet/shop");
        let mk = |pid: u32, fd: u32, target: &str| {
            let fds = root.path().join(pid.to_string()).join("fd");
            std::fs::create_dir_all(&fds).unwrap();
            std::os::unix::fs::symlink(target, fds.join(fd.to_string())).unwrap();
        };
        mk(10, 3, "/var/log/fleet/shop/access.log");
        mk(10, 4, "socket:[1234]");
        mk(11, 3, "/var/log/fleet/shop/access.log.1 (deleted)");
        mk(12, 3, "/var/log/fleet/other/access.log.1 (deleted)");
        mk(12, 4, "/tmp/wgunicorn-x (deleted)");
        let found = holders_of_deleted_logs(root.path(), &[10, 11, 12, 99], dir);
        assert_eq!(
            found,
            vec![(11, "/var/log/fleet/shop/access.log.1 (deleted)".to_string())]
        );
    }
}
