//! `fleet-controller init --replica-of DIR`: prepares the data directory of one more
//! controller on a fleet's shared store (docs/ha.md). It takes what every controller of
//! the fleet must share from an existing one's directory, the CA and the secrets'
//! sealing key, and issues the new one a serving certificate of its own for its own
//! names; the admin identity stays behind (operators keep theirs).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use fleet_proto::identity::TrustDomain;

use crate::datadir::{create_dir_private, write_new, DataDir};
use crate::init::TRUST_DOMAIN_KEY;
use crate::pki::Ca;
use crate::sealing::Sealer;
use crate::store::pg::PgConfig;
use crate::store::Store;

pub struct ReplicaOutcome {
    pub pin: String,
    pub sans: Vec<String>,
}

pub fn prepare(
    from: &Path,
    dir: &Path,
    extra_sans: &[String],
    server_cert_lifetime: Duration,
    pg: &PgConfig,
) -> anyhow::Result<ReplicaOutcome> {
    crate::config::check_server_cert_lifetime(server_cert_lifetime)?;
    let src = DataDir(from.to_owned());
    let dd = DataDir(dir.to_owned());
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty: a replica's data directory must be new (pass another --data-dir)",
            dir.display()
        );
    }
    // The fleet's records say which trust domain its CA must be of.
    let store = Store::open_pg(pg).context("cannot use the [store] database")?;
    let td: TrustDomain = store
        .meta(TRUST_DOMAIN_KEY)?
        .context("the store names no trust domain: was the fleet made by `fleet-controller init`?")?
        .parse()?;
    let ca_pem = src.read(&src.ca_cert())?;
    let ca_key = src.read(&src.ca_key())?;
    let ca = Ca::load(td, &ca_pem, &ca_key).with_context(|| {
        format!(
            "the CA in {} is not the one of the fleet in {}",
            from.display(),
            pg.describe()
        )
    })?;
    let sealing = src.read(&from.join(Sealer::FILE)).with_context(|| {
        format!(
            "{} holds no sealing key: without it this replica could not read the fleet's secrets",
            from.display()
        )
    })?;
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for s in extra_sans {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    let server = ca.new_server_identity(&sans, server_cert_lifetime)?;

    create_dir_private(dir)?;
    write_new(&dd.ca_key(), &ca_key, 0o600)?;
    write_new(&dd.ca_cert(), &ca_pem, 0o644)?;
    write_new(&dir.join(Sealer::FILE), &sealing, 0o600)?;
    write_new(&dd.server_key(), &server.key_pem, 0o600)?;
    write_new(&dd.server_cert(), &server.issued.cert_pem, 0o644)?;
    store.append_audit(
        crate::timefmt::now_ms(),
        "fleet-controller init",
        "fleet.replica",
        &sans.join(","),
        &format!("replica prepared from {}", from.display()),
    )?;
    Ok(ReplicaOutcome {
        pin: ca.pin().to_string(),
        sans,
    })
}
