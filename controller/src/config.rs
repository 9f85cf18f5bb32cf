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
    pub join_burst: u32,
    pub join_per_minute: u32,
    pub max_release_bytes: u64,
    /// URLs (http://) that get a JSON event on rollout start, success, failure, revert.
    pub webhooks: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "0.0.0.0:7443".parse().expect("literal"),
            http_listen: "0.0.0.0:7444".parse().expect("literal"),
            agent_cert_lifetime: Duration::from_secs(7 * 24 * 3600),
            server_cert_lifetime: SERVER_CERT_LIFETIME,
            admin_cert_lifetime: ADMIN_CERT_LIFETIME,
            handshake_timeout: Duration::from_secs(10),
            join_burst: 10,
            join_per_minute: 10,
            max_release_bytes: 512 * 1024 * 1024,
            webhooks: Vec::new(),
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
    pub join_burst: Option<u32>,
    pub join_per_minute: Option<u32>,
    pub max_release_bytes: Option<u64>,
    pub webhooks: Option<Vec<String>>,
}

pub fn parse_duration(field: &str, value: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(value)
        .with_context(|| format!("{field}: {value:?} is not a duration (examples: 30s, 12h, 7d)"))
}

impl Settings {
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
        if let Some(v) = file.join_burst {
            self.join_burst = v;
        }
        if let Some(v) = file.join_per_minute {
            self.join_per_minute = v;
        }
        if let Some(v) = file.max_release_bytes {
            self.max_release_bytes = v;
        }
        if let Some(v) = file.webhooks {
            self.webhooks = v;
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
        for url in &self.webhooks {
            crate::webhook::parse_url(url).map_err(|e| anyhow::anyhow!("webhooks: {e}"))?;
        }
        if self.join_burst == 0 || self.join_per_minute == 0 {
            bail!("join_burst and join_per_minute must be at least 1");
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

    /// The package's /etc/fleet/controller.toml lists every setting commented out at its
    /// default: uncommented, it must parse and change nothing.
    #[test]
    fn packaged_config_file_shows_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/deb/controller.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.contains(" = "))
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
        assert_eq!(n, 10, "{uncommented}");
        let mut plain = Settings::default();
        plain.apply_file(&path).unwrap();
        assert_eq!(format!("{plain:?}"), format!("{:?}", Settings::default()));
    }
}
