//! `fleetctl hosts`, `fleetctl host set-group` and `fleetctl host remove`.

use clap::Subcommand;
use fleet_proto::v1::{
    ListHostsRequest, RemoveHostRequest, SetHostCordonRequest, SetHostGroupRequest,
};
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum HostCmd {
    /// Remove a host: revoke its certificate at once and close its stream. Only a new
    /// join token brings it back.
    Remove { name: String },
    /// Keep a host out of deploys and rollouts (e.g. while it is repaired); it keeps
    /// running what it runs.
    Cordon {
        name: String,
        /// Why, shown in `fleetctl hosts` and the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Let a cordoned host back into deploys and rollouts.
    Uncordon { name: String },
    /// Put a host in a group (the `group` label Prometheus gets from discovery).
    SetGroup {
        name: String,
        /// Group name; omit with --none to take the host out of its group.
        #[arg(required_unless_present = "none")]
        group: Option<String>,
        #[arg(long, conflicts_with = "group")]
        none: bool,
    },
}

/// Hosts per `ListHosts` page asked for (the controller's maximum, `paging::MAX_PAGE`).
const HOSTS_PAGE: u32 = 2000;

pub async fn list(conn: &Conn, format: Format) -> anyhow::Result<()> {
    let mut admin = conn.admin().await?;
    let mut hosts = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_hosts(ListHostsRequest {
                page_token,
                // The controller's largest page (its byte budget still applies): 10 round
                // trips for 20,000 hosts instead of 40.
                limit: HOSTS_PAGE,
            })
            .await
            .map_err(|s| conn.status(s))?
            .into_inner();
        hosts.extend(page.hosts);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    match format {
        Format::Json => output::json(&json!(hosts
            .iter()
            .map(|h| json!({
                "name": h.name,
                "address": h.address,
                "via": (!h.via.is_empty()).then_some(&h.via),
                "state": h.state,
                "last_seen": output::time(h.last_seen),
                "version": h.version,
                "package_version": h.facts.as_ref().map(|f| f.package_version.clone()).unwrap_or_default(),
                "group": h.group,
                "cert_expires": output::time(h.cert_expires),
                "cordoned": h.cordoned,
                "cordon_reason": (!h.cordon_reason.is_empty()).then_some(&h.cordon_reason),
            }))
            .collect::<Vec<_>>())),
        Format::Table => output::table(
            &[
                "NAME",
                "ADDRESS",
                "STATE",
                "GROUP",
                "LAST SEEN",
                "VERSION",
                "PACKAGE",
                "CERT EXPIRES",
            ],
            &hosts
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        if h.via.is_empty() {
                            h.address.clone()
                        } else {
                            format!("{} via {}", h.address, h.via)
                        },
                        if h.cordoned {
                            format!("{} (cordoned)", h.state)
                        } else {
                            h.state.clone()
                        },
                        if h.group.is_empty() {
                            "-".to_owned()
                        } else {
                            h.group.clone()
                        },
                        output::time_or_dash(h.last_seen),
                        h.version.clone(),
                        h.facts
                            .as_ref()
                            .map(|f| f.package_version.clone())
                            .filter(|v| !v.is_empty())
                            .unwrap_or_else(|| "-".to_owned()),
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
        HostCmd::SetGroup { name, group, none } => {
            let group = if none {
                String::new()
            } else {
                group.unwrap_or_default()
            };
            let host = conn
                .admin()
                .await?
                .set_host_group(SetHostGroupRequest {
                    name: name.clone(),
                    group: group.clone(),
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(&json!({"name": host.name, "group": host.group})),
                Format::Table if host.group.is_empty() => {
                    println!("host {} is in no group", host.name)
                }
                Format::Table => println!("host {} is in group {}", host.name, host.group),
            }
            Ok(())
        }
        HostCmd::Cordon { name, reason } => cordon(conn, name, true, reason, format).await,
        HostCmd::Uncordon { name } => cordon(conn, name, false, String::new(), format).await,
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

async fn cordon(
    conn: &Conn,
    name: String,
    cordoned: bool,
    reason: String,
    format: Format,
) -> anyhow::Result<()> {
    let host = conn
        .admin()
        .await?
        .set_host_cordon(SetHostCordonRequest {
            name,
            cordoned,
            reason,
        })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    match format {
        Format::Json => output::json(
            &json!({"name": host.name, "cordoned": host.cordoned, "reason": host.cordon_reason}),
        ),
        Format::Table if host.cordoned => println!(
            "host {} cordoned: deploys and rollouts leave it as it is until `fleetctl host uncordon {}`",
            host.name, host.name
        ),
        Format::Table => println!("host {} is back in deploys and rollouts", host.name),
    }
    Ok(())
}
