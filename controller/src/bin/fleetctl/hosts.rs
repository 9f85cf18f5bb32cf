//! `fleetctl hosts` and `fleetctl host remove`.

use clap::Subcommand;
use fleet_proto::v1::{ListHostsRequest, RemoveHostRequest};
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum HostCmd {
    /// Remove a host: revoke its certificate at once and close its stream. Only a new
    /// join token brings it back.
    Remove { name: String },
}

pub async fn list(conn: &Conn, format: Format) -> anyhow::Result<()> {
    let hosts = conn
        .admin()
        .await?
        .list_hosts(ListHostsRequest {})
        .await
        .map_err(|s| conn.status(s))?
        .into_inner()
        .hosts;
    match format {
        Format::Json => output::json(&json!(hosts
            .iter()
            .map(|h| json!({
                "name": h.name,
                "address": h.address,
                "state": h.state,
                "last_seen": output::time(h.last_seen),
                "version": h.version,
                "cert_expires": output::time(h.cert_expires),
            }))
            .collect::<Vec<_>>())),
        Format::Table => output::table(
            &[
                "NAME",
                "ADDRESS",
                "STATE",
                "LAST SEEN",
                "VERSION",
                "CERT EXPIRES",
            ],
            &hosts
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        h.address.clone(),
                        h.state.clone(),
                        output::time_or_dash(h.last_seen),
                        h.version.clone(),
                        output::time_or_dash(h.cert_expires),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

pub async fn run(conn: &Conn, cmd: HostCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        HostCmd::Remove { name } => {
            let resp = conn
                .admin()
                .await?
                .remove_host(RemoveHostRequest { name: name.clone() })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(&json!({
                    "name": name,
                    "revoked_certificates": resp.revoked_certificates,
                    "was_connected": resp.was_connected,
                })),
                Format::Table => println!(
                    "removed host {name}: {} certificate(s) revoked{}",
                    resp.revoked_certificates,
                    if resp.was_connected {
                        ", its stream closed"
                    } else {
                        ""
                    }
                ),
            }
            Ok(())
        }
    }
}
