//! The app's systemd units and its environment files: rendered here (pure functions) and
//! written by `plan` (a [`Plan`] rendered before anything changes, then applied), atomically
//! and only when their content changed. Owns
//! `/etc/systemd/system/fleet-app-<app>.{socket,service}`, `/etc/fleet/apps/<app>.env` and
//! the pre-start hook's `/etc/fleet/apps/<app>.prestart.env`.
//!
//! Shape (measured facts in docs/host.md):
//! - a `.socket` unit owns the listener, so a restart queues connections in the kernel
//!   backlog instead of refusing them (0 failed requests versus hundreds without);
//! - Gunicorn reads `LISTEN_FDS` and sends `READY=1`, so `Type=notify`; reload is HUP;
//! - `Restart=always` with a start limit, so a crash-looping release ends `failed` instead
//!   of restarting forever;
//! - sandboxing that keeps `systemd-analyze security` near 1.0 without breaking Gunicorn
//!   (`~@privileged` breaks it: it calls setuid/chown; `@system-service` does not).
//!
//! Every value taken from the spec is validated by `fleet_proto::spec` already; it is
//! still escaped here for the systemd syntax it lands in, and anything that could start a
//! new line or setting is refused, so no spec value is ever pasted raw.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fleet_proto::spec::{
    check_env_value, env_file_line, AppName, AppSpec, LogMode, Server, Version,
};

use crate::asgi_worker;
use crate::host_paths::{access_log, error_log, logs_directory};
use crate::requests;

mod plan;
pub use plan::{remove_files, Applied, Dirs, Plan, Prepared, PrestartEnv};

pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const ENV_DIR: &str = "/etc/fleet/apps";
/// Debian's gunicorn, used when a release ships no venv of its own.
pub const SYSTEM_GUNICORN: &str = "/usr/bin/gunicorn";
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Crash-loop policy: more than `START_LIMIT_BURST` starts within the interval and the
/// unit stays `failed` (Result=start-limit-hit) until fleet resets it.
pub const START_LIMIT_INTERVAL_SECS: u64 = 60;
pub const START_LIMIT_BURST: u32 = 5;
/// Short, so a crashed app is back within about a second.
pub const RESTART_SEC_MS: u64 = 500;
/// Added to the graceful timeout: systemd must not SIGKILL workers still draining.
const STOP_MARGIN_SECS: u64 = 10;

pub fn env_path(env_dir: &Path, app: &AppName) -> PathBuf {
    env_dir.join(format!("{app}.env"))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("{field}: {value:?} cannot be written into a unit file safely")]
    Unsafe { field: &'static str, value: String },
    #[error("required secrets not set: {}", .0.join(", "))]
    MissingSecrets(Vec<String>),
    /// Never carries the value: secrets stay out of messages and logs.
    #[error("secret {key}: {reason}")]
    BadSecret { key: String, reason: String },
}

/// What the service runs, decided per release (a release with its own venv brings its own
/// gunicorn and python).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    pub gunicorn: PathBuf,
    /// The release the master runs: written into every access line (requests/parse.rs),
    /// so the unit changes with each release.
    pub release: Version,
}

/// Paths as they appear inside the units; `app_dir` is `/var/lib/fleet/apps/<app>`,
/// `worker_dir` holds fleet's ASGI worker class (`asgi_worker::DIR`).
#[derive(Clone, Debug)]
pub struct Layout<'a> {
    pub app_dir: &'a Path,
    pub env_dir: &'a Path,
    pub worker_dir: &'a Path,
}

/// A value for a unit setting other than Exec*: `%` starts a specifier, so it is
/// doubled; control characters and backslashes (line continuation, C escapes) are
/// refused outright.
fn setting(field: &'static str, value: &str) -> Result<String, RenderError> {
    if value.is_empty() || value.chars().any(|c| c.is_control() || c == '\\') {
        return Err(RenderError::Unsafe {
            field,
            value: value.to_owned(),
        });
    }
    Ok(value.replace('%', "%%"))
}

/// One argument of an `Exec*=` command line: plain when it holds only characters with no
/// meaning to systemd's parser, otherwise double-quoted with `\`, `"` escaped and `%`, `$`
/// doubled (specifiers and variable expansion).
fn exec_arg(field: &'static str, value: &str) -> Result<String, RenderError> {
    if value.is_empty() || value.chars().any(|c| c.is_control()) {
        return Err(RenderError::Unsafe {
            field,
            value: value.to_owned(),
        });
    }
    let plain = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./:=,@+-".contains(c));
    if plain && !value.starts_with(['@', '-', ':', '+', '!']) {
        return Ok(value.to_owned());
    }
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

fn path_str(field: &'static str, p: &Path) -> Result<String, RenderError> {
    let s = p.to_str().ok_or_else(|| RenderError::Unsafe {
        field,
        value: p.display().to_string(),
    })?;
    if !s.starts_with('/') {
        return Err(RenderError::Unsafe {
            field,
            value: s.to_owned(),
        });
    }
    Ok(s.to_owned())
}

pub fn render_socket(spec: &AppSpec) -> Result<String, RenderError> {
    let app = setting("name", spec.name.as_str())?;
    // SocketAddr's Display is numeric ("0.0.0.0:8000", "[::]:8000"): what ListenStream takes.
    let listen = setting("listen", &spec.listen.to_string())?;
    Ok(format!(
        "# Written by fleet-agent for app {app}; overwritten on every deploy.\n\
         [Unit]\n\
         Description=fleet app {app} (listener)\n\
         \n\
         [Socket]\n\
         ListenStream={listen}\n\
         NoDelay=yes\n\
         \n\
         [Install]\n\
         WantedBy=sockets.target\n"
    ))
}

/// The service unit. `cores` sizes the default worker count on this host.
pub fn render_service(
    spec: &AppSpec,
    layout: &Layout<'_>,
    runtime: &Runtime,
    cores: u32,
) -> Result<String, RenderError> {
    let app = setting("name", spec.name.as_str())?;
    let user = setting("user", &spec.user)?;
    let current = layout.app_dir.join("current");
    let current_s = path_str("app_dir", &current)?;
    let env_file = path_str("env_dir", &env_path(layout.env_dir, &spec.name))?;
    let graceful = spec.graceful_timeout.as_secs().max(1);

    let mut argv = vec![
        exec_arg("gunicorn", &path_str("gunicorn", &runtime.gunicorn)?)?,
        "--chdir".into(),
        exec_arg("app_dir", &current_s)?,
        "--workers".into(),
        spec.workers_for(cores).to_string(),
        "--graceful-timeout".into(),
        graceful.to_string(),
    ];
    if spec.server == Server::Uvicorn {
        // ASGI apps run as Gunicorn workers rather than under the uvicorn CLI: Gunicorn
        // takes the systemd socket (LISTEN_FDS), sends READY=1 (Type=notify), reloads on
        // HUP and reopens its own log files on USR1 (the workers do not: logrotate.rs).
        // Debian 12's uvicorn 0.17.6 CLI exits on SIGHUP (no
        // graceful reload at all) and knows neither LISTEN_FDS nor sd_notify.
        // The class is fleet's subclass of uvicorn's worker, which reads the requests of
        // connections it already accepted before closing them on a graceful stop
        // (uvicorn's own resets them: asgi_worker.rs, docs/host.md).
        argv.push("--pythonpath".into());
        argv.push(exec_arg(
            "worker_dir",
            &path_str("worker_dir", layout.worker_dir)?,
        )?);
        argv.push("--worker-class".into());
        argv.push(asgi_worker::CLASS.into());
    }
    // Every app writes fleet's access line into its own file, whatever its log mode: the
    // agent counts requests from it (requests/mod.rs says why a file, not the journal).
    // Gunicorn itself writes the files (master and workers), so a signal can make it
    // reopen them after logrotate renamed them; see logrotate.rs.
    argv.push("--access-logfile".into());
    argv.push(exec_arg(
        "logs",
        &path_str("logs", &access_log(&spec.name))?,
    )?);
    argv.push("--access-logformat".into());
    argv.push(exec_arg(
        "release",
        &requests::parse::format(&runtime.release),
    )?);
    if spec.logs.mode == LogMode::Files {
        argv.push("--error-logfile".into());
        argv.push(exec_arg(
            "logs",
            &path_str("logs", &error_log(&spec.name))?,
        )?);
    }
    // systemd creates it owned by User= and makes it writable under
    // ProtectSystem=strict; 0750 and owned by the app, so logrotate needs no `su`.
    let mut log_settings = String::new();
    let _ = writeln!(
        log_settings,
        "LogsDirectory={}\nLogsDirectoryMode=0750",
        setting("name", &logs_directory(&spec.name))?
    );
    if let Some(i) = spec.logs.rate_limit_interval {
        let _ = writeln!(log_settings, "LogRateLimitIntervalSec={}ms", i.as_millis());
    }
    if let Some(b) = spec.logs.rate_limit_burst {
        let _ = writeln!(log_settings, "LogRateLimitBurst={b}");
    }
    argv.push(exec_arg("entry", &spec.entry)?);
    let exec_start = argv.join(" ");

    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "# Written by fleet-agent for app {app}; overwritten on every deploy.\n\
         [Unit]\n\
         Description=fleet app {app} ({server})\n\
         Requires=fleet-app-{app}.socket\n\
         After=fleet-app-{app}.socket network.target\n\
         StartLimitIntervalSec={START_LIMIT_INTERVAL_SECS}s\n\
         StartLimitBurst={START_LIMIT_BURST}\n\
         \n\
         [Service]\n\
         Type=notify\n\
         User={user}\n\
         WorkingDirectory={current_s}\n\
         Environment=PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1\n\
         EnvironmentFile={env_file}\n\
         ExecStart={exec_start}\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         KillMode=mixed\n\
         TimeoutStopSec={stop}s\n\
         Restart=always\n\
         RestartSec={RESTART_SEC_MS}ms\n\
         CPUAccounting=yes\n\
         MemoryAccounting=yes\n\
         TasksAccounting=yes\n\
         SyslogIdentifier={app}\n",
        server = spec.server.as_str(),
        stop = graceful + STOP_MARGIN_SECS,
    );
    s.push_str(&log_settings);
    s.push_str(HARDENING);
    s.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    Ok(s)
}

/// Sandboxing that Gunicorn (sync and uvicorn workers) runs under. The app may read the
/// system and its release, write only its private /tmp, reach the network, and nothing
/// else. No MemoryDenyWriteExecute: CPython extensions built with cffi need W+X pages.
pub const HARDENING: &str = "\
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateUsers=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
UMask=0027
DevicePolicy=closed
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@resources
SystemCallErrorNumber=EPERM
";

/// The app's `EnvironmentFile=`: plain env from the spec, then the secrets it requires.
/// Every required secret must be present; secrets the spec does not name are ignored.
pub fn render_env(
    spec: &AppSpec,
    secrets: &std::collections::BTreeMap<String, String>,
) -> Result<String, RenderError> {
    let missing: Vec<String> = spec
        .secrets
        .iter()
        .filter(|k| !secrets.contains_key(*k))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(RenderError::MissingSecrets(missing));
    }
    let mut out = format!(
        "# Written by fleet-agent for app {}: env and secrets. root-only; do not edit.\n",
        spec.name
    );
    let sorted: BTreeMap<&str, &str> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (k, v) in sorted {
        out.push_str(&env_file_line(k, v));
    }
    let mut names: Vec<&String> = spec.secrets.iter().collect();
    names.sort();
    for k in names {
        let v = &secrets[k];
        // Secret values are not part of the spec, so they were never validated: same rule.
        check_env_value(k, v).map_err(|e| RenderError::BadSecret {
            key: k.clone(),
            reason: e.reason,
        })?;
        out.push_str(&env_file_line(k, v));
    }
    Ok(out)
}

/// Parses an env file this module wrote back into pairs (for the reload preflight, which
/// must see what the app sees).
pub fn parse_env(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((k, rest)) = line.split_once("=\"") else {
            continue;
        };
        let Some(body) = rest.strip_suffix('"') else {
            continue;
        };
        let mut v = String::with_capacity(body.len());
        let mut escaped = false;
        for c in body.chars() {
            if escaped {
                v.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else {
                v.push(c);
            }
        }
        out.push((k.to_owned(), v));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A valid minimal spec for app `shop`, plus `extra` TOML; shared by the agent's tests.
    pub(crate) fn spec(extra: &str) -> AppSpec {
        AppSpec::parse(&format!(
            "name = \"shop\"\nserver = \"gunicorn\"\nentry = \"app:application\"\n\
             listen = \"0.0.0.0:8000\"\nhealth = {{ path = \"/health\" }}\n{extra}"
        ))
        .unwrap()
    }

    fn layout() -> (PathBuf, PathBuf) {
        ("/var/lib/fleet/apps/shop".into(), "/etc/fleet/apps".into())
    }

    fn service(s: &AppSpec) -> String {
        let (app_dir, env_dir) = layout();
        render_service(
            s,
            &Layout {
                app_dir: &app_dir,
                env_dir: &env_dir,
                worker_dir: Path::new(asgi_worker::DIR),
            },
            &Runtime {
                gunicorn: SYSTEM_GUNICORN.into(),
                release: "r1".parse().unwrap(),
            },
            2,
        )
        .unwrap()
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn socket_unit_owns_the_listener() {
        let s = render_socket(&spec("")).unwrap();
        assert!(lines(&s).contains(&"ListenStream=0.0.0.0:8000"));
        assert!(lines(&s).contains(&"WantedBy=sockets.target"));
        let v6 = render_socket(&spec("").clone_with_listen("[::]:9000")).unwrap();
        assert!(lines(&v6).contains(&"ListenStream=[::]:9000"));
    }

    trait WithListen {
        fn clone_with_listen(&self, l: &str) -> AppSpec;
    }
    impl WithListen for AppSpec {
        fn clone_with_listen(&self, l: &str) -> AppSpec {
            let mut s = self.clone();
            s.listen = l.parse().unwrap();
            s
        }
    }

    #[test]
    fn gunicorn_service_has_every_setting_that_matters() {
        let s = service(&spec("graceful_timeout = \"20s\""));
        let l = lines(&s);
        for want in [
            "Type=notify",
            "User=shop",
            "Requires=fleet-app-shop.socket",
            "EnvironmentFile=/etc/fleet/apps/shop.env",
            "ExecStart=/usr/bin/gunicorn --chdir /var/lib/fleet/apps/shop/current --workers 5 \
             --graceful-timeout 20 --access-logfile /var/log/fleet/shop/access.log \
             --access-logformat \"fleet1 r1 %%(s)s %%(D)s \\\"%%(r)s\\\" %%(h)s %%(b)s %%(t)s\" \
             app:application",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "KillMode=mixed",
            "TimeoutStopSec=30s",
            "Restart=always",
            "RestartSec=500ms",
            "StartLimitIntervalSec=60s",
            "StartLimitBurst=5",
            "CPUAccounting=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "SystemCallFilter=@system-service",
            "WantedBy=multi-user.target",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("UvicornWorker"));
        assert!(
            !s.contains("~@privileged"),
            "breaks gunicorn's setuid/chown"
        );
    }

    #[test]
    fn uvicorn_runs_as_gunicorn_worker_class() {
        let mut sp = spec("workers = 3");
        sp.server = Server::Uvicorn;
        let s = service(&sp);
        assert!(
            s.contains(
                "--workers 3 --graceful-timeout 30 --pythonpath /var/lib/fleet/python \
                 --worker-class fleet_uvicorn_worker.UvicornWorker \
                 --access-logfile /var/log/fleet/shop/access.log --access-logformat "
            ),
            "{s}"
        );
        assert!(lines(&s).contains(&"LogsDirectory=fleet/shop"), "{s}");
        assert!(s.contains("Type=notify"));
    }

    #[test]
    fn the_access_line_names_the_release_the_master_was_started_with() {
        let (app_dir, env_dir) = layout();
        let render = |release: &str| {
            render_service(
                &spec(""),
                &Layout {
                    app_dir: &app_dir,
                    env_dir: &env_dir,
                    worker_dir: Path::new(asgi_worker::DIR),
                },
                &Runtime {
                    gunicorn: SYSTEM_GUNICORN.into(),
                    release: release.parse().unwrap(),
                },
                2,
            )
            .unwrap()
        };
        let (a, b) = (render("2026-01-02.1"), render("2026-01-03.1+b"));
        assert!(
            a.contains("--access-logformat \"fleet1 2026-01-02.1 %%(s)s "),
            "{a}"
        );
        assert!(b.contains("\"fleet1 2026-01-03.1+b %%(s)s "), "{b}");
        assert_ne!(
            a, b,
            "a new release is a new unit: the old master keeps its own"
        );
    }

    #[test]
    fn files_mode_writes_logs_under_var_log_fleet() {
        let s = service(&spec(
            "[logs]\nmode = \"files\"\nrate_limit_interval = \"10s\"\nrate_limit_burst = 200",
        ));
        let l = lines(&s);
        assert!(
            s.contains(
                "--graceful-timeout 30 --access-logfile /var/log/fleet/shop/access.log \
                 --access-logformat "
            ),
            "{s}"
        );
        assert!(
            s.contains(" --error-logfile /var/log/fleet/shop/error.log app:application\n"),
            "{s}"
        );
        for want in [
            "LogsDirectory=fleet/shop",
            "LogsDirectoryMode=0750",
            "LogRateLimitIntervalSec=10000ms",
            "LogRateLimitBurst=200",
        ] {
            assert!(l.contains(&want), "missing {want:?} in\n{s}");
        }
        // Journal mode: the error log stays in the journal; the access log is fleet's
        // request feed, in a file of its own (requests/mod.rs).
        let j = service(&spec(""));
        assert!(
            !j.contains("error-logfile") && !j.contains("LogRate"),
            "{j}"
        );
        assert!(
            j.contains(" --access-logfile /var/log/fleet/shop/access.log "),
            "{j}"
        );
        assert!(lines(&j).contains(&"LogsDirectory=fleet/shop"), "{j}");
        let j = service(&spec("[logs]\nrate_limit_burst = 0"));
        assert!(lines(&j).contains(&"LogRateLimitBurst=0"));
        assert!(!j.contains("error-logfile"));
    }

    #[test]
    fn values_are_escaped_or_refused_never_pasted_raw() {
        assert_eq!(exec_arg("x", "a b").unwrap(), "\"a b\"");
        assert_eq!(
            exec_arg("x", "50%$HOME\"\\").unwrap(),
            "\"50%%$$HOME\\\"\\\\\""
        );
        assert_eq!(exec_arg("x", "-rf").unwrap(), "\"-rf\"");
        assert!(exec_arg("x", "a\nExecStartPre=/bin/sh").is_err());
        assert_eq!(setting("x", "50%").unwrap(), "50%%");
        assert!(setting("x", "a\nb").is_err());
        assert!(setting("x", "a\\").is_err());
        // A spec that slipped past validation still cannot add a line.
        let mut sp = spec("");
        sp.user = "shop\nExecStartPre=/bin/sh".into();
        let (app_dir, env_dir) = layout();
        let r = render_service(
            &sp,
            &Layout {
                app_dir: &app_dir,
                env_dir: &env_dir,
                worker_dir: Path::new(asgi_worker::DIR),
            },
            &Runtime {
                gunicorn: SYSTEM_GUNICORN.into(),
                release: "r1".parse().unwrap(),
            },
            1,
        );
        assert!(matches!(r, Err(RenderError::Unsafe { field: "user", .. })));
    }

    #[test]
    fn every_line_is_a_section_a_comment_or_a_known_setting() {
        let s = service(&spec("env = { A = \"x\" }"));
        for line in s.lines() {
            assert!(
                line.is_empty()
                    || line.starts_with('#')
                    || line.starts_with('[')
                    || line
                        .split_once('=')
                        .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_alphanumeric())),
                "odd line {line:?}"
            );
        }
        // Env values go to the env file only.
        assert!(!s.contains("A=x"));
    }

    #[test]
    fn env_file_escapes_values_and_requires_secrets() {
        let sp = spec("env = { B = \"a\\\"$x\", A = \"1\" }\nsecrets = [\"TOKEN\"]");
        let err = render_env(&sp, &BTreeMap::new()).unwrap_err();
        assert_eq!(err, RenderError::MissingSecrets(vec!["TOKEN".into()]));
        let secrets = BTreeMap::from([
            ("TOKEN".to_string(), "s3cr`t".to_string()),
            ("OTHER".to_string(), "ignored".to_string()),
        ]);
        let text = render_env(&sp, &secrets).unwrap();
        let body: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(body, ["A=\"1\"", "B=\"a\\\"\\$x\"", "TOKEN=\"s3cr\\`t\""]);
        assert!(!text.contains("ignored"));
        assert_eq!(
            parse_env(&text),
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "a\"$x".to_string()),
                ("TOKEN".to_string(), "s3cr`t".to_string()),
            ]
        );
        let bad = BTreeMap::from([("TOKEN".to_string(), "a\nEvil=1".to_string())]);
        let err = render_env(&sp, &bad).unwrap_err();
        assert!(matches!(err, RenderError::BadSecret { ref key, .. } if key == "TOKEN"));
        assert!(!err.to_string().contains("Evil"), "never echo a secret");
    }
}
