//! `fleet-controller init`: a new fleet's CA, the controller's serving certificate, the
//! first admin identity and an empty store.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use fleet_proto::identity::{Identity, TrustDomain};

use crate::datadir::{create_dir_private, write_new, DataDir};
use crate::pki::Ca;
use crate::store::Store;

pub const TRUST_DOMAIN_KEY: &str = "trust_domain";

pub struct InitOutcome {
    pub pin: String,
    pub admin_dir: std::path::PathBuf,
}

pub fn init(
    dir: &Path,
    trust_domain: TrustDomain,
    extra_sans: &[String],
    server_cert_lifetime: Duration,
    admin_cert_lifetime: Duration,
    pg: Option<&crate::store::pg::PgConfig>,
) -> anyhow::Result<InitOutcome> {
    crate::config::check_server_cert_lifetime(server_cert_lifetime)?;
    crate::config::check_admin_cert_lifetime(admin_cert_lifetime)?;
    let dd = DataDir(dir.to_owned());
    for existing in [dd.ca_cert(), dd.ca_key(), dd.store()] {
        if existing.exists() {
            bail!(
                "{} already holds a fleet ({} exists): refusing to overwrite it. Use another --data-dir, or move the old one away if you really mean to start a new fleet",
                dir.display(),
                existing.display()
            );
        }
    }
    // Localhost names are always included so fleetctl works on the controller host itself.
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for s in extra_sans {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }

    let (ca, ca_key) = Ca::generate(trust_domain.clone())?;
    let server = ca.new_server_identity(&sans, server_cert_lifetime)?;
    let admin_id = Identity::admin(trust_domain.clone(), "admin".parse().expect("literal name"));
    let admin = ca.new_client_identity(&admin_id, admin_cert_lifetime)?;

    // A database is checked (reachable, no fleet in it) before any file is written.
    let pg_store = match pg {
        Some(config) => Some(Store::create_pg(config).context("cannot use the [store] database")?),
        None => None,
    };
    // Everything is made in memory first; nothing is written unless all of it succeeded.
    create_dir_private(dir)?;
    create_dir_private(&dd.admin_dir())?;
    write_new(&dd.ca_key(), &ca_key, 0o600)?;
    write_new(&dd.ca_cert(), ca.cert_pem(), 0o644)?;
    write_new(&dd.server_key(), &server.key_pem, 0o600)?;
    write_new(&dd.server_cert(), &server.issued.cert_pem, 0o644)?;
    write_new(&dd.admin_dir().join("admin.key"), &admin.key_pem, 0o600)?;
    write_new(
        &dd.admin_dir().join("admin.crt"),
        &admin.issued.cert_pem,
        0o644,
    )?;
    write_new(&dd.admin_dir().join("ca.crt"), ca.cert_pem(), 0o644)?;
    let store = match pg_store {
        Some(store) => store,
        None => {
            let store = Store::create(&dd.store()).context("cannot create the controller state")?;
            // Token hashes and the audit log are nobody else's business.
            std::fs::set_permissions(
                dd.store(),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            store
        }
    };
    store.set_meta(TRUST_DOMAIN_KEY, trust_domain.as_str())?;
    store.append_audit(
        crate::timefmt::now_ms(),
        "fleet-controller init",
        "fleet.init",
        trust_domain.as_str(),
        &format!("CA {}; controller SANs {}", ca.pin(), sans.join(",")),
    )?;
    Ok(InitOutcome {
        pin: ca.pin().to_string(),
        admin_dir: dd.admin_dir(),
    })
}

/// What `migrate` moved.
pub struct MigrateOutcome {
    pub rows: u64,
    /// Release and package blobs copied into the database.
    pub blobs: usize,
    /// Where the redb file went, so a controller started without `[store]` by mistake
    /// finds no stale state to serve.
    pub moved_to: std::path::PathBuf,
}

/// `fleet-controller migrate`: copies a stopped controller's redb state into an empty
/// PostgreSQL database in one transaction, then renames the file. The blobs its records
/// name are copied first, so every controller on the database can serve them. The CA,
/// keys and sealing key stay in the data directory; agents keep their certificates.
pub fn migrate(dir: &Path, pg: &crate::store::pg::PgConfig) -> anyhow::Result<MigrateOutcome> {
    let dd = DataDir(dir.to_owned());
    let path = dd.store();
    let from = Store::open(&path).with_context(|| {
        format!(
            "cannot open {} (if the controller is running, stop it first: \
             systemctl stop fleet-controller)",
            path.display()
        )
    })?;
    let to = Store::create_pg(pg).context("cannot use the [store] database")?;
    let refs = from.blob_refs().context("cannot list release blobs")?;
    let mut blobs = 0;
    for (sha, size) in &refs {
        let file = dd.0.join("blobs").join(sha);
        let mut f = match std::fs::File::open(&file) {
            Ok(f) => std::io::BufReader::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(sha256 = %sha, "a release blob named by a record is missing from the data directory; not copied");
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        to.put_blob(sha, *size, &mut f)
            .with_context(|| format!("cannot copy blob {sha}; no record was migrated"))?;
        blobs += 1;
    }
    let rows = from.copy_into(&to).context("nothing was migrated")?;
    drop(from);
    let moved_to = path.with_extension(format!("redb.migrated-{}", crate::timefmt::now_secs()));
    std::fs::rename(&path, &moved_to).with_context(|| {
        format!(
            "migrated {rows} records, but cannot move {} aside: move it yourself before \
             starting the controller",
            path.display()
        )
    })?;
    Ok(MigrateOutcome {
        rows,
        blobs,
        moved_to,
    })
}
