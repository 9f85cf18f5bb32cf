//! The store's tables: each one defined here, and the one list `create` and `open`
//! make sure exist.

use redb::TableDefinition;

use super::{db_err, StoreError};

/// Tables of JSON records under string keys.
pub(super) type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;

pub(super) const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
pub(super) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
pub(super) const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked");
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
pub(super) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub(super) const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
/// Key: `<app>/<version>`.
pub(super) const RELEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("releases");
/// Key: `<app>/<KEY>`; value: the secret. The store file is 0600 in a 0700 directory.
pub(super) const SECRETS: TableDefinition<&str, &str> = TableDefinition::new("secrets");
/// Key: `<app>/<KEY>` as in `SECRETS`; value: JSON `SecretMeta` (when and by whom).
pub(super) const SECRET_META: TableDefinition<&str, &[u8]> = TableDefinition::new("secret_meta");
/// The fleet-wide firewall policy: key `policy` (TOML) and `applied_at_ms`.
pub(super) const FIREWALL: TableDefinition<&str, &str> = TableDefinition::new("firewall");
/// Rollouts by id (`<app>/<start ms, 16 digits>`), JSON, rewritten after every step.
pub(super) const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts");
/// Key: `<host>/<app>`; the release each host should run, from the last rollout or deploy
/// that decided it (JSON, shape owned by `converge`). Host first, so a session start or a
/// host removal reads one key range instead of the whole table.
pub(super) const DESIRED: TableDefinition<&str, &[u8]> = TableDefinition::new("desired_by_host");
/// The same records keyed `<app>/<host>`, as controllers before `desired_by_host` kept
/// them; moved over once on open.
pub(super) const DESIRED_V0: TableDefinition<&str, &[u8]> = TableDefinition::new("desired");

/// Keys of `DESIRED` for one host: `<host>/` up to (not including) `<host>0`, since `0`
/// follows `/` and names hold no `/`.
pub(super) fn host_range(host: &str) -> (String, String) {
    (format!("{host}/"), format!("{host}0"))
}
/// Cordoned hosts by name (JSON `CordonRecord`): out of deploys and rollouts.
pub(super) const CORDONED: TableDefinition<&str, &[u8]> = TableDefinition::new("cordoned");
/// Key: `<host>/<app>`: apps an operator stopped on a host (JSON `StopRecord`); they
/// stay down and deploys and rollouts leave them out until started again.
pub(super) const STOPPED: TableDefinition<&str, &[u8]> = TableDefinition::new("stopped");
/// Key: `<host>/<app>`: removals of an app its host has not confirmed yet (JSON
/// `RemovalRecord`), sent again each time the host connects until it does.
pub(super) const REMOVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("removals");
/// Operators by name: role and revocation (JSON `AdminRecord`).
pub(super) const ADMINS: TableDefinition<&str, &[u8]> = TableDefinition::new("admins");
/// fleet-agent packages by Debian version; their bytes are blobs like releases.
pub(super) const AGENT_PACKAGES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("agent_packages");

/// The one list of tables: `create` makes them, `open` adds any a store made by an older
/// controller lacks (so every reader may assume they exist).
pub(super) fn open_every_table(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(HOSTS).map_err(db_err)?;
    tx.open_table(TOKENS).map_err(db_err)?;
    tx.open_table(REVOKED).map_err(db_err)?;
    tx.open_table(AUDIT).map_err(db_err)?;
    tx.open_table(META).map_err(db_err)?;
    tx.open_table(APPS).map_err(db_err)?;
    tx.open_table(RELEASES).map_err(db_err)?;
    tx.open_table(SECRETS).map_err(db_err)?;
    tx.open_table(SECRET_META).map_err(db_err)?;
    tx.open_table(FIREWALL).map_err(db_err)?;
    tx.open_table(ROLLOUTS).map_err(db_err)?;
    tx.open_table(DESIRED).map_err(db_err)?;
    tx.open_table(AGENT_PACKAGES).map_err(db_err)?;
    tx.open_table(ADMINS).map_err(db_err)?;
    tx.open_table(CORDONED).map_err(db_err)?;
    tx.open_table(STOPPED).map_err(db_err)?;
    tx.open_table(REMOVALS).map_err(db_err)?;
    migrate_desired(tx)
}

/// Copies every table `open_every_table` makes from `from` into `to` (a new store's
/// transaction): one read transaction is one consistent moment. Keep the two lists in
/// step; `store::tests` checks that a snapshot has every table the store has.
pub(super) fn copy_every_table(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
) -> Result<(), StoreError> {
    for def in [
        HOSTS,
        TOKENS,
        REVOKED,
        APPS,
        RELEASES,
        SECRET_META,
        ROLLOUTS,
        DESIRED,
        AGENT_PACKAGES,
        ADMINS,
        CORDONED,
        STOPPED,
        REMOVALS,
    ] {
        copy_json(from, to, def)?;
    }
    for def in [META, SECRETS, FIREWALL] {
        copy_text(from, to, def)?;
    }
    use redb::ReadableTable;
    let src = from.open_table(AUDIT).map_err(db_err)?;
    let mut dst = to.open_table(AUDIT).map_err(db_err)?;
    for row in src.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        dst.insert(k.value(), v.value()).map_err(db_err)?;
    }
    Ok(())
}

fn copy_json(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    def: JsonTable,
) -> Result<(), StoreError> {
    use redb::ReadableTable;
    let src = from.open_table(def).map_err(db_err)?;
    let mut dst = to.open_table(def).map_err(db_err)?;
    for row in src.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        dst.insert(k.value(), v.value()).map_err(db_err)?;
    }
    Ok(())
}

fn copy_text(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    def: TableDefinition<&str, &str>,
) -> Result<(), StoreError> {
    use redb::ReadableTable;
    let src = from.open_table(def).map_err(db_err)?;
    let mut dst = to.open_table(def).map_err(db_err)?;
    for row in src.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        dst.insert(k.value(), v.value()).map_err(db_err)?;
    }
    Ok(())
}

fn migrate_desired(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    use redb::{ReadableTable, TableHandle};
    let exists = tx
        .list_tables()
        .map_err(db_err)?
        .any(|t| t.name() == DESIRED_V0.name());
    if !exists {
        return Ok(());
    }
    {
        let old = tx.open_table(DESIRED_V0).map_err(db_err)?;
        let mut new = tx.open_table(DESIRED).map_err(db_err)?;
        for row in old.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            if let Some((app, host)) = k.value().split_once('/') {
                new.insert(format!("{host}/{app}").as_str(), v.value())
                    .map_err(db_err)?;
            }
        }
    }
    tx.delete_table(DESIRED_V0).map_err(db_err)?;
    Ok(())
}
