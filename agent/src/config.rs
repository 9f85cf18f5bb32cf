//! Settings of `fleet-agent run`: an optional TOML file, overridden by flags and env, and
//! validated once here so the rest of the agent only sees sane values.
//!
//! ```toml
//! heartbeat_interval = "10s"   # 100ms ..= 1h
//! max_backoff = "30s"          # 1s ..= 1h, cap of the reconnect delay
//! reconnect_spread = "5s"      # 0s ..= 5m, window of the first retry after a lost session
//! metrics_listen = "0.0.0.0:9437"  # Prometheus /metrics; "off" (or "") disables it
//!
//! # Optional: serve /metrics over TLS and accept only scrapers whose client certificate
//! # chains to `client_ca` (Prometheus' `tls_config` with `cert_file`/`key_file`).
//! [metrics_tls]
//! cert = "/etc/fleet/metrics.crt"       # PEM chain, leaf first
//! key = "/etc/fleet/metrics.key"        # PEM private key
//! client_ca = "/etc/fleet/scraper-ca.crt"
//!
//! # Optional: node collector settings under node_exporter's flag names (metrics/node.rs).
//! [node_metrics]
//! netdev_device_exclude = "^(lo|veth.*)$"
//! systemd_unit_states = "all"
//! ```

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

pub use crate::metrics::tls::MetricsTls;
use crate::metrics::{NodeSettings, DEFAULT_PORT};
use fleet_proto::reconnect as backoff;

pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
const HEARTBEAT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));
const MAX_BACKOFF_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
const SPREAD_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(300));

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub max_backoff: Duration,
    /// The first retry after a lost session is drawn from [0, this]: spreads the herd of a
    /// controller restart.
    pub reconnect_spread: Duration,
    pub metrics_listen: MetricsListen,
    /// `None`: plain HTTP, like node_exporter.
    pub metrics_tls: Option<MetricsTls>,
    /// `[node_metrics]`: the node collectors' filters and paths, regexes validated.
    pub node_metrics: NodeSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval: DEFAULT_HEARTBEAT,
            max_backoff: backoff::DEFAULT_MAX,
            reconnect_spread: backoff::DEFAULT_SPREAD,
            metrics_listen: MetricsListen::default(),
            metrics_tls: None,
            node_metrics: NodeSettings::default(),
        }
    }
}

/// Where `/metrics` listens, or `off`. All interfaces by default, like node_exporter:
/// Prometheus scrapes from another machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl Default for MetricsListen {
    fn default() -> Self {
        MetricsListen(Some(SocketAddr::from((
            Ipv4Addr::UNSPECIFIED,
            DEFAULT_PORT,
        ))))
    }
}

impl FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" | "off" => Ok(MetricsListen(None)),
            addr => addr.parse().map(|a| MetricsListen(Some(a))).map_err(|_| {
                "not an address: write IP:PORT (e.g. \"0.0.0.0:9437\" or \"[::]:9437\") or \"off\""
                    .to_owned()
            }),
        }
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("off"),
        }
    }
}

/// The file as written; durations stay strings until validated so errors can name them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    heartbeat_interval: Option<String>,
    max_backoff: Option<String>,
    reconnect_spread: Option<String>,
    metrics_listen: Option<String>,
    metrics_tls: Option<MetricsTls>,
    node_metrics: Option<NodeSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: {source}")]
    NodeMetrics {
        path: PathBuf,
        source: crate::metrics::node::BadRegex,
    },
    #[error("{origin}: {field} = {value:?}: {reason}")]
    Field {
        origin: String,
        field: &'static str,
        value: String,
        reason: String,
    },
}

/// Builds the settings: defaults, then the file (if any), then `heartbeat_flag` (from
/// `--heartbeat-interval` or `FLEET_AGENT_HEARTBEAT_INTERVAL`) and `metrics_flag` (from
/// `--metrics-listen` or `FLEET_AGENT_METRICS_LISTEN`, already parsed by clap).
pub fn resolve(
    file: Option<&Path>,
    heartbeat_flag: Option<Duration>,
    metrics_flag: Option<MetricsListen>,
) -> Result<Settings, ConfigError> {
    let mut settings = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            from_toml(&text, path)?
        }
        None => Settings::default(),
    };
    if let Some(interval) = heartbeat_flag {
        check_range(
            "--heartbeat-interval",
            "heartbeat_interval",
            interval,
            HEARTBEAT_RANGE,
        )?;
        settings.heartbeat_interval = interval;
    }
    if let Some(listen) = metrics_flag {
        settings.metrics_listen = listen;
    }
    Ok(settings)
}

/// Parses and validates a config file's text; `path` only labels errors.
pub fn from_toml(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    let raw: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let origin = format!("config file {}", path.display());
    let mut settings = Settings::default();
    if let Some(v) = raw.heartbeat_interval {
        settings.heartbeat_interval = duration(&origin, "heartbeat_interval", &v, HEARTBEAT_RANGE)?;
    }
    if let Some(v) = raw.max_backoff {
        settings.max_backoff = duration(&origin, "max_backoff", &v, MAX_BACKOFF_RANGE)?;
    }
    if let Some(v) = raw.reconnect_spread {
        settings.reconnect_spread = duration(&origin, "reconnect_spread", &v, SPREAD_RANGE)?;
    }
    if let Some(v) = raw.metrics_listen {
        settings.metrics_listen = v.parse().map_err(|reason| ConfigError::Field {
            origin: origin.clone(),
            field: "metrics_listen",
            value: v.clone(),
            reason,
        })?;
    }
    settings.metrics_tls = raw.metrics_tls;
    if let Some(node) = raw.node_metrics {
        node.validate().map_err(|source| ConfigError::NodeMetrics {
            path: path.to_owned(),
            source,
        })?;
        settings.node_metrics = node;
    }
    Ok(settings)
}

fn duration(
    origin: &str,
    field: &'static str,
    value: &str,
    range: (Duration, Duration),
) -> Result<Duration, ConfigError> {
    let parsed = humantime::parse_duration(value).map_err(|e| ConfigError::Field {
        origin: origin.to_owned(),
        field,
        value: value.to_owned(),
        reason: format!("not a duration ({e}); write e.g. \"10s\" or \"1m\""),
    })?;
    check_range(origin, field, parsed, range)?;
    Ok(parsed)
}

fn check_range(
    origin: &str,
    field: &'static str,
    value: Duration,
    (min, max): (Duration, Duration),
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Field {
            origin: origin.to_owned(),
            field,
            value: humantime::format_duration(value).to_string(),
            reason: format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        from_toml(text, Path::new("/etc/fleet/agent.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Settings::default());
        assert_eq!(
            Settings::default().heartbeat_interval,
            Duration::from_secs(10)
        );
        assert_eq!(Settings::default().max_backoff, Duration::from_secs(30));
    }

    #[test]
    fn reads_both_fields() {
        let s = parse("heartbeat_interval = \"2s\"\nmax_backoff = \"1m\"\n").unwrap();
        assert_eq!(s.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(s.max_backoff, Duration::from_secs(60));
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse("max_backoff = \"soon\"").unwrap_err().to_string();
        assert!(err.contains("max_backoff") && err.contains("soon"), "{err}");
        let err = parse("heartbeat_interval = \"5ms\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("heartbeat_interval") && err.contains("must be between"),
            "{err}"
        );
        let err = parse("max_backoff = \"2h\"").unwrap_err().to_string();
        assert!(err.contains("max_backoff"), "{err}");
    }

    #[test]
    fn reconnect_spread_is_read_and_bounded() {
        assert_eq!(Settings::default().reconnect_spread, Duration::from_secs(5));
        let s = parse("reconnect_spread = \"0s\"").unwrap();
        assert_eq!(s.reconnect_spread, Duration::ZERO);
        let s = parse("reconnect_spread = \"20s\"").unwrap();
        assert_eq!(s.reconnect_spread, Duration::from_secs(20));
        let err = parse("reconnect_spread = \"1h\"").unwrap_err().to_string();
        assert!(
            err.contains("reconnect_spread") && err.contains("must be between"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        let err = parse("heartbeat = \"1s\"").unwrap_err().to_string();
        assert!(
            err.contains("heartbeat") && err.contains("/etc/fleet/agent.toml"),
            "{err}"
        );
        let err = parse("max_backoff = 30").unwrap_err().to_string();
        assert!(err.contains("max_backoff"), "{err}");
    }

    #[test]
    fn flag_overrides_file_and_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "heartbeat_interval = \"5s\"").unwrap();
        let s = resolve(Some(&path), Some(Duration::from_secs(1)), None).unwrap();
        assert_eq!(s.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(
            resolve(Some(&path), None, None).unwrap().heartbeat_interval,
            Duration::from_secs(5)
        );
        let err = resolve(None, Some(Duration::ZERO), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--heartbeat-interval"), "{err}");
        let err = resolve(Some(&dir.path().join("missing.toml")), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }

    #[test]
    fn node_metrics_are_read_and_bad_regexes_refused() {
        let s = parse("[node_metrics]\nnetdev_device_exclude = \"^veth\"\n").unwrap();
        assert_eq!(s.node_metrics.netdev_device_exclude, "^veth");
        assert_eq!(parse("").unwrap().node_metrics, NodeSettings::default());
        let err = parse("[node_metrics]\nvmstat_fields = \"(\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node_metrics.vmstat_fields is not a valid regular expression"),
            "{err}"
        );
        assert!(parse("[node_metrics]\nno_such = 1\n").is_err());
    }

    #[test]
    fn metrics_tls_needs_all_three_files() {
        assert_eq!(parse("").unwrap().metrics_tls, None);
        let s =
            parse("[metrics_tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_ca = \"/ca.pem\"\n")
                .unwrap();
        assert_eq!(
            s.metrics_tls,
            Some(MetricsTls {
                cert: "/c.pem".into(),
                key: "/k.pem".into(),
                client_ca: "/ca.pem".into(),
            })
        );
        let err = parse("[metrics_tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_ca"), "{err}");
    }

    #[test]
    fn metrics_listen_defaults_parses_and_turns_off() {
        assert_eq!(
            Settings::default().metrics_listen.to_string(),
            "0.0.0.0:9437"
        );
        let s = parse("metrics_listen = \"127.0.0.1:9500\"").unwrap();
        assert_eq!(s.metrics_listen.to_string(), "127.0.0.1:9500");
        assert_eq!(
            parse("metrics_listen = \"off\"").unwrap().metrics_listen.0,
            None
        );
        assert_eq!(
            parse("metrics_listen = \"\"").unwrap().metrics_listen.0,
            None
        );
        assert_eq!(
            parse("metrics_listen = \"[::]:9437\"")
                .unwrap()
                .metrics_listen
                .to_string(),
            "[::]:9437"
        );
        let err = parse("metrics_listen = \"9437\"").unwrap_err().to_string();
        assert!(
            err.contains("metrics_listen") && err.contains("IP:PORT"),
            "{err}"
        );
        let flag: MetricsListen = "off".parse().unwrap();
        let s = resolve(None, None, Some(flag)).unwrap();
        assert_eq!(s.metrics_listen.0, None);
    }

    /// The package's /etc/fleet/agent.toml lists every setting commented out at its
    /// default: uncommented, it must parse and change nothing.
    #[test]
    fn packaged_config_file_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deb/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(uncommented.contains("heartbeat_interval"), "{uncommented}");
        let s = from_toml(&uncommented, &path).unwrap();
        let defaults = Settings::default();
        assert_eq!(s.heartbeat_interval, defaults.heartbeat_interval);
        assert_eq!(s.max_backoff, defaults.max_backoff);
        assert_eq!(s.reconnect_spread, defaults.reconnect_spread);
        assert_eq!(s.metrics_listen, defaults.metrics_listen);
        // The TLS example is the one optional section; the plain file leaves it off.
        assert!(s.metrics_tls.is_some());
        assert_eq!(from_toml(&text, &path).unwrap(), defaults);
    }
}
