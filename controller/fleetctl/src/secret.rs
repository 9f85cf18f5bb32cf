//! `fleetctl secret set|list|unset`. Values go in through stdin only and never come out.

use std::io::Read;

use clap::Subcommand;
use fleet_proto::spec::AppName;
use fleet_proto::v1::{ListSecretsRequest, SetSecretRequest, UnsetSecretRequest};
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Set a secret; the value is read from stdin (never from the command line).
    Set { app: AppName, key: String },
    /// The app's secrets: names, when and by whom each was set, whether the spec needs
    /// it. Never a value.
    List { app: AppName },
    /// Remove a secret from the controller. Hosts keep the value until the app's next
    /// deploy or rollout, which no longer carries it.
    Unset {
        app: AppName,
        name: String,
        /// Also when the app's spec needs it (its deploys then fail until it is set).
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(conn: &Conn, cmd: SecretCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        SecretCmd::Set { app, key } => set(conn, app, key, format).await,
        SecretCmd::List { app } => {
            let resp = conn
                .admin()
                .await?
                .list_secrets(ListSecretsRequest {
                    app: app.to_string(),
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(&json!(resp
                    .secrets
                    .iter()
                    .map(|s| json!({
                        "name": s.name,
                        "set_at": output::time(s.set_at_ms / 1000),
                        "set_by": (!s.set_by.is_empty()).then_some(&s.set_by),
                        "in_spec": s.in_spec,
                    }))
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let rows: Vec<Vec<String>> = resp
                        .secrets
                        .iter()
                        .map(|s| {
                            vec![
                                s.name.clone(),
                                output::time_or_dash(s.set_at_ms / 1000),
                                if s.set_by.is_empty() {
                                    "-".into()
                                } else {
                                    s.set_by.clone()
                                },
                                if s.in_spec { "yes" } else { "no" }.into(),
                            ]
                        })
                        .collect();
                    output::table(&["NAME", "SET AT", "SET BY", "IN SPEC"], &rows);
                }
            }
            Ok(())
        }
        SecretCmd::Unset { app, name, force } => {
            let resp = conn
                .admin()
                .await?
                .unset_secret(UnsetSecretRequest {
                    app: app.to_string(),
                    name: name.clone(),
                    force,
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(
                    &json!({"app": app.as_str(), "name": name, "existed": resp.existed}),
                ),
                Format::Table if resp.existed => println!(
                    "secret {name} of {app} unset; hosts keep it until the next deploy or rollout of {app}"
                ),
                Format::Table => println!("{app} has no secret {name}: nothing changed"),
            }
            Ok(())
        }
    }
}

async fn set(conn: &Conn, app: AppName, key: String, format: Format) -> anyhow::Result<()> {
    let mut value = String::new();
    std::io::stdin()
        .read_to_string(&mut value)
        .map_err(|e| anyhow::anyhow!("cannot read the secret value from stdin: {e}"))?;
    // `echo value | fleetctl secret set` adds one newline that is not part of the secret.
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    let resp = conn
        .admin()
        .await?
        .set_secret(SetSecretRequest {
            app: app.to_string(),
            key: key.clone(),
            value,
        })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    match format {
        Format::Json => {
            output::json(&json!({"app": app.as_str(), "key": key, "created": resp.created}))
        }
        Format::Table => println!(
            "secret {key} of {app} {}",
            if resp.created { "set" } else { "changed" }
        ),
    }
    Ok(())
}
