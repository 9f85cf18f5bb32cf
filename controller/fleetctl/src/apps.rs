//! `fleetctl app apply|list|show|stop|start|remove`.

use std::path::PathBuf;

use clap::Subcommand;
use fleet_proto::spec::{AppName, AppSpec};
use fleet_proto::v1::{
    ApplyAppRequest, GetAppRequest, ListAppsRequest, RemoveAppRequest, SetAppRunningRequest,
};
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum AppCmd {
    /// Create or update an app from its spec (TOML).
    Apply { file: PathBuf },
    /// List apps.
    List,
    /// Show an app's spec, releases and which secrets are set.
    Show { app: AppName },
    /// Stop the app and keep it down (across agent restarts and reboots; deploys and
    /// rollouts leave it out) until `app start`. A host that is down stops it when it
    /// connects.
    Stop {
        app: AppName,
        /// Comma-separated hosts [default: every host the app is on]
        #[arg(long, alias = "host", value_delimiter = ',')]
        hosts: Vec<String>,
    },
    /// Start a stopped app again and wait until it is healthy.
    Start {
        app: AppName,
        /// Comma-separated hosts [default: every host the app is on]
        #[arg(long, alias = "host", value_delimiter = ',')]
        hosts: Vec<String>,
    },
    /// Remove the app: its units, env, log rotation and releases from every host (a host
    /// that is down when it connects), then its spec, releases and secrets from the
    /// controller. Logs and the app's system user stay on the hosts. Cannot be undone.
    Remove {
        app: AppName,
        /// Confirm: removal cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn app(conn: &Conn, cmd: AppCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        AppCmd::Stop { app, hosts } => return set_running(conn, app, hosts, false, format).await,
        AppCmd::Start { app, hosts } => return set_running(conn, app, hosts, true, format).await,
        AppCmd::Remove { app, yes } => {
            if !yes {
                anyhow::bail!(
                    "removing {app} deletes it from every host and its spec, releases and \
                     secrets from the controller, and cannot be undone: add --yes"
                );
            }
            let stream = conn
                .admin()
                .await?
                .remove_app(RemoveAppRequest {
                    app: app.to_string(),
                    yes,
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            let failed = crate::run::follow(conn, stream, format).await?;
            if !failed.is_empty() {
                anyhow::bail!(
                    "{app} is removed from the controller, but removing it failed on {} host(s) \
                     (it is sent again each time they connect):\n  {}",
                    failed.len(),
                    failed.join("\n  ")
                );
            }
            return Ok(());
        }
        AppCmd::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            // Validate here too, so a typo is reported before anything is sent.
            AppSpec::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let resp = conn
                .admin()
                .await?
                .apply_app(ApplyAppRequest { spec_toml: text })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(
                    &json!({"app": resp.app, "created": resp.created, "changed": resp.changed}),
                ),
                Format::Table => println!(
                    "app {} {}",
                    resp.app,
                    if resp.created {
                        "created"
                    } else if resp.changed {
                        "updated"
                    } else {
                        "unchanged"
                    }
                ),
            }
        }
        AppCmd::List => {
            let apps = conn
                .admin()
                .await?
                .list_apps(ListAppsRequest {})
                .await
                .map_err(|s| conn.status(s))?
                .into_inner()
                .apps;
            match format {
                Format::Json => output::json(&json!(apps
                    .iter()
                    .map(|a| json!({"app": a.app, "server": a.server, "releases": a.releases, "latest_release": a.latest_release, "hosts": a.hosts}))
                    .collect::<Vec<_>>())),
                Format::Table => output::table(
                    &["APP", "SERVER", "RELEASES", "LATEST", "HOSTS"],
                    &apps
                        .iter()
                        .map(|a| vec![a.app.clone(), a.server.clone(), a.releases.to_string(), a.latest_release.clone(), a.hosts.to_string()])
                        .collect::<Vec<_>>(),
                ),
            }
        }
        AppCmd::Show { app } => {
            let info = conn
                .admin()
                .await?
                .get_app(GetAppRequest { app: app.into() })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(&json!({
                    "app": info.app,
                    "spec": info.spec_toml,
                    "releases": info.releases.iter().map(|r| json!({"version": r.version, "sha256": r.sha256, "size": r.size, "uploaded_at": output::time(r.uploaded_at)})).collect::<Vec<_>>(),
                    "secrets_set": info.secrets_set,
                    "secrets_missing": info.secrets_missing,
                })),
                Format::Table => {
                    println!("{}", info.spec_toml.trim_end());
                    println!();
                    output::table(
                        &["RELEASE", "SHA256", "SIZE", "UPLOADED"],
                        &info
                            .releases
                            .iter()
                            .map(|r| {
                                vec![
                                    r.version.clone(),
                                    r.sha256[..12.min(r.sha256.len())].to_owned(),
                                    r.size.to_string(),
                                    output::time_or_dash(r.uploaded_at),
                                ]
                            })
                            .collect::<Vec<_>>(),
                    );
                    println!();
                    println!(
                        "secrets set: {}",
                        if info.secrets_set.is_empty() {
                            "-".into()
                        } else {
                            info.secrets_set.join(", ")
                        }
                    );
                    if !info.secrets_missing.is_empty() {
                        println!("secrets missing: {}", info.secrets_missing.join(", "));
                    }
                }
            }
        }
    }
    Ok(())
}

async fn set_running(
    conn: &Conn,
    app: AppName,
    hosts: Vec<String>,
    running: bool,
    format: Format,
) -> anyhow::Result<()> {
    let stream = conn
        .admin()
        .await?
        .set_app_running(SetAppRunningRequest {
            app: app.to_string(),
            hosts,
            running,
        })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    let failed = crate::run::follow(conn, stream, format).await?;
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {app} failed on {} host(s):\n  {}",
            if running { "start" } else { "stop" },
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}
