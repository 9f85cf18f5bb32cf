//! The controller's durable state in one redb file (`DATA_DIR/state.redb`).
//!
//! redb over SQLite: pure Rust (no C toolchain or libsqlite3 on the controller host),
//! ACID with fsync'd commits, one file, and a typed table API that keeps records as
//! versioned JSON we control. The controller never starts over an unreadable store: a
//! silently empty store would forget every host, token and revocation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, TableHandle, WriteTransaction};
use serde::{de::DeserializeOwned, Serialize};

mod admins;
mod apps;
mod audit;
mod cordon;
mod credentials;
mod firewall;
mod hosts;
mod lifecycle;
mod releases;
mod rollouts;
mod secrets;
mod tables;
#[cfg(test)]
mod tests;

pub use admins::AdminRecord;
pub use apps::AppRecord;
pub use audit::AuditRecord;
pub use cordon::CordonRecord;
pub use credentials::{JoinAudit, RevokedRecord, TokenRecord};
pub use hosts::{HostRecord, IssuedSerial};
pub use lifecycle::{LifecycleRecord, RemovedApp};
pub use releases::{AgentPackageRecord, ReleaseRecord};
pub use secrets::SecretMeta;

use tables::{copy_every_table, open_every_table, JsonTable, META};

const SCHEMA_KEY: &str = "schema";
const SCHEMA_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "controller state {path} is unreadable ({reason}). The controller will not start \
         with an empty fleet over it: restore the file from a backup, or move it away and \
         run `fleet-controller init` again to start a new fleet (every agent must then \
         re-enroll)"
    )]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "controller state {0} does not exist: run `fleet-controller init --data-dir DIR` first"
    )]
    Missing(PathBuf),
    #[error("controller state: {0}")]
    Db(String),
    #[error("controller state record {table}/{key} is corrupt: {reason}")]
    Record {
        table: String,
        key: String,
        reason: String,
    },
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

pub struct Store {
    db: Database,
    /// Durable commits since open: each is at least one fsync, the figure that bounds how
    /// fast the controller can write on a slow disk (`fleet_controller_store_commits_total`).
    commits: AtomicU64,
}

fn decode<T: DeserializeOwned>(table: &str, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Record {
        table: table.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

impl Store {
    pub const FILE: &'static str = "state.redb";

    fn new(db: Database) -> Store {
        Store {
            db,
            commits: AtomicU64::new(0),
        }
    }

    fn commit(&self, tx: WriteTransaction) -> Result<(), StoreError> {
        tx.commit().map_err(db_err)?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Durable commits since the store was opened.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(Self::FILE)
    }

    /// Writes a consistent copy of the whole store to a new file at `dest` (one read
    /// transaction: writers go on meanwhile and none of their later commits is in it).
    pub fn snapshot(&self, dest: &Path) -> Result<(), StoreError> {
        if dest.exists() {
            return Err(StoreError::Db(format!("{} already exists", dest.display())));
        }
        let from = self.db.begin_read().map_err(db_err)?;
        let copy = Database::create(dest).map_err(db_err)?;
        let tx = copy.begin_write().map_err(db_err)?;
        copy_every_table(&from, &tx)?;
        tx.commit().map_err(db_err)
    }

    /// Names of the tables in the store file, for checks of the snapshot.
    pub fn table_names(&self) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let mut names: Vec<String> = tx
            .list_tables()
            .map_err(db_err)?
            .map(|t| t.name().to_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Creates a new, empty store; fails if one exists.
    pub fn create(path: &Path) -> Result<Store, StoreError> {
        if path.exists() {
            return Err(StoreError::Db(format!("{} already exists", path.display())));
        }
        let db = Database::create(path).map_err(db_err)?;
        let store = Store::new(db);
        let tx = store.db.begin_write().map_err(db_err)?;
        {
            open_every_table(&tx)?;
            let mut meta = tx.open_table(META).map_err(db_err)?;
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION).map_err(db_err)?;
        }
        store.commit(tx)?;
        Ok(store)
    }

    /// Opens an existing store, refusing anything that is not a fleet store we can read.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_owned()));
        }
        let unreadable = |reason: String| StoreError::Unreadable {
            path: path.to_owned(),
            reason,
        };
        // redb reports a file it cannot read as an error (controller_cli's corrupt-store
        // test feeds it garbage). Release builds abort on panic, so a panic here could not
        // be caught and turned into this message anyway.
        let db = Database::open(path).map_err(|e| unreadable(e.to_string()))?;
        let store = Store::new(db);
        let schema = (|| -> Result<Option<String>, StoreError> {
            let tx = store.db.begin_read().map_err(db_err)?;
            let meta = tx.open_table(META).map_err(db_err)?;
            Ok(meta
                .get(SCHEMA_KEY)
                .map_err(db_err)?
                .map(|v| v.value().to_owned()))
        })()
        .map_err(|e| unreadable(e.to_string()))?;
        match schema.as_deref() {
            Some(SCHEMA_VERSION) => {
                store.ensure_tables()?;
                Ok(store)
            }
            Some(other) => Err(unreadable(format!(
                "schema version {other} is not supported by this controller (expects {SCHEMA_VERSION})"
            ))),
            None => Err(unreadable("no fleet schema marker".into())),
        }
    }

    /// Tables added after a store was created are created empty on open.
    fn ensure_tables(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        open_every_table(&tx)?;
        self.commit(tx)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(META).map_err(db_err)?;
        Ok(table
            .get(key)
            .map_err(db_err)?
            .map(|v| v.value().to_owned()))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(META).map_err(db_err)?;
            table.insert(key, value).map_err(db_err)?;
        }
        self.commit(tx)
    }

    /// One JSON record of a string-keyed table, or `None`.
    fn get_json<T: DeserializeOwned>(
        &self,
        def: JsonTable,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(def).map_err(db_err)?;
        let got = table.get(key).map_err(db_err)?;
        got.map(|v| decode(def.name(), key, v.value())).transpose()
    }

    /// Every JSON record of a string-keyed table, in key order.
    fn all_json<T: DeserializeOwned>(&self, def: JsonTable) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(def).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(decode(def.name(), k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Writes one JSON record in its own transaction.
    fn put_json<T: Serialize>(
        &self,
        def: JsonTable,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(def).map_err(db_err)?;
            table
                .insert(key, encode(value).as_slice())
                .map_err(db_err)?;
        }
        self.commit(tx)
    }

    /// Every JSON record of a string-keyed table by key.
    fn all_json_keyed<T: DeserializeOwned>(
        &self,
        def: JsonTable,
    ) -> Result<std::collections::BTreeMap<String, T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(def).map_err(db_err)?;
        let mut out = std::collections::BTreeMap::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.insert(
                k.value().to_owned(),
                decode(def.name(), k.value(), v.value())?,
            );
        }
        Ok(out)
    }

    /// Deletes one key in its own transaction (nothing is written when it is absent).
    fn delete_key(&self, def: JsonTable, key: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let existed = {
            let mut table = tx.open_table(def).map_err(db_err)?;
            let old = table.remove(key).map_err(db_err)?;
            old.is_some()
        };
        if existed {
            self.commit(tx)
        } else {
            tx.abort().map_err(db_err)
        }
    }
}
