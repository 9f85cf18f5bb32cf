//! The app spec (TOML) and release versions: parsed and validated here, once, by the same
//! code in fleetctl (before sending), the controller (before storing) and the agent
//! (before touching the host). Every value that later lands in a path, a unit file or an
//! `EnvironmentFile=` is checked or escaped here, and every error names the field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

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

/// An app name: `[a-z][a-z0-9-]{0,30}`, not ending in '-'. Used in unit names and paths.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(String);

impl AppName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AppName {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let ok = (1..=31).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(AppName(s.to_owned()))
        } else {
            Err(err(
                "name",
                format!("{s:?} must match [a-z][a-z0-9-]{{0,30}} and not end with '-'"),
            ))
        }
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A release version: `[A-Za-z0-9][A-Za-z0-9._+-]{0,63}` and never `.`/`..`-like, so it
/// is safe as a directory name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(String);

impl Version {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Version {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let ok = (1..=64).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && !s.contains("..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
        if ok {
            Ok(Version(s.to_owned()))
        } else {
            Err(err(
                "version",
                format!("{s:?} must match [A-Za-z0-9][A-Za-z0-9._+-]{{0,63}} without '..'"),
            ))
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// Where the app's access and error logs go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    /// Gunicorn's stderr into the journal (its default: no access log).
    #[default]
    Journal,
    /// `access.log` and `error.log` under `/var/log/fleet/<app>/`, rotated by logrotate.
    Files,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotatePeriod {
    Daily,
    Weekly,
    Monthly,
}

impl RotatePeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            RotatePeriod::Daily => "daily",
            RotatePeriod::Weekly => "weekly",
            RotatePeriod::Monthly => "monthly",
        }
    }
}

/// Rotation of the log files (`mode = "files"` only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// `None` with a `max_size`: rotate by size only.
    pub period: Option<RotatePeriod>,
    /// Bytes; a file this large is rotated early.
    pub max_size: Option<u64>,
    /// Rotated files kept.
    pub keep: u32,
    pub compress: bool,
}

/// The spec's `[logs]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Logs {
    pub mode: LogMode,
    /// `Some` exactly when `mode` is `Files`.
    pub rotation: Option<Rotation>,
    /// journald's per-unit `LogRateLimitIntervalSec=`; zero turns the limit off.
    pub rate_limit_interval: Option<Duration>,
    /// journald's per-unit `LogRateLimitBurst=`; zero turns the limit off.
    pub rate_limit_burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: String,
    timeout: Option<String>,
    interval: Option<String>,
    failures: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    #[serde(default)]
    mode: LogMode,
    period: Option<RotatePeriod>,
    max_size: Option<String>,
    keep: Option<u32>,
    compress: Option<bool>,
    rate_limit_interval: Option<String>,
    rate_limit_burst: Option<u32>,
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
}

/// Size bounds: a spec is configuration, not data.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
const MAX_ENV_VALUE: usize = 8 * 1024;
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

/// Environment variable names as systemd and shells accept them.
pub fn check_env_key(field: &str, key: &str) -> Result<(), SpecError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(err(field, format!("{key:?} must match [A-Z_][A-Z0-9_]*")))
    }
}

/// Values end up in an `EnvironmentFile=`: a line break or NUL could add settings of its
/// own, so they are refused; everything else is escaped by [`env_file_line`].
pub fn check_env_value(field: &str, value: &str) -> Result<(), SpecError> {
    if value.len() > MAX_ENV_VALUE {
        return Err(err(field, format!("longer than {MAX_ENV_VALUE} bytes")));
    }
    if value.chars().any(|c| c == '\n' || c == '\r' || c == '\0') {
        return Err(err(field, "must not contain line breaks or NUL"));
    }
    Ok(())
}

/// One `KEY="value"` line for a systemd `EnvironmentFile=`, with `\`, `"`, `$` and
/// backquote escaped so the value reaches the app byte for byte.
pub fn env_file_line(key: &str, value: &str) -> String {
    let mut out = String::with_capacity(key.len() + value.len() + 4);
    out.push_str(key);
    out.push_str("=\"");
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str("\"\n");
    out
}

pub fn check_user(user: &str) -> Result<(), SpecError> {
    let ok = (1..=32).contains(&user.len())
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(err(
            "user",
            format!("{user:?} must match [a-z_][a-z0-9_-]{{0,31}}"),
        ));
    }
    if user == "root" {
        return Err(err(
            "user",
            "apps never run as root: name an unprivileged user (it is created if missing)",
        ));
    }
    if RESERVED_USERS.contains(&user) || user.starts_with('_') || user.starts_with("systemd-") {
        return Err(err(
            "user",
            format!(
                "{user:?} is a system account: name a user of the app's own (fleet creates it; \
                 the agent also refuses any existing account it did not create for this app)"
            ),
        ));
    }
    Ok(())
}

/// Accounts an app may never run as, whether or not they exist on a host yet: Debian's
/// static system users (base-passwd), the ones its common services create, and fleet's
/// own. Names starting with `_` or `systemd-` are refused too (Debian's convention for
/// system accounts). The agent adds the rule that matters on a real host: an existing
/// account is only used if fleet created it for this app.
pub const RESERVED_USERS: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "nogroup",
    "messagebus",
    "sshd",
    "polkitd",
    "syslog",
    "systemd",
    "tss",
    "uuidd",
    "dnsmasq",
    "avahi",
    "colord",
    "postgres",
    "mysql",
    "redis",
    "nginx",
    "apache",
    "memcache",
    "ntp",
    "chrony",
    "postfix",
    "dovecot",
    "bind",
    "statd",
    "rpc",
    "tcpdump",
    "usbmux",
    "fleet",
    "fleet-agent",
    "fleet-controller",
    "prometheus",
    "node-exporter",
    "admin",
    "operator",
    "adm",
    "staff",
    "sudo",
    "wheel",
    "shadow",
    "disk",
    "kmem",
    "tty",
    "docker",
];

/// Ports an app may never listen on: SSH, the controller's gRPC and HTTP ports and the
/// agent's default metrics port. A host's own configured metrics port is checked by its
/// agent as well.
pub const RESERVED_PORTS: &[(u16, &str)] = &[
    (22, "SSH"),
    (7443, "the fleet controller's gRPC port"),
    (7444, "the fleet controller's HTTP port (/metrics, /v1/sd)"),
    (9437, "the fleet agent's metrics port"),
];

/// An app's listen address: a unicast address (or the unspecified one, for "every
/// address") and a port nothing of the host's own needs.
pub fn check_listen(listen: &SocketAddr) -> Result<(), SpecError> {
    if listen.port() == 0 {
        return Err(err("listen", "port must not be 0"));
    }
    if let Some((_, what)) = RESERVED_PORTS.iter().find(|(p, _)| *p == listen.port()) {
        return Err(err(
            "listen",
            format!(
                "port {} is reserved for {what}: pick another port",
                listen.port()
            ),
        ));
    }
    let ip = listen.ip();
    if ip.is_multicast() {
        return Err(err(
            "listen",
            format!("{ip} is a multicast address: listen on a unicast address or 0.0.0.0"),
        ));
    }
    if let std::net::IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return Err(err(
                "listen",
                "255.255.255.255 is the broadcast address: listen on a unicast address or 0.0.0.0",
            ));
        }
    }
    Ok(())
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

/// Bounds of `logs.max_size`: below 1 MiB rotation churns, above 64 GiB is not a log.
const MIN_LOG_SIZE: u64 = 1 << 20;
const MAX_LOG_SIZE: u64 = 64 << 30;
const DEFAULT_KEEP: u32 = 7;
const MAX_KEEP: u32 = 1000;
const MAX_RATE_BURST: u32 = 1_000_000;

/// `100M`, `512K`, `2G` or plain bytes (binary units, as logrotate reads them).
fn parse_size(field: &str, v: &str) -> Result<u64, SpecError> {
    let bad = || {
        err(
            field,
            format!("{v:?} is not a size (examples: 100M, 512K, 1G)"),
        )
    };
    let (digits, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, ""),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if !(MIN_LOG_SIZE..=MAX_LOG_SIZE).contains(&bytes) {
        return Err(err(field, "must be between 1M and 64G"));
    }
    Ok(bytes)
}

fn check_logs(raw: RawLogs) -> Result<Logs, SpecError> {
    let rotation = match raw.mode {
        LogMode::Journal => {
            let set = [
                ("period", raw.period.is_some()),
                ("max_size", raw.max_size.is_some()),
                ("keep", raw.keep.is_some()),
                ("compress", raw.compress.is_some()),
            ];
            if let Some((field, _)) = set.iter().find(|(_, s)| *s) {
                return Err(err(
                    format!("logs.{field}"),
                    "rotation settings need mode = \"files\" (journald rotates the journal itself)",
                ));
            }
            None
        }
        LogMode::Files => {
            let max_size = raw
                .max_size
                .as_deref()
                .map(|v| parse_size("logs.max_size", v))
                .transpose()?;
            let keep = raw.keep.unwrap_or(DEFAULT_KEEP);
            if !(1..=MAX_KEEP).contains(&keep) {
                return Err(err(
                    "logs.keep",
                    format!("must be between 1 and {MAX_KEEP}"),
                ));
            }
            Some(Rotation {
                // Neither set: daily, so files never grow without bound.
                period: raw.period.or(if max_size.is_none() {
                    Some(RotatePeriod::Daily)
                } else {
                    None
                }),
                max_size,
                keep,
                compress: raw.compress.unwrap_or(true),
            })
        }
    };
    let rate_limit_interval = raw
        .rate_limit_interval
        .as_deref()
        .map(|v| {
            duration(
                "logs.rate_limit_interval",
                Some(v),
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_secs(3600),
            )
        })
        .transpose()?;
    if let Some(b) = raw.rate_limit_burst {
        if b > MAX_RATE_BURST {
            return Err(err(
                "logs.rate_limit_burst",
                format!("must be at most {MAX_RATE_BURST} (0 turns the limit off)"),
            ));
        }
    }
    Ok(Logs {
        mode: raw.mode,
        rotation,
        rate_limit_interval,
        rate_limit_burst: raw.rate_limit_burst,
    })
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
        })
    }

    /// Workers for a host with `cores` CPUs.
    pub fn workers_for(&self, cores: u32) -> u32 {
        self.workers.unwrap_or(2 * cores.max(1) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
name = "shop"
server = "gunicorn"
entry = "app:application"
listen = "0.0.0.0:8000"
health = { path = "/health", timeout = "2s" }
"#;

    #[test]
    fn minimal_spec_gets_sane_defaults() {
        let s = AppSpec::parse(MIN).unwrap();
        assert_eq!(s.name.as_str(), "shop");
        assert_eq!(s.user, "shop");
        assert_eq!(s.releases_kept, 5);
        assert_eq!(s.workers_for(2), 5);
        assert_eq!(s.health.failures, 3);
    }

    fn with(extra: &str) -> Result<AppSpec, SpecError> {
        AppSpec::parse(&format!("{MIN}{extra}"))
    }

    fn replace(from: &str, to: &str) -> Result<AppSpec, SpecError> {
        AppSpec::parse(&MIN.replace(from, to))
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(replace("\"shop\"", "\"Shop\"").unwrap_err().field, "name");
        assert_eq!(
            replace("\"shop\"", "\"shop\\nExecStartPre=/bin/sh\"")
                .unwrap_err()
                .field,
            "name"
        );
        assert_eq!(
            replace("app:application", "app;rm -rf /:x")
                .unwrap_err()
                .field,
            "entry"
        );
        assert_eq!(replace("0.0.0.0:8000", "8000").unwrap_err().field, "listen");
        assert_eq!(
            replace("/health", "health").unwrap_err().field,
            "health.path"
        );
        assert_eq!(
            replace("\"2s\"", "\"soon\"").unwrap_err().field,
            "health.timeout"
        );
        assert_eq!(with("workers = 0").unwrap_err().field, "workers");
        assert_eq!(with("user = \"root\"").unwrap_err().field, "user");
        assert_eq!(replace("8000", "22").unwrap_err().field, "listen");
        assert_eq!(
            with("releases_kept = 0").unwrap_err().field,
            "releases_kept"
        );
        assert!(with("colour = \"blue\"")
            .unwrap_err()
            .reason
            .contains("colour"));
        assert!(replace("gunicorn", "waitress").is_err());
    }

    #[test]
    fn pre_start_is_a_checked_argv_with_a_bounded_timeout() {
        let s = with("pre_start = [\"python\", \"-m\", \"app.migrate\"]").unwrap();
        assert_eq!(s.pre_start, ["python", "-m", "app.migrate"]);
        assert_eq!(s.pre_start_timeout, Duration::from_secs(300));
        let s = with("pre_start = [\"bin/migrate\"]\npre_start_timeout = \"30s\"").unwrap();
        assert_eq!(s.pre_start_timeout, Duration::from_secs(30));
        assert!(AppSpec::parse(MIN).unwrap().pre_start.is_empty());
        for bad in [
            "pre_start = \"python -m migrate\"",
            "pre_start = [\"\"]",
            "pre_start = [\"python\", \"\"]",
            "pre_start = [\"python\", \"a\\nb\"]",
            "pre_start = [\"-python\"]",
            "pre_start = [\"../../bin/sh\"]",
            "pre_start = [\"sh -c x\"]",
            "pre_start_timeout = \"1m\"",
            "pre_start = [\"python\"]\npre_start_timeout = \"2h\"",
        ] {
            let e = with(bad).unwrap_err();
            assert!(
                e.field.starts_with("pre_start") || e.field == "spec",
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn env_that_would_inject_unit_lines_is_refused() {
        let e = with("env = { A = \"x\\nExecStartPre=/bin/sh -c evil\" }").unwrap_err();
        assert_eq!(e.field, "env.A");
        assert_eq!(with("env = { a = \"x\" }").unwrap_err().field, "env");
        assert_eq!(with("env = { \"A B\" = \"x\" }").unwrap_err().field, "env");
        assert_eq!(with("secrets = [\"db\"]").unwrap_err().field, "secrets");
        assert_eq!(
            with("env = { DB = \"x\" }\nsecrets = [\"DB\"]")
                .unwrap_err()
                .field,
            "secrets"
        );
    }

    #[test]
    fn env_values_are_escaped_for_systemd() {
        assert_eq!(env_file_line("A", "plain"), "A=\"plain\"\n");
        assert_eq!(
            env_file_line("A", r#"q"b\s$HOME`x`"#),
            "A=\"q\\\"b\\\\s\\$HOME\\`x\\`\"\n"
        );
    }

    #[test]
    fn logs_default_to_the_journal() {
        let s = AppSpec::parse(MIN).unwrap();
        assert_eq!(s.logs, Logs::default());
        assert_eq!(s.logs.mode, LogMode::Journal);
        let s = with("[logs]\nrate_limit_interval = \"10s\"\nrate_limit_burst = 500").unwrap();
        assert_eq!(s.logs.mode, LogMode::Journal);
        assert_eq!(s.logs.rate_limit_interval, Some(Duration::from_secs(10)));
        assert_eq!(s.logs.rate_limit_burst, Some(500));
        assert!(s.logs.rotation.is_none());
    }

    #[test]
    fn files_mode_gets_bounded_rotation() {
        let s = with("[logs]\nmode = \"files\"").unwrap();
        assert_eq!(
            s.logs.rotation,
            Some(Rotation {
                period: Some(RotatePeriod::Daily),
                max_size: None,
                keep: 7,
                compress: true,
            })
        );
        let s = with("[logs]\nmode = \"files\"\nmax_size = \"100M\"\nkeep = 3\ncompress = false")
            .unwrap();
        let r = s.logs.rotation.unwrap();
        assert_eq!(r.period, None, "size only");
        assert_eq!(r.max_size, Some(100 << 20));
        assert_eq!((r.keep, r.compress), (3, false));
        let s = with("[logs]\nmode = \"files\"\nperiod = \"weekly\"\nmax_size = \"2G\"").unwrap();
        let r = s.logs.rotation.unwrap();
        assert_eq!(r.period, Some(RotatePeriod::Weekly));
        assert_eq!(r.max_size, Some(2 << 30));
    }

    #[test]
    fn bad_log_settings_name_the_field() {
        let field = |extra: &str| with(&format!("[logs]\n{extra}")).unwrap_err().field;
        assert_eq!(field("mode = \"syslog\""), "spec");
        assert_eq!(field("period = \"daily\""), "logs.period");
        assert_eq!(field("keep = 3"), "logs.keep");
        let e = with("[logs]\nmode = \"files\"\nperiod = \"hourly\"").unwrap_err();
        assert_eq!(e.field, "spec");
        assert!(
            e.reason.contains("`hourly`, expected one of `daily`"),
            "{e}"
        );
        assert_eq!(field("mode = \"files\"\nkeep = 0"), "logs.keep");
        assert_eq!(field("mode = \"files\"\nkeep = 1001"), "logs.keep");
        for size in [
            "100",
            "100MB",
            "1T",
            "-1M",
            "M",
            "99999999999999999999G",
            "65G",
            "",
        ] {
            assert_eq!(
                field(&format!("mode = \"files\"\nmax_size = \"{size}\"")),
                "logs.max_size",
                "{size:?}"
            );
        }
        assert_eq!(
            field("rate_limit_interval = \"2h\""),
            "logs.rate_limit_interval"
        );
        assert_eq!(
            field("rate_limit_interval = \"often\""),
            "logs.rate_limit_interval"
        );
        assert_eq!(field("rate_limit_burst = 2000000"), "logs.rate_limit_burst");
        assert!(with("[logs]\nmode = \"files\"\nrotate = 3")
            .unwrap_err()
            .reason
            .contains("rotate"));
    }

    #[test]
    fn system_accounts_are_refused_as_users() {
        for user in [
            "root",
            "daemon",
            "www-data",
            "nobody",
            "bin",
            "sshd",
            "_apt",
            "_chrony",
            "systemd-network",
            "messagebus",
            "postgres",
            "fleet",
        ] {
            let e = with(&format!("user = \"{user}\"")).unwrap_err();
            assert_eq!(e.field, "user", "{user}");
        }
        assert!(with("user = \"daemon\"")
            .unwrap_err()
            .reason
            .contains("system account"));
        assert_eq!(with("user = \"shop-web\"").unwrap().user, "shop-web");
        // The default (the app's name) follows the same rule.
        let daemon = MIN.replace("name = \"shop\"", "name = \"daemon\"");
        assert_eq!(AppSpec::parse(&daemon).unwrap_err().field, "user");
    }

    #[test]
    fn listen_refuses_reserved_ports_broadcast_and_multicast() {
        for addr in [
            "0.0.0.0:22",
            "0.0.0.0:7443",
            "127.0.0.1:7444",
            "[::]:9437",
            "0.0.0.0:0",
            "255.255.255.255:8000",
            "224.0.0.1:8000",
            "239.255.255.250:8000",
            "[ff02::1]:8000",
            "[ff05::2]:8000",
        ] {
            let e = replace("0.0.0.0:8000", addr).unwrap_err();
            assert_eq!(e.field, "listen", "{addr}");
        }
        assert!(replace("0.0.0.0:8000", "0.0.0.0:22")
            .unwrap_err()
            .reason
            .contains("SSH"));
        for ok in [
            "0.0.0.0:8000",
            "198.18.0.11:80",
            "[::]:8443",
            "127.0.0.1:2222",
        ] {
            assert_eq!(replace("0.0.0.0:8000", ok).unwrap().listen.to_string(), ok);
        }
    }

    #[test]
    fn versions_are_safe_directory_names() {
        for ok in ["1.4.2", "2024-01-01", "v1+build.7", "a"] {
            assert!(ok.parse::<Version>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "1..2",
            "a b",
            &"1".repeat(65),
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }
}
