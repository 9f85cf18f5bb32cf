//! The app spec (TOML) and release versions: parsed and validated here, once, by the same
//! code in fleetctl (before sending), the controller (before storing) and the agent
//! (before touching the host). Every value that later lands in a path, a unit file or an
//! `EnvironmentFile=` is checked or escaped here, and every error names the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

mod analysis;
mod env;
mod gates;
mod host;
mod logs;
mod names;
#[cfg(test)]
mod tests;

pub use analysis::{check_flag, check_min_requests, check_window, finest_bucket_step, Analysis};
pub use env::{check_env_key, check_env_value, env_file_line};
pub use gates::{gate_bounds, promql_duration, PromGate, PrometheusUrl, MAX_GATES, PLACEHOLDERS};
pub use host::{check_listen, check_user, RESERVED_PORTS, RESERVED_USERS};
pub use logs::{LogMode, Logs, RotatePeriod, Rotation};
pub use names::{AppName, Version};

use analysis::{check_rollout, RawRollout};
use logs::{check_logs, RawLogs};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    Gunicorn,
    Uvicorn,
}

impl Server {
    pub fn as_str(self) -> &'static str {
        match self {
            Server::Gunicorn => "gunicorn",
            Server::Uvicorn => "uvicorn",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub path: String,
    pub timeout: Duration,
    pub interval: Duration,
    /// Consecutive failed probes before the app counts as unhealthy.
    pub failures: u32,
}

/// A validated app spec.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSpec {
    pub name: AppName,
    pub server: Server,
    /// `module.path:callable`
    pub entry: String,
    pub listen: SocketAddr,
    /// `None`: 2 × cores + 1, resolved on each host.
    pub workers: Option<u32>,
    pub health: Health,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub user: String,
    pub releases_kept: u32,
    pub graceful_timeout: Duration,
    pub group: Option<String>,
    pub logs: Logs,
    /// Run once per rollout on one host, with the new release, before any host restarts
    /// (migrations). An argv: no shell reads it.
    pub pre_start: Vec<String>,
    pub pre_start_timeout: Duration,
    /// `[rollout.analysis]`: judge each batch's traffic; `None`: the health gate only.
    pub analysis: Option<Analysis>,
    /// `[[rollout.analysis.query]]`: PromQL gates judged with the thresholds (only while
    /// `analysis` is on).
    pub gates: Vec<PromGate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: String,
    timeout: Option<String>,
    interval: Option<String>,
    failures: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    server: Server,
    entry: String,
    listen: String,
    workers: Option<u32>,
    health: RawHealth,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    secrets: Vec<String>,
    user: Option<String>,
    releases_kept: Option<u32>,
    graceful_timeout: Option<String>,
    group: Option<String>,
    #[serde(default)]
    logs: RawLogs,
    #[serde(default)]
    pre_start: Vec<String>,
    pre_start_timeout: Option<String>,
    rollout: Option<RawRollout>,
}

/// Size bounds: a spec is configuration, not data.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
const MAX_ENV_VARS: usize = 256;

fn duration(
    field: &str,
    value: Option<&str>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, SpecError> {
    let d = match value {
        None => default,
        Some(v) => humantime::parse_duration(v).map_err(|_| {
            err(
                field,
                format!("{v:?} is not a duration (examples: 500ms, 2s, 1m)"),
            )
        })?,
    };
    if d < min || d > max {
        return Err(err(
            field,
            format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

fn check_entry(entry: &str) -> Result<(), SpecError> {
    let ok = entry.len() <= 256
        && entry.split_once(':').is_some_and(|(module, callable)| {
            module.split('.').all(is_ident) && is_ident(callable)
        });
    if ok {
        Ok(())
    } else {
        Err(err(
            "entry",
            format!("{entry:?} must be module.path:callable (e.g. app:application)"),
        ))
    }
}

fn check_health_path(path: &str) -> Result<(), SpecError> {
    let ok = path.starts_with('/')
        && path.len() <= 256
        && path
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '%' && c != '\\');
    if ok {
        Ok(())
    } else {
        Err(err("health.path", format!("{path:?} must start with '/' and hold only printable ASCII without spaces, '%' or '\\'")))
    }
}

const MAX_PRE_START_ARGS: usize = 64;
const MAX_PRE_START_ARG: usize = 1024;

/// The hook's argv lands on a systemd command line: no empty argument (an empty argv
/// would run nothing), no control characters, and a program that is a plain name (looked
/// up in the release's venv, then the system) or a path, never an option.
fn check_pre_start(argv: &[String]) -> Result<(), SpecError> {
    if argv.len() > MAX_PRE_START_ARGS {
        return Err(err(
            "pre_start",
            format!("more than {MAX_PRE_START_ARGS} arguments"),
        ));
    }
    for a in argv {
        if a.is_empty() || a.len() > MAX_PRE_START_ARG || a.chars().any(|c| c.is_control()) {
            return Err(err(
                "pre_start",
                format!("{a:?}: every argument must be 1 to {MAX_PRE_START_ARG} bytes without control characters"),
            ));
        }
    }
    if let Some(program) = argv.first() {
        let ok = !program.starts_with('-')
            && program
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./+-".contains(c))
            && !program.split('/').any(|part| part == "..");
        if !ok {
            return Err(err(
                "pre_start",
                format!("program {program:?} must be a name (python) or a path without '..' (bin/migrate)"),
            ));
        }
    }
    Ok(())
}

impl AppSpec {
    /// Parses and validates a spec as fleetctl and the controller must: unknown fields are
    /// errors (a typo is never silently ignored).
    pub fn parse(text: &str) -> Result<AppSpec, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(err("spec", format!("larger than {MAX_SPEC_BYTES} bytes")));
        }
        let raw: RawSpec = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_owned();
            err("spec", format!("invalid TOML: {msg}"))
        })?;
        Self::validate(raw)
    }

    fn validate(raw: RawSpec) -> Result<AppSpec, SpecError> {
        let name: AppName = raw.name.parse()?;
        check_entry(&raw.entry)?;
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            err(
                "listen",
                format!("{:?} must be IP:PORT (e.g. 0.0.0.0:8000)", raw.listen),
            )
        })?;
        check_listen(&listen)?;
        if let Some(w) = raw.workers {
            if !(1..=256).contains(&w) {
                return Err(err("workers", "must be between 1 and 256"));
            }
        }
        check_health_path(&raw.health.path)?;
        let health = Health {
            path: raw.health.path,
            timeout: duration(
                "health.timeout",
                raw.health.timeout.as_deref(),
                Duration::from_secs(2),
                Duration::from_millis(100),
                Duration::from_secs(60),
            )?,
            interval: duration(
                "health.interval",
                raw.health.interval.as_deref(),
                Duration::from_secs(2),
                Duration::from_millis(200),
                Duration::from_secs(300),
            )?,
            failures: raw.health.failures.unwrap_or(3),
        };
        if !(1..=100).contains(&health.failures) {
            return Err(err("health.failures", "must be between 1 and 100"));
        }
        if raw.env.len() > MAX_ENV_VARS {
            return Err(err("env", format!("more than {MAX_ENV_VARS} variables")));
        }
        for (k, v) in &raw.env {
            check_env_key("env", k)?;
            check_env_value(&format!("env.{k}"), v)?;
        }
        for s in &raw.secrets {
            check_env_key("secrets", s)?;
            if raw.env.contains_key(s) {
                return Err(err(
                    "secrets",
                    format!("{s} is also set in env: a name is either plain env or a secret"),
                ));
            }
        }
        let mut sorted = raw.secrets.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != raw.secrets.len() {
            return Err(err("secrets", "names must be unique"));
        }
        let user = raw.user.unwrap_or_else(|| name.to_string());
        check_user(&user)?;
        let releases_kept = raw.releases_kept.unwrap_or(5);
        if !(1..=50).contains(&releases_kept) {
            return Err(err("releases_kept", "must be between 1 and 50"));
        }
        let graceful_timeout = duration(
            "graceful_timeout",
            raw.graceful_timeout.as_deref(),
            Duration::from_secs(30),
            Duration::from_secs(1),
            Duration::from_secs(600),
        )?;
        if let Some(g) = &raw.group {
            g.parse::<AppName>()
                .map_err(|_| err("group", format!("{g:?} must match [a-z][a-z0-9-]{{0,30}}")))?;
        }
        check_pre_start(&raw.pre_start)?;
        if raw.pre_start.is_empty() && raw.pre_start_timeout.is_some() {
            return Err(err(
                "pre_start_timeout",
                "set without pre_start: there is no hook to bound",
            ));
        }
        let pre_start_timeout = duration(
            "pre_start_timeout",
            raw.pre_start_timeout.as_deref(),
            Duration::from_secs(300),
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        let (analysis, gates) = check_rollout(raw.rollout)?;
        Ok(AppSpec {
            name,
            server: raw.server,
            entry: raw.entry,
            listen,
            workers: raw.workers,
            health,
            env: raw.env,
            secrets: raw.secrets,
            user,
            releases_kept,
            graceful_timeout,
            group: raw.group,
            logs: check_logs(raw.logs)?,
            pre_start: raw.pre_start,
            pre_start_timeout,
            analysis,
            gates,
        })
    }

    /// Workers for a host with `cores` CPUs.
    pub fn workers_for(&self, cores: u32) -> u32 {
        self.workers.unwrap_or(2 * cores.max(1) + 1)
    }
}
