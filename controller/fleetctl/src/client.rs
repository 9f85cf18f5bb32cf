//! Connecting to the controller with the admin identity, and turning failures into
//! sentences that say what happened and what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use fleet_proto::peer::cert_info;
use fleet_proto::renewal::renew_at;
use fleet_proto::transport::{
    alert_reason, certs_from_pem, classify, connect, identity_client_config, Failure,
};
use fleet_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

pub struct Conn {
    /// Every address given, in order.
    addrs: Vec<String>,
    /// The one connected to, for messages about what it answered.
    addr: std::sync::Mutex<String>,
    identity: PathBuf,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest reply fleetctl decodes (tonic's default is 4 MiB). Lists of hosts, statuses,
/// firewall states and audit entries come in pages of at most 2 MiB whatever the fleet's
/// size; the one reply that names every host at once is a rollout's (`RolloutInfo`, in
/// `rollout status` and each `--watch` event): a host row there is about 60 bytes (name,
/// batch, phase, previous version) plus its message, so 100,000 hosts take about 6 MB,
/// and 64 MiB leaves room for a 600-byte failure message on every one of them.
const MAX_REPLY_BYTES: usize = 64 << 20;

impl Conn {
    /// `addr` is one `host:port`, or several separated by commas.
    pub fn new(addr: &str, identity: &Path) -> Self {
        let mut addrs: Vec<String> = addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if addrs.is_empty() {
            addrs.push(addr.to_owned());
        }
        Conn {
            addr: std::sync::Mutex::new(addrs.join(", ")),
            addrs,
            identity: identity.to_owned(),
        }
    }

    fn shown_addr(&self) -> String {
        self.addr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn identity_dir(&self) -> &Path {
        &self.identity
    }

    pub fn read(&self, file: &str) -> anyhow::Result<String> {
        let path = self.identity.join(file);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no admin identity at {} (cannot read {}): pass --identity DIR or set FLEET_IDENTITY; \
                 `fleet-controller init` writes one to DATA_DIR/admin",
                self.identity.display(),
                path.display()
            )
        })
    }

    /// A client for the controller; says on stderr when the admin certificate is due for
    /// renewal (past 2/3 of its lifetime), so it is not first noticed when it has expired.
    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        self.warn_if_due(&self.read("admin.crt")?);
        self.connect().await
    }

    /// [`Conn::admin`] without the renewal reminder (for the renewal itself).
    pub async fn connect(&self) -> anyhow::Result<AdminClient<Channel>> {
        // A renewal cut off mid-swap is finished (or undone) before the pair is read.
        if let Err(e) = fleet_proto::key_swap::recover(
            &self.identity.join("admin.key"),
            &self.identity.join("admin.crt"),
            crate::identity::pairs,
        ) {
            eprintln!("warning: cannot finish an interrupted key rotation: {e}");
        }
        let config = identity_client_config(
            &self.read("ca.crt")?,
            &self.read("admin.crt")?,
            &self.read("admin.key")?,
        )
        .with_context(|| format!("admin identity in {} is unusable", self.identity.display()))?;
        // Only an unreachable address moves on to the next: a refused certificate or an
        // untrusted server is a mistake the next address would not fix.
        let mut last = None;
        for addr in &self.addrs {
            *self.addr.lock().unwrap_or_else(|e| e.into_inner()) = addr.clone();
            match connect(addr, config.clone(), CONNECT_TIMEOUT).await {
                Ok(channel) => {
                    return Ok(AdminClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES))
                }
                Err(e) if matches!(classify(&e), Failure::Unreachable(_)) => {
                    last = Some(e);
                }
                Err(e) => return Err(self.explain(&e)),
            }
        }
        if self.addrs.len() > 1 {
            *self.addr.lock().unwrap_or_else(|e| e.into_inner()) = self.addrs.join(", ");
        }
        Err(self.explain(&last.expect("at least one address")))
    }

    fn warn_if_due(&self, cert_pem: &str) {
        // An unreadable certificate is reported by the connection that follows.
        let Ok(chain) = certs_from_pem(cert_pem, "the admin certificate") else {
            return;
        };
        let Ok(info) = cert_info(&chain[0]) else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if now >= renew_at(info.not_before, info.not_after) {
            let when = if now >= info.not_after {
                "expired"
            } else {
                "expires"
            };
            eprintln!(
                "warning: the admin certificate in {} {when} {}; run `fleetctl identity renew`",
                self.identity.display(),
                crate::output::time_or_dash(info.not_after)
            );
        }
    }

    /// Maps a transport error or status to what the operator should know.
    pub fn explain(&self, err: &(dyn std::error::Error + 'static)) -> anyhow::Error {
        match classify(err) {
            Failure::Unreachable(why) => anyhow!(
                "controller unreachable at {}: {why}. Is fleet-controller running there? (set --controller or FLEET_CONTROLLER)",
                self.shown_addr()
            ),
            Failure::CertificateRefused(alert) => anyhow!(
                "certificate refused by controller at {}: {} (identity {}). Use an admin identity issued by this fleet's controller",
                self.shown_addr(),
                alert_reason(alert),
                self.identity.display()
            ),
            Failure::ControllerUntrusted(why) => anyhow!(
                "the server at {} is not this fleet's controller, or its certificate does not cover that address: {why}",
                self.shown_addr()
            ),
            Failure::Other => anyhow!("{err}"),
        }
    }

    pub fn status(&self, status: tonic::Status) -> anyhow::Error {
        match classify(&status) {
            Failure::Other => anyhow!("{}", status.message()),
            _ => self.explain(&status),
        }
    }
}
