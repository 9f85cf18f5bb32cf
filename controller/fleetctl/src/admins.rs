//! `fleetctl admin add|list|revoke|request`: more than one operator, each with a role
//! (viewer, deployer, admin) and a key that never leaves where it was made.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use fleet_proto::access::OperatorRole;
use fleet_proto::files::write_atomic;
use fleet_proto::identity::Name;
use fleet_proto::v1::{AddAdminRequest, ListAdminsRequest, RevokeAdminRequest};
use rcgen::{CertificateParams, KeyPair};
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Issue an identity for a new operator. Without --csr the key is made here and
    /// DIR gets admin.key, admin.crt and ca.crt (hand DIR over as safely as a password);
    /// with --csr (from `fleetctl admin request`) the key stays with its owner and DIR
    /// gets admin.crt and ca.crt for them.
    Add {
        name: Name,
        #[arg(long)]
        role: OperatorRole,
        /// Directory to write the identity to (must not exist yet, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// A certificate request the new operator made with `fleetctl admin request`.
        #[arg(long)]
        csr: Option<PathBuf>,
    },
    /// Operators, their roles, who added them and when.
    List,
    /// Stop an operator: every call with any of their certificates is refused from now on.
    Revoke { name: Name },
    /// Make your own key and a certificate request to send to an admin (`admin add
    /// --csr`): DIR gets admin.key (0600, stays here) and admin.csr.
    Request {
        #[arg(long)]
        out: PathBuf,
    },
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty: name a new directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

fn csr_for(key: &KeyPair) -> anyhow::Result<String> {
    CertificateParams::default()
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .context("cannot make a certificate request")
}

pub async fn run(conn: &Conn, cmd: AdminCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        AdminCmd::Request { out } => {
            fresh_dir(&out)?;
            let key = KeyPair::generate().context("cannot make a key")?;
            write_atomic(
                &out.join("admin.key"),
                key.serialize_pem().as_bytes(),
                0o600,
            )?;
            write_atomic(&out.join("admin.csr"), csr_for(&key)?.as_bytes(), 0o644)?;
            match format {
                Format::Json => output::json(&json!({"key": out.join("admin.key"), "csr": out.join("admin.csr")})),
                Format::Table => println!(
                    "key in {} (keep it here); send {} to an admin for `fleetctl admin add NAME --role R --csr admin.csr --out DIR`, then put their admin.crt and ca.crt next to your key",
                    out.join("admin.key").display(),
                    out.join("admin.csr").display()
                ),
            }
            Ok(())
        }
        AdminCmd::Add {
            name,
            role,
            out,
            csr,
        } => {
            let (key, csr_pem) = match &csr {
                Some(path) => (
                    None,
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                None => {
                    let key = KeyPair::generate().context("cannot make a key")?;
                    let csr = csr_for(&key)?;
                    (Some(key), csr)
                }
            };
            fresh_dir(&out)?;
            let resp = conn
                .admin()
                .await?
                .add_admin(AddAdminRequest {
                    name: name.to_string(),
                    role: role.as_str().into(),
                    csr_pem,
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            if let Some(key) = &key {
                write_atomic(
                    &out.join("admin.key"),
                    key.serialize_pem().as_bytes(),
                    0o600,
                )?;
            }
            write_atomic(&out.join("admin.crt"), resp.cert_pem.as_bytes(), 0o644)?;
            write_atomic(&out.join("ca.crt"), resp.ca_pem.as_bytes(), 0o644)?;
            match format {
                Format::Json => output::json(&json!({
                    "name": name.as_str(),
                    "role": role.as_str(),
                    "serial": resp.serial,
                    "not_after": output::time(resp.not_after),
                    "dir": out,
                })),
                Format::Table => println!(
                    "operator {name} added as {role}; identity in {} (fleetctl --identity {} …), valid until {}",
                    out.display(),
                    out.display(),
                    output::time_or_dash(resp.not_after)
                ),
            }
            Ok(())
        }
        AdminCmd::List => {
            let resp = conn
                .admin()
                .await?
                .list_admins(ListAdminsRequest {})
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(&json!(resp
                    .admins
                    .iter()
                    .map(|a| json!({
                        "name": a.name,
                        "role": a.role,
                        "created_at": output::time(a.created_at),
                        "created_by": a.created_by,
                        "revoked_at": output::time(a.revoked_at),
                    }))
                    .collect::<Vec<_>>())),
                Format::Table => output::table(
                    &["NAME", "ROLE", "ADDED", "BY", "REVOKED"],
                    &resp
                        .admins
                        .iter()
                        .map(|a| {
                            vec![
                                a.name.clone(),
                                a.role.clone(),
                                output::time_or_dash(a.created_at),
                                a.created_by.clone(),
                                output::time_or_dash(a.revoked_at),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
        AdminCmd::Revoke { name } => {
            let resp = conn
                .admin()
                .await?
                .revoke_admin(RevokeAdminRequest {
                    name: name.to_string(),
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(
                    &json!({"name": name.as_str(), "revoked_serials": resp.revoked_serials}),
                ),
                Format::Table => println!(
                    "operator {name} revoked ({} certificate(s)); every call of theirs is refused from now on",
                    resp.revoked_serials.len()
                ),
            }
            Ok(())
        }
    }
}
