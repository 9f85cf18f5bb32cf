//! `fleetctl app apply|list|show`.

use std::path::PathBuf;

use clap::Subcommand;
use fleet_proto::spec::{AppName, AppSpec};
use fleet_proto::v1::{ApplyAppRequest, GetAppRequest, ListAppsRequest};
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
}

pub async fn app(conn: &Conn, cmd: AppCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
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
