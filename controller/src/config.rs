//! Controller settings: defaults, overridden by the `--config` TOML file, overridden by
//! flags. Durations are humantime strings ("7d", "30s").

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Default lifetime of the controller's serving certificate, at `init` and at renewal.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Default lifetime of admin certificates, at `init` and when fleetctl renews one.
pub const ADMIN_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Bounds for the serving certificate's lifetime: seconds for tests, at most the year and a
/// day agents get too.
pub fn check_server_cert_lifetime(lifetime: Duration) -> anyhow::Result<()> {
    check_lifetime("server_cert_lifetime", lifetime)
}

/// The same bounds for admin certificates.
pub fn check_admin_cert_lifetime(lifetime: Duration) -> anyhow::Result<()> {
    check_lifetime("admin_cert_lifetime", lifetime)
}

fn check_lifetime(what: &str, lifetime: Duration) -> anyhow::Result<()> {
    if lifetime < Duration::from_secs(3) || lifetime > Duration::from_secs(366 * 24 * 3600) {
        bail!("{what} must be between 3s and 366d");
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub agent_cert_lifetime: Duration,
    /// Lifetime of the controller's own serving certificate when it renews it.
    pub server_cert_lifetime: Duration,
    /// Lifetime of the admin certificates fleetctl renews.
    pub admin_cert_lifetime: Duration,
    pub handshake_timeout: Duration,
    /// Time after the TLS handshake for the first HTTP/2 bytes.
    pub preface_timeout: Duration,
    /// Longest silence on an established connection (the controller pings every 15 s).
    pub idle_timeout: Duration,
    /// Deadline of unary calls (everything but streams).
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_pending_handshakes: usize,
    pub max_pending_handshakes_per_ip: usize,
    /// Length of the gRPC listener's kernel accept queue (capped by net.core.somaxconn).
    pub listen_backlog: u32,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Release downloads one agent session may have running at once.
    pub max_fetches_per_session: usize,
    pub join_burst: u32,
    pub join_per_minute: u32,
    /// Joins per minute from all sources together.
    pub join_global_per_minute: u32,
    pub max_release_bytes: u64,
    /// Releases kept per app; older ones no host runs or is meant to run are pruned after
    /// an upload. 0 keeps every release.
    pub release_retention: u32,
    /// Audit entries older than this are pruned (in batches, off the request path).
    pub audit_retention: Duration,
    /// At most this many audit entries are kept; the oldest go first.
    pub audit_max_entries: u64,
    /// File holding the bearer token `/metrics` and `/v1/sd/prometheus` require; `None`
    /// leaves them open (the HTTP listener then defaults to loopback).
    pub http_token_file: Option<std::path::PathBuf>,
    /// URLs (http://) that get a JSON event on rollout start, success, failure, revert.
    pub webhooks: Vec<crate::webhook::WebhookUrl>,
    /// `[store]`: PostgreSQL instead of `DATA_DIR/state.redb` (several controllers on one
    /// database, docs/ha.md); None for the embedded file.
    pub store: Option<crate::store::pg::PgConfig>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "0.0.0.0:7443".parse().expect("literal"),
            // Loopback: /metrics and service discovery name every host; expose them with
            // http_listen (and http_token_file) when Prometheus runs elsewhere.
            http_listen: "127.0.0.1:7444".parse().expect("literal"),
            agent_cert_lifetime: Duration::from_secs(7 * 24 * 3600),
            server_cert_lifetime: SERVER_CERT_LIFETIME,
            admin_cert_lifetime: ADMIN_CERT_LIFETIME,
            handshake_timeout: Duration::from_secs(10),
            preface_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            request_timeout: Duration::from_secs(60),
            // Room for 50,000 agents and their admins; the accept loop also keeps it
            // below the process's file-descriptor limit.
            max_connections: 60_000,
            max_connections_per_ip: 64,
            max_pending_handshakes: 512,
            max_pending_handshakes_per_ip: 16,
            // Room for a reconnect herd while the accept loop catches up; tokio's default
            // (1024) overflowed at 10,000 agents.
            listen_backlog: 8192,
            max_concurrent_streams: 64,
            max_fetches_per_session: 4,
            join_burst: 10,
            join_per_minute: 10,
            join_global_per_minute: 600,
            max_release_bytes: 512 * 1024 * 1024,
            release_retention: 20,
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            audit_max_entries: 1_000_000,
            http_token_file: None,
            webhooks: Vec::new(),
            store: None,
        }
    }
}

/// The `--config` file. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub agent_cert_lifetime: Option<String>,
    pub server_cert_lifetime: Option<String>,
    pub admin_cert_lifetime: Option<String>,
    pub handshake_timeout: Option<String>,
    pub preface_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_pending_handshakes: Option<usize>,
    pub max_pending_handshakes_per_ip: Option<usize>,
    pub listen_backlog: Option<u32>,
    pub max_concurrent_streams: Option<u32>,
    pub max_fetches_per_session: Option<usize>,
    pub join_burst: Option<u32>,
    pub join_per_minute: Option<u32>,
    pub join_global_per_minute: Option<u32>,
    pub max_release_bytes: Option<u64>,
    pub release_retention: Option<u32>,
    pub audit_retention: Option<String>,
    pub audit_max_entries: Option<u64>,
    pub http_token_file: Option<std::path::PathBuf>,
    pub webhooks: Option<Vec<crate::webhook::WebhookUrl>>,
    pub store: Option<StoreFile>,
}

/// `[store]` of the settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `postgres://USER@HOST[:PORT][,HOST2…]/DATABASE[?target_session_attrs=read-write&sslmode=…]`
    /// or libpq's `host=… dbname=…` form. A password belongs in `password_file`, not here
    /// (this file is world-readable when packaged).
    pub url: String,
    /// A file (0600) whose first line is the database password.
    pub password_file: Option<std::path::PathBuf>,
    /// PEM of the CA that signed the server's certificate (`sslmode=require`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Connections this controller may hold (1 ..= 256); every replica's, added up, must
    /// stay below the server's `max_connections`.
    pub pool_size: Option<usize>,
    /// Lifetime of the leader lease (2s ..= 60s): a standby takes over this long after the
    /// leader stopped renewing it.
    pub lease_ttl: Option<String>,
    /// `HOST:PORT` the other controllers relay calls to while this one leads (default:
    /// the listen address, or the first name of the serving certificate when that is
    /// 0.0.0.0). It must be one of the serving certificate's names.
    pub advertise: Option<String>,
}

impl StoreFile {
    pub fn resolve(self) -> anyhow::Result<crate::store::pg::PgConfig> {
        let mut pg = crate::store::pg::PgConfig::from_url(&self.url)?;
        if let Some(path) = self.password_file {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("[store] password_file {}: cannot read it", path.display())
            })?;
            let password = text.lines().next().unwrap_or("").trim_end();
            if password.is_empty() {
                bail!("[store] password_file {} is empty", path.display());
            }
            pg = pg.with_password(password);
        }
        if let Some(n) = self.pool_size {
            if !(1..=256).contains(&n) {
                bail!("[store] pool_size must be between 1 and 256 (it is {n})");
            }
            pg.pool_size = n;
        }
        pg.ca_file = self.ca_file;
        if let Some(v) = self.lease_ttl {
            let ttl = parse_duration("[store] lease_ttl", &v)?;
            if ttl < Duration::from_secs(2) || ttl > Duration::from_secs(60) {
                bail!("[store] lease_ttl must be between 2s and 60s");
            }
            pg.lease_ttl = ttl;
        }
        if let Some(a) = self.advertise {
            fleet_proto::transport::validate_address(&a)
                .map_err(|e| anyhow::anyhow!("[store] advertise: {e}"))?;
            pg.advertise = Some(a);
        }
        Ok(pg)
    }
}

/// fleet's one duration syntax (`fleet_proto::values::parse_duration`), as fleetctl reads it.
pub fn parse_duration(field: &str, value: &str) -> anyhow::Result<Duration> {
    Ok(fleet_proto::values::parse_duration(field, value)?)
}

/// `fleet-controller run`'s flags that override the settings file (as typed; parsed in
/// `Settings::resolve` so each error names its flag).
#[derive(Debug, Default)]
pub struct Flags {
    pub listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub agent_cert_lifetime: Option<String>,
    pub server_cert_lifetime: Option<String>,
    pub admin_cert_lifetime: Option<String>,
}

impl Settings {
    /// Defaults, then the settings file if any, then the flags: flags win.
    pub fn resolve(config: Option<&Path>, flags: Flags) -> anyhow::Result<Settings> {
        let mut settings = Settings::default();
        if let Some(path) = config {
            settings.apply_file(path)?;
        }
        if let Some(v) = flags.listen {
            settings.listen = v;
        }
        if let Some(v) = flags.http_listen {
            settings.http_listen = v;
        }
        if let Some(v) = flags.agent_cert_lifetime {
            settings.agent_cert_lifetime = parse_duration("--agent-cert-lifetime", &v)?;
        }
        if let Some(v) = flags.server_cert_lifetime {
            settings.server_cert_lifetime = parse_duration("--server-cert-lifetime", &v)?;
        }
        if let Some(v) = flags.admin_cert_lifetime {
            settings.admin_cert_lifetime = parse_duration("--admin-cert-lifetime", &v)?;
        }
        Ok(settings)
    }

    pub fn apply_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let file: FileConfig = toml::from_str(&text)
            .with_context(|| format!("config file {} is invalid", path.display()))?;
        if let Some(v) = file.listen {
            self.listen = v;
        }
        if let Some(v) = file.http_listen {
            self.http_listen = v;
        }
        if let Some(v) = file.agent_cert_lifetime {
            self.agent_cert_lifetime = parse_duration("agent_cert_lifetime", &v)?;
        }
        if let Some(v) = file.server_cert_lifetime {
            self.server_cert_lifetime = parse_duration("server_cert_lifetime", &v)?;
        }
        if let Some(v) = file.admin_cert_lifetime {
            self.admin_cert_lifetime = parse_duration("admin_cert_lifetime", &v)?;
        }
        if let Some(v) = file.handshake_timeout {
            self.handshake_timeout = parse_duration("handshake_timeout", &v)?;
        }
        for (field, value, target) in [
            (
                "preface_timeout",
                file.preface_timeout,
                &mut self.preface_timeout,
            ),
            ("idle_timeout", file.idle_timeout, &mut self.idle_timeout),
            (
                "request_timeout",
                file.request_timeout,
                &mut self.request_timeout,
            ),
            (
                "audit_retention",
                file.audit_retention,
                &mut self.audit_retention,
            ),
        ] {
            if let Some(v) = value {
                *target = parse_duration(field, &v)?;
            }
        }
        for (value, target) in [
            (file.max_connections, &mut self.max_connections),
            (
                file.max_connections_per_ip,
                &mut self.max_connections_per_ip,
            ),
            (
                file.max_pending_handshakes,
                &mut self.max_pending_handshakes,
            ),
            (
                file.max_pending_handshakes_per_ip,
                &mut self.max_pending_handshakes_per_ip,
            ),
            (
                file.max_fetches_per_session,
                &mut self.max_fetches_per_session,
            ),
        ] {
            if let Some(v) = value {
                *target = v;
            }
        }
        if let Some(v) = file.max_concurrent_streams {
            self.max_concurrent_streams = v;
        }
        if let Some(v) = file.listen_backlog {
            self.listen_backlog = v;
        }
        if let Some(v) = file.join_global_per_minute {
            self.join_global_per_minute = v;
        }
        if let Some(v) = file.audit_max_entries {
            self.audit_max_entries = v;
        }
        if let Some(v) = file.http_token_file {
            self.http_token_file = Some(v);
        }
        if let Some(v) = file.join_burst {
            self.join_burst = v;
        }
        if let Some(v) = file.join_per_minute {
            self.join_per_minute = v;
        }
        if let Some(v) = file.max_release_bytes {
            self.max_release_bytes = v;
        }
        if let Some(v) = file.release_retention {
            self.release_retention = v;
        }
        if let Some(v) = file.webhooks {
            self.webhooks = v;
        }
        if let Some(v) = file.store {
            self.store = Some(v.resolve()?);
        }
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.agent_cert_lifetime < Duration::from_secs(3)
            || self.agent_cert_lifetime > Duration::from_secs(366 * 24 * 3600)
        {
            bail!("agent_cert_lifetime must be between 3s and 366d");
        }
        check_server_cert_lifetime(self.server_cert_lifetime)?;
        check_admin_cert_lifetime(self.admin_cert_lifetime)?;
        if self.handshake_timeout < Duration::from_millis(100)
            || self.handshake_timeout > Duration::from_secs(120)
        {
            bail!("handshake_timeout must be between 100ms and 120s");
        }
        if self.max_release_bytes < 1024 || self.max_release_bytes > 16 << 30 {
            bail!("max_release_bytes must be between 1 KiB and 16 GiB");
        }
        if self.release_retention > 10_000 {
            bail!("release_retention must be at most 10000 (0 keeps every release)");
        }
        if self.join_burst == 0 || self.join_per_minute == 0 || self.join_global_per_minute == 0 {
            bail!("join_burst, join_per_minute and join_global_per_minute must be at least 1");
        }
        let secs = Duration::from_secs;
        for (field, value, min, max) in [
            (
                "preface_timeout",
                self.preface_timeout,
                Duration::from_millis(100),
                secs(120),
            ),
            // Above the 15 s keepalive ping plus its 10 s answer time.
            ("idle_timeout", self.idle_timeout, secs(30), secs(3600)),
            ("request_timeout", self.request_timeout, secs(1), secs(3600)),
            (
                "audit_retention",
                self.audit_retention,
                secs(3600),
                secs(3660 * 86400),
            ),
        ] {
            if value < min || value > max {
                bail!(
                    "{field} must be between {} and {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                );
            }
        }
        for (field, value, min, max) in [
            ("max_connections", self.max_connections, 16, 1_000_000),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip,
                1,
                1_000_000,
            ),
            (
                "max_pending_handshakes",
                self.max_pending_handshakes,
                1,
                100_000,
            ),
            (
                "max_pending_handshakes_per_ip",
                self.max_pending_handshakes_per_ip,
                1,
                100_000,
            ),
            (
                "max_concurrent_streams",
                self.max_concurrent_streams as usize,
                4,
                10_000,
            ),
            ("listen_backlog", self.listen_backlog as usize, 128, 1 << 20),
            (
                "max_fetches_per_session",
                self.max_fetches_per_session,
                1,
                64,
            ),
        ] {
            if value < min || value > max {
                bail!("{field} must be between {min} and {max} (it is {value})");
            }
        }
        if self.audit_max_entries < 1000 {
            bail!("audit_max_entries must be at least 1000");
        }
        if let Some(path) = &self.http_token_file {
            crate::http::read_token(path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "agent_cert_lifetime = \"1h\"\njoin_burst = 3\n").unwrap();
        let mut s = Settings::default();
        s.apply_file(&p).unwrap();
        assert_eq!(s.agent_cert_lifetime, Duration::from_secs(3600));
        assert_eq!(s.join_burst, 3);

        std::fs::write(&p, "agent_cert_lifetime = \"soon\"\n").unwrap();
        let err = Settings::default().apply_file(&p).unwrap_err();
        assert!(format!("{err:#}").contains("agent_cert_lifetime"));

        std::fs::write(&p, "listne = \"0.0.0.0:1\"\n").unwrap();
        let err = Settings::default().apply_file(&p).unwrap_err();
        assert!(format!("{err:#}").contains("listne"), "{err:#}");
    }

    #[test]
    fn limits_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "max_connections_per_ip = 8\npreface_timeout = \"2s\"\naudit_retention = \"30d\"\n",
        )
        .unwrap();
        let mut s = Settings::default();
        assert!(
            s.http_listen.ip().is_loopback(),
            "HTTP defaults to loopback"
        );
        s.validate().unwrap();
        s.apply_file(&p).unwrap();
        assert_eq!(s.max_connections_per_ip, 8);
        assert_eq!(s.preface_timeout, Duration::from_secs(2));
        assert_eq!(s.audit_retention, Duration::from_secs(30 * 86400));
        s.validate().unwrap();
        for (toml, key) in [
            ("max_connections_per_ip = 0\n", "max_connections_per_ip"),
            ("idle_timeout = \"5s\"\n", "idle_timeout"),
            ("max_concurrent_streams = 1\n", "max_concurrent_streams"),
            ("listen_backlog = 16\n", "listen_backlog"),
            ("audit_max_entries = 10\n", "audit_max_entries"),
            (
                "http_token_file = \"/nonexistent/token\"\n",
                "http_token_file",
            ),
        ] {
            std::fs::write(&p, toml).unwrap();
            let mut s = Settings::default();
            s.apply_file(&p).unwrap();
            let err = format!("{:#}", s.validate().unwrap_err());
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn certificate_lifetimes_are_read_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "server_cert_lifetime = \"90d\"\n").unwrap();
        let mut s = Settings::default();
        s.apply_file(&p).unwrap();
        assert_eq!(s.server_cert_lifetime, Duration::from_secs(90 * 86400));
        s.validate().unwrap();
        for bad in [Duration::from_secs(2), Duration::from_secs(367 * 86400)] {
            s.server_cert_lifetime = bad;
            let err = format!("{:#}", s.validate().unwrap_err());
            assert!(err.contains("server_cert_lifetime"), "{err}");
        }
        s.server_cert_lifetime = SERVER_CERT_LIFETIME;
        std::fs::write(&p, "admin_cert_lifetime = \"30d\"\n").unwrap();
        s.apply_file(&p).unwrap();
        assert_eq!(s.admin_cert_lifetime, Duration::from_secs(30 * 86400));
        s.admin_cert_lifetime = Duration::from_secs(1);
        let err = format!("{:#}", s.validate().unwrap_err());
        assert!(err.contains("admin_cert_lifetime"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "agent_cert_lifetime = \"1h\"\nadmin_cert_lifetime = \"30d\"\n",
        )
        .unwrap();
        let s = Settings::resolve(
            Some(&p),
            Flags {
                agent_cert_lifetime: Some("2h".into()),
                ..Flags::default()
            },
        )
        .unwrap();
        assert_eq!(s.agent_cert_lifetime, Duration::from_secs(7200));
        assert_eq!(s.admin_cert_lifetime, Duration::from_secs(30 * 86400));
        let e = Settings::resolve(
            None,
            Flags {
                server_cert_lifetime: Some("soon".into()),
                ..Flags::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--server-cert-lifetime"), "{e}");
    }

    /// The package's /etc/fleet/controller.toml lists every setting commented out at its
    /// default (`#key = value`): uncommented, it must parse and change nothing. Indented
    /// comment lines (`#   key = value`) are examples of settings without a default.
    #[test]
    fn packaged_config_file_shows_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/deb/controller.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| !l.starts_with(' ') && l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, &uncommented).unwrap();
        let mut s = Settings::default();
        s.apply_file(&p).unwrap();
        assert_eq!(format!("{s:?}"), format!("{:?}", Settings::default()));
        // Every field of the file format is shown.
        let n = uncommented.lines().count();
        assert_eq!(n, 24, "{uncommented}");
        let mut plain = Settings::default();
        plain.apply_file(&path).unwrap();
        assert_eq!(format!("{plain:?}"), format!("{:?}", Settings::default()));
    }

    #[test]
    fn the_store_section_reads_its_password_from_a_file_and_never_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2-db\n").unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            format!(
                "[store]\nurl = \"postgres://fleet@db1,db2/fleet?target_session_attrs=read-write\"\n\
                 password_file = \"{}\"\npool_size = 4\n",
                pw.display()
            ),
        )
        .unwrap();
        let mut s = Settings::default();
        s.apply_file(&p).unwrap();
        let store = s.store.as_ref().unwrap();
        assert_eq!(store.pool_size, 4);
        assert_eq!(store.describe(), "postgres://fleet@db1:5432,db2:5432/fleet");
        assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");

        std::fs::write(
            &p,
            "[store]\nurl = \"postgres://db/fleet\"\npool_size = 0\n",
        )
        .unwrap();
        let err = Settings::default().apply_file(&p).unwrap_err();
        assert!(format!("{err:#}").contains("pool_size"), "{err:#}");
        std::fs::write(
            &p,
            "[store]\nurl = \"postgres://db/fleet\"\npassword_file = \"/nonexistent\"\n",
        )
        .unwrap();
        let err = Settings::default().apply_file(&p).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent"), "{err:#}");
    }
}
