//! `fleetctl identity show|renew`: the admin identity fleetctl uses, and a new certificate
//! for its key before the current one expires (agents renew theirs by themselves; an
//! admin box may be offline for months, so this one is asked for).

use std::path::Path;

use anyhow::{bail, Context};
use clap::Subcommand;
use fleet_proto::peer::{cert_info, CertInfo};
use fleet_proto::transport::{certs_from_pem, provider};
use fleet_proto::v1::{RenewIdentityRequest, RevokeCertificateRequest};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum IdentityCmd {
    /// Who this identity is and until when its certificate is valid.
    Show,
    /// Get a new certificate for a new key from the controller; admin.key and admin.crt
    /// are replaced as a pair (crash-safe), and the old certificate is revoked.
    Renew,
    /// Revoke a certificate by its serial (an admin's that leaked or whose holder left);
    /// hosts are revoked with `fleetctl host remove`.
    Revoke {
        /// Serial number in hex, as `fleetctl identity show` prints it.
        serial: String,
    },
}

pub async fn run(conn: &Conn, cmd: IdentityCmd, format: Format) -> anyhow::Result<()> {
    let dir = conn.identity_dir();
    let current = read_cert(&conn.read("admin.crt")?)
        .with_context(|| format!("{} is unusable", dir.join("admin.crt").display()))?;
    let info = match cmd {
        IdentityCmd::Show => current,
        IdentityCmd::Renew => renew(conn, dir, &current).await?,
        IdentityCmd::Revoke { serial } => return revoke(conn, &serial, format).await,
    };
    let row = |info: &CertInfo| {
        vec![
            info.identity.uri(),
            info.serial.clone(),
            output::time_or_dash(info.not_after),
        ]
    };
    match format {
        Format::Json => output::json(&json!({
            "identity": info.identity.uri(),
            "serial": info.serial,
            "not_after": output::time(info.not_after),
            "dir": dir.display().to_string(),
        })),
        Format::Table => output::table(&["IDENTITY", "SERIAL", "VALID UNTIL"], &[row(&info)]),
    }
    Ok(())
}

async fn revoke(conn: &Conn, serial: &str, format: Format) -> anyhow::Result<()> {
    let r = conn
        .admin()
        .await?
        .revoke_certificate(RevokeCertificateRequest {
            serial: serial.to_owned(),
        })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    match format {
        Format::Json => output::json(&json!({"serial": serial, "newly_revoked": r.newly_revoked})),
        Format::Table if r.newly_revoked => println!("revoked {serial}"),
        Format::Table => println!("{serial} was already revoked"),
    }
    Ok(())
}

async fn renew(conn: &Conn, dir: &Path, current: &CertInfo) -> anyhow::Result<CertInfo> {
    // Every renewal rotates the key: made here, it never leaves this machine.
    let key = KeyPair::generate().context("cannot make a new key")?;
    let csr_pem = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .context("cannot make a certificate request")?;
    let resp = conn
        .connect()
        .await?
        .renew_identity(RenewIdentityRequest { csr_pem })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    // Checked before anything is written: ours, for our new key.
    let issued =
        read_cert(&resp.cert_pem).context("the controller sent an unusable certificate")?;
    if issued.identity != current.identity {
        bail!(
            "the controller issued a certificate for {}, not {}: the identity was left as it was",
            issued.identity.uri(),
            current.identity.uri()
        );
    }
    let key_pem = key.serialize_pem();
    if !pairs(&resp.cert_pem, &key_pem) {
        bail!("the renewed certificate is not for the new key: the identity was left as it was");
    }
    fleet_proto::key_swap::swap(
        &dir.join("admin.key"),
        &dir.join("admin.crt"),
        &key_pem,
        &resp.cert_pem,
        0o644,
    )
    .context(
        "the renewed certificate and its new key could not be saved (the old pair is still valid); run `fleetctl identity renew` again where the identity directory is writable",
    )?;
    Ok(issued)
}

/// Whether the certificate in `cert_pem` is for the key in `key_pem`.
pub(crate) fn pairs(cert_pem: &str, key_pem: &str) -> bool {
    let (Ok(chain), Ok(key)) = (
        certs_from_pem(cert_pem, "the admin certificate"),
        KeyPair::from_pem(key_pem),
    ) else {
        return false;
    };
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    CertifiedKey::from_der(chain, key_der, &provider()).is_ok()
}

fn read_cert(pem: &str) -> anyhow::Result<CertInfo> {
    let chain = certs_from_pem(pem, "the admin certificate")?;
    Ok(cert_info(&chain[0])?)
}
