//! `fleetctl token create`.

use clap::Subcommand;
use fleet_proto::v1::CreateTokenRequest;
use fleet_proto::values::parse_duration;
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a join token; prints only the token (keep it secret, it enrolls a host).
    Create {
        /// How long the token is valid.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many hosts may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Place the hosts that join with it in this group.
        #[arg(long)]
        group: Option<String>,
    },
}

pub async fn run(conn: &Conn, cmd: TokenCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create { ttl, uses, group } => {
            let ttl = parse_duration("--ttl", &ttl)?;
            if ttl.as_secs() == 0 {
                anyhow::bail!("--ttl must be at least 1s");
            }
            if uses == 0 {
                anyhow::bail!("--uses must be at least 1");
            }
            let resp = conn
                .admin()
                .await?
                .create_token(CreateTokenRequest {
                    ttl_seconds: ttl.as_secs(),
                    uses,
                    group: group.unwrap_or_default(),
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Table => println!("{}", resp.token),
                Format::Json => output::json(&json!({
                    "token": resp.token,
                    "token_id": resp.token_id,
                    "expires_at": output::time(resp.expires_at),
                    "uses": resp.uses,
                })),
            }
            Ok(())
        }
    }
}
