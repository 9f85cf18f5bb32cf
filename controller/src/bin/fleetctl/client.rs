//! Connecting to the controller with the admin identity, and turning failures into
//! sentences that say what happened and what to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use fleet_proto::transport::{alert_reason, classify, connect, identity_client_config, Failure};
use fleet_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

pub struct Conn {
    addr: String,
    identity: PathBuf,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Conn {
    pub fn new(addr: &str, identity: &Path) -> Self {
        Conn {
            addr: addr.to_owned(),
            identity: identity.to_owned(),
        }
    }

    fn read(&self, file: &str) -> anyhow::Result<String> {
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

    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        let config = identity_client_config(
            &self.read("ca.crt")?,
            &self.read("admin.crt")?,
            &self.read("admin.key")?,
        )
        .with_context(|| format!("admin identity in {} is unusable", self.identity.display()))?;
        let channel = connect(&self.addr, config, CONNECT_TIMEOUT)
            .await
            .map_err(|e| self.explain(&e))?;
        Ok(AdminClient::new(channel))
    }

    /// Maps a transport error or status to what the operator should know.
    pub fn explain(&self, err: &(dyn std::error::Error + 'static)) -> anyhow::Error {
        match classify(err) {
            Failure::Unreachable(why) => anyhow!(
                "controller unreachable at {}: {why}. Is fleet-controller running there? (set --controller or FLEET_CONTROLLER)",
                self.addr
            ),
            Failure::CertificateRefused(alert) => anyhow!(
                "certificate refused by controller at {}: {} (identity {}). Use an admin identity issued by this fleet's controller",
                self.addr,
                alert_reason(alert),
                self.identity.display()
            ),
            Failure::ControllerUntrusted(why) => anyhow!(
                "the server at {} is not this fleet's controller, or its certificate does not cover that address: {why}",
                self.addr
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
