//! `fleetctl firewall apply|show|status`: the fleet's `inet fleet` nftables policy.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use fleet_proto::v1::{ApplyFirewallRequest, FirewallStatusRequest, ShowFirewallRequest};
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum FirewallCmd {
    /// Apply a policy file to every host, commit-confirmed; prints the diff and each
    /// host's outcome (applied, confirmed, refused; unconfirmed with the time its own timer
    /// reverts the change, then reverted once the host reports it; deferred for a host that
    /// is down: it gets the policy when it reconnects).
    Apply {
        file: PathBuf,
        /// Apply even if it would cut off the controller or SSH from the admin sources.
        #[arg(long)]
        force: bool,
    },
    /// The current policy; with --host, also the table rendered for that host.
    Show {
        #[arg(long)]
        host: Option<String>,
    },
    /// Per host: the firewall state it reports (confirmed, pending, reverted, drift).
    Status,
}

pub async fn run(conn: &Conn, cmd: FirewallCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        FirewallCmd::Apply { file, force } => apply(conn, file, force, format).await,
        FirewallCmd::Show { host } => {
            let r = conn
                .admin()
                .await?
                .show_firewall(ShowFirewallRequest {
                    host: host.unwrap_or_default(),
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(&json!({
                    "policy": r.policy_toml,
                    "rendered": r.rendered,
                    "applied_at": output::time(r.applied_at_ms / 1000),
                })),
                Format::Table => {
                    println!("# applied {}", output::time_or_dash(r.applied_at_ms / 1000));
                    print!("{}", r.policy_toml);
                    if !r.rendered.is_empty() {
                        println!("\n# rendered for the host:");
                        print!("{}", r.rendered);
                    }
                }
            }
            Ok(())
        }
        FirewallCmd::Status => {
            let mut admin = conn.admin().await?;
            let mut r = fleet_proto::v1::FirewallStatusResponse::default();
            loop {
                let page = admin
                    .firewall_status(FirewallStatusRequest {
                        page_token: std::mem::take(&mut r.next_page_token),
                        limit: 0,
                    })
                    .await
                    .map_err(|s| conn.status(s))?
                    .into_inner();
                r.policy_sha256 = page.policy_sha256;
                r.hosts.extend(page.hosts);
                r.next_page_token = page.next_page_token;
                if r.next_page_token.is_empty() {
                    break;
                }
            }
            match format {
                Format::Json => output::json(&json!({
                    "policy_sha256": r.policy_sha256,
                    "hosts": r.hosts.iter().map(|h| {
                        let s = h.state.clone().unwrap_or_default();
                        json!({"host": h.host, "host_state": h.host_state, "firewall": s.state,
                               "policy_sha256": s.policy_sha256, "detail": s.detail})
                    }).collect::<Vec<_>>(),
                })),
                Format::Table => {
                    let rows: Vec<Vec<String>> = r
                        .hosts
                        .iter()
                        .map(|h| {
                            let s = h.state.clone().unwrap_or_default();
                            let matches = if s.policy_sha256.is_empty() {
                                "-".to_owned()
                            } else if s.policy_sha256 == r.policy_sha256 {
                                "yes".to_owned()
                            } else {
                                "no".to_owned()
                            };
                            vec![
                                h.host.clone(),
                                h.host_state.clone(),
                                if s.state.is_empty() {
                                    "unknown".into()
                                } else {
                                    s.state
                                },
                                matches,
                                s.detail,
                            ]
                        })
                        .collect();
                    output::table(
                        &["HOST", "HOST STATE", "FIREWALL", "CURRENT POLICY", "DETAIL"],
                        &rows,
                    );
                }
            }
            Ok(())
        }
    }
}

async fn apply(conn: &Conn, file: PathBuf, force: bool, format: Format) -> anyhow::Result<()> {
    let policy_toml = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let mut stream = conn
        .admin()
        .await?
        .apply_firewall(ApplyFirewallRequest { policy_toml, force })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    // Host -> its latest outcome: "unconfirmed" comes first and is replaced by
    // "reverted" when the host reports its revert before the controller stops waiting.
    let mut outcomes: BTreeMap<String, (String, String)> = BTreeMap::new();
    while let Some(p) = stream.message().await.map_err(|s| conn.status(s))? {
        let outcome = matches!(
            p.phase.as_str(),
            "confirmed" | "reverted" | "unconfirmed" | "refused" | "failed" | "deferred"
        );
        if outcome {
            outcomes.insert(p.host.clone(), (p.phase.clone(), p.message.clone()));
        }
        match format {
            Format::Table if p.phase == "diff" => {
                println!("--- {} diff", p.host);
                print!("{}", p.message);
            }
            // "unconfirmed; reverts by 08:31:05 UTC: ..." reads as one statement.
            Format::Table if p.phase == "unconfirmed" => {
                println!("{:<16} unconfirmed; {}", p.host, p.message)
            }
            Format::Table => println!("{:<16} {:<10} {}", p.host, p.phase, p.message),
            Format::Json => {}
        }
    }
    if format == Format::Json {
        output::json(&json!(outcomes
            .iter()
            .map(|(host, (result, message))| json!({"host": host, "result": result, "message": message}))
            .collect::<Vec<_>>()));
    }
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|(_, (phase, _))| phase != "confirmed")
        .map(|(host, (phase, message))| match phase.as_str() {
            "unconfirmed" => format!("{host}: unconfirmed; {message}"),
            _ => format!("{host}: {phase} ({message})"),
        })
        .collect();
    if !bad.is_empty() {
        anyhow::bail!(
            "firewall policy not confirmed on {} host(s):\n  {}",
            bad.len(),
            bad.join("\n  ")
        );
    }
    Ok(())
}
