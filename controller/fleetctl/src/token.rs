//! `fleetctl token create|list|revoke`.

use clap::Subcommand;
use fleet_proto::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, TokenInfo};
use fleet_proto::values::parse_duration;
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

/// 1,000 joins a second: above what one controller signs, so the use count is the bound.
const DEFAULT_BULK_RATE: u32 = 60_000;
/// The controller's bound (proto: `CreateTokenRequest.bulk_per_minute`).
const MAX_BULK_RATE: u32 = 600_000;

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
        /// A bulk token, for enrolling many hosts at once (e.g. behind one NAT): its joins
        /// are limited by --bulk-rate instead of the controller's per-address and
        /// fleet-wide join limits.
        #[arg(long)]
        bulk: bool,
        /// Joins a minute a bulk token allows (a second's worth at once), 1 ..= 600000.
        #[arg(long, requires = "bulk", default_value_t = DEFAULT_BULK_RATE)]
        bulk_rate: u32,
    },
    /// The usable join tokens: id, group, uses left, expiry. Never the token itself
    /// (the controller keeps only its hash).
    List {
        /// Also tokens that are expired, used up or revoked (until they are pruned).
        #[arg(long)]
        all: bool,
    },
    /// End a token at once: no host can join with it any more (hosts that already
    /// joined stay enrolled).
    Revoke {
        /// The token's id, as `token list` shows it.
        id: String,
    },
}

fn token_json(t: &TokenInfo) -> serde_json::Value {
    json!({
        "token_id": t.token_id,
        "state": t.state,
        "group": (!t.group.is_empty()).then_some(&t.group),
        "uses_total": t.uses_total,
        "uses_left": t.uses_left,
        "created_at": output::time(t.created_at),
        "expires_at": output::time(t.expires_at),
        "created_by": t.created_by,
        "bulk_per_minute": t.bulk_per_minute,
        "revoked_at": output::time(t.revoked_at),
    })
}

pub async fn run(conn: &Conn, cmd: TokenCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            ttl,
            uses,
            group,
            bulk,
            bulk_rate,
        } => {
            let ttl = parse_duration("--ttl", &ttl)?;
            if ttl.as_secs() == 0 {
                anyhow::bail!("--ttl must be at least 1s");
            }
            if uses == 0 {
                anyhow::bail!("--uses must be at least 1");
            }
            if !(1..=MAX_BULK_RATE).contains(&bulk_rate) {
                anyhow::bail!("--bulk-rate must be between 1 and {MAX_BULK_RATE} joins a minute");
            }
            let resp = conn
                .admin()
                .await?
                .create_token(CreateTokenRequest {
                    ttl_seconds: ttl.as_secs(),
                    uses,
                    group: group.unwrap_or_default(),
                    bulk_per_minute: if bulk { bulk_rate } else { 0 },
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
                    "bulk_per_minute": resp.bulk_per_minute,
                })),
            }
            Ok(())
        }
        TokenCmd::List { all } => {
            let resp = conn
                .admin()
                .await?
                .list_tokens(ListTokensRequest { all })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(&json!(resp
                    .tokens
                    .iter()
                    .map(token_json)
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let rows: Vec<Vec<String>> = resp
                        .tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.token_id.clone(),
                                t.state.clone(),
                                if t.group.is_empty() {
                                    "-".into()
                                } else {
                                    t.group.clone()
                                },
                                format!("{}/{}", t.uses_left, t.uses_total),
                                output::time_or_dash(t.expires_at),
                                t.created_by.clone(),
                                match t.bulk_per_minute {
                                    0 => "-".into(),
                                    n => format!("{n}/min"),
                                },
                            ]
                        })
                        .collect();
                    output::table(
                        &[
                            "ID",
                            "STATE",
                            "GROUP",
                            "USES LEFT",
                            "EXPIRES",
                            "CREATED BY",
                            "BULK",
                        ],
                        &rows,
                    );
                }
            }
            Ok(())
        }
        TokenCmd::Revoke { id } => {
            let resp = conn
                .admin()
                .await?
                .revoke_token(RevokeTokenRequest {
                    token_id: id.clone(),
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            let t = resp.token.unwrap_or_default();
            match format {
                Format::Json => output::json(&token_json(&t)),
                Format::Table => println!(
                    "token {} revoked at {}: no host can join with it",
                    t.token_id,
                    output::time_or_dash(t.revoked_at)
                ),
            }
            Ok(())
        }
    }
}
