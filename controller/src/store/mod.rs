//! The controller's durable state: versioned JSON records in named tables, in one redb
//! file (`DATA_DIR/state.redb`, the default) or in PostgreSQL (`[store] url`, for several
//! controllers: docs/ha.md). The record modules below are written once against `kv`'s
//! transactions, so both backends keep the same records the same way, and one contract
//! test suite (`tests.rs`) runs against both. The controller never starts over an
//! unreadable store: a silently empty store would forget every host, token and revocation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase};
use serde::{de::DeserializeOwned, Serialize};

mod admins;
mod apps;
mod audit;
mod cluster;
mod cordon;
mod credentials;
mod firewall;
mod hosts;
mod kv;
mod lifecycle;
pub mod pg;
mod redb_kv;
mod releases;
mod rollouts;
mod secrets;
mod shared_blobs;
#[cfg(test)]
mod tests;

pub use admins::AdminRecord;
pub use apps::AppRecord;
pub use audit::AuditRecord;
pub use cluster::ControllersRecord;
pub use cordon::CordonRecord;
pub use credentials::{JoinAudit, RevokedRecord, TokenRecord};
pub use hosts::{HostRecord, IssuedSerial};
pub use lifecycle::{LifecycleRecord, RemovedApp};
pub use releases::{AgentPackageRecord, ReleaseRecord};
pub use secrets::SecretMeta;

use kv::{copy_every_table, ReadTx, Tbl, WriteTx, ALL, META};
use redb_kv::{RedbRead, RedbWrite};

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
    #[error(
        "this controller lost the leader lease (epoch {epoch}): another controller leads \
         now, and nothing was written"
    )]
    Fenced { epoch: i64 },
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

/// Where the records live: the embedded file (the default, one controller) or a
/// PostgreSQL database (several controllers, docs/ha.md).
enum Backend {
    Redb(Database),
    Pg(pg::PgStore),
}

pub struct Store {
    backend: Backend,
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

fn text(t: Tbl, key: &str, bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::Record {
        table: t.name.to_owned(),
        key: key.to_owned(),
        reason: "not UTF-8 text".into(),
    })
}

impl Store {
    pub const FILE: &'static str = "state.redb";

    fn new(backend: Backend) -> Store {
        Store {
            backend,
            commits: AtomicU64::new(0),
        }
    }

    /// A read transaction: one consistent moment of every table.
    fn read(&self) -> Result<Box<dyn ReadTx + '_>, StoreError> {
        Ok(match &self.backend {
            Backend::Redb(db) => Box::new(RedbRead(db.begin_read().map_err(db_err)?)),
            Backend::Pg(pg) => Box::new(pg.read()?),
        })
    }

    /// A write transaction; dropped without `commit`, it changes nothing.
    fn write(&self) -> Result<Box<dyn WriteTx + '_>, StoreError> {
        Ok(match &self.backend {
            Backend::Redb(db) => Box::new(RedbWrite(db.begin_write().map_err(db_err)?)),
            Backend::Pg(pg) => Box::new(pg.write()?),
        })
    }

    fn commit(&self, tx: Box<dyn WriteTx + '_>) -> Result<(), StoreError> {
        tx.commit()?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Durable commits since the store was opened.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Which backend holds the records, for logs and `/metrics` (never the URL, which may
    /// carry a password).
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Redb(_) => "redb",
            Backend::Pg(_) => "postgres",
        }
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(Self::FILE)
    }

    /// The store a controller runs on: the PostgreSQL database `[store]` names, else the
    /// data directory's file.
    pub fn open_configured(
        data_dir: &Path,
        pg: Option<&pg::PgConfig>,
    ) -> Result<Store, StoreError> {
        match pg {
            Some(config) => Store::open_pg(config),
            None => Store::open(&Store::path(data_dir)),
        }
    }

    /// Writes a consistent copy of the whole store to a new redb file at `dest` (one read
    /// transaction: writers go on meanwhile and none of their later commits is in it). From
    /// either backend: a backup of a PostgreSQL fleet is a redb file too.
    pub fn snapshot(&self, dest: &Path) -> Result<(), StoreError> {
        if dest.exists() {
            return Err(StoreError::Db(format!("{} already exists", dest.display())));
        }
        let from = self.read()?;
        let copy = Store::create(dest)?;
        let mut to = copy.write()?;
        copy_every_table(&*from, &mut *to)?;
        to.commit()
    }

    /// Whether the store holds any record beyond its schema marker (a fleet, or part of
    /// one): `init` and `migrate` write only into a store that holds none.
    pub fn holds_records(&self) -> Result<bool, StoreError> {
        let tx = self.read()?;
        for t in kv::EVERY_TABLE {
            let rows = tx.count(t)?;
            let marker = u64::from(t == META && tx.get(META, SCHEMA_KEY)?.is_some());
            if rows > marker {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Copies every record of this store into `dest`, which must hold none yet: the
    /// `migrate` command. Returns how many rows went; one transaction, so a failure
    /// leaves `dest` as it was.
    pub fn copy_into(&self, dest: &Store) -> Result<u64, StoreError> {
        if dest.holds_records()? {
            return Err(StoreError::Db(
                "the destination already holds records: migrate only into a new, empty store"
                    .into(),
            ));
        }
        let from = self.read()?;
        let mut to = dest.write()?;
        let rows = copy_every_table(&*from, &mut *to)?;
        dest.commit(to)?;
        Ok(rows)
    }

    /// Names of the tables in the store, for checks of the snapshot.
    pub fn table_names(&self) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => redb_kv::table_names(db),
            Backend::Pg(_) => {
                let mut names: Vec<String> =
                    kv::EVERY_TABLE.iter().map(|t| t.name.to_owned()).collect();
                names.sort();
                Ok(names)
            }
        }
    }

    /// Creates a new, empty store; fails if one exists.
    pub fn create(path: &Path) -> Result<Store, StoreError> {
        if path.exists() {
            return Err(StoreError::Db(format!("{} already exists", path.display())));
        }
        let db = Database::create(path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        redb_kv::ensure_tables(&tx)?;
        let store = Store::new(Backend::Redb(db));
        let mut tx = RedbWrite(tx);
        tx.insert(META, SCHEMA_KEY, SCHEMA_VERSION.as_bytes())?;
        store.commit(Box::new(tx))?;
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
        let schema = redb_kv::read_meta(&db, SCHEMA_KEY).map_err(|e| unreadable(e.to_string()))?;
        match schema.as_deref() {
            Some(SCHEMA_VERSION) => {
                // Tables added after a store was created are created empty on open.
                let tx = db.begin_write().map_err(db_err)?;
                redb_kv::ensure_tables(&tx)?;
                let store = Store::new(Backend::Redb(db));
                store.commit(Box::new(RedbWrite(tx)))?;
                Ok(store)
            }
            Some(other) => Err(unreadable(format!(
                "schema version {other} is not supported by this controller (expects {SCHEMA_VERSION})"
            ))),
            None => Err(unreadable("no fleet schema marker".into())),
        }
    }

    /// Makes a PostgreSQL database ready for a new fleet's records (migrating its schema
    /// first); refuses a database that already holds any (a schema marker alone, from an
    /// `init` that failed before it wrote anything else, is not a fleet).
    pub fn create_pg(config: &pg::PgConfig) -> Result<Store, StoreError> {
        let pg = pg::PgStore::connect(config)?;
        let store = Store::new(Backend::Pg(pg));
        if store.holds_records()? {
            return Err(StoreError::Db(format!(
                "{} already holds a fleet: point `[store] url` at a new database, or start \
                 the controller on this one",
                config.describe()
            )));
        }
        store.set_meta(SCHEMA_KEY, SCHEMA_VERSION)?;
        Ok(store)
    }

    /// Opens the fleet's records in PostgreSQL (migrating its schema to this controller's
    /// if it is older; refusing one that is newer).
    pub fn open_pg(config: &pg::PgConfig) -> Result<Store, StoreError> {
        let pg = pg::PgStore::connect(config)?;
        let store = Store::new(Backend::Pg(pg));
        match store.meta(SCHEMA_KEY)?.as_deref() {
            Some(SCHEMA_VERSION) => Ok(store),
            Some(other) => Err(StoreError::Db(format!(
                "{} holds records of schema {other}, which this controller does not know \
                 (expects {SCHEMA_VERSION})",
                config.describe()
            ))),
            None => Err(StoreError::Db(format!(
                "{} holds no fleet yet: run `fleet-controller init` with this `[store] url` \
                 first, or `fleet-controller migrate` to move a fleet there",
                config.describe()
            ))),
        }
    }

    /// Whether several controllers may share this store (PostgreSQL): then only the
    /// holder of the leader lease serves (`leader.rs`).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// Takes the leader lease for `holder` for `ttl` if nobody holds it unexpired; its
    /// epoch, or None. The embedded file is one controller's (redb locks it), so there the
    /// lease is always this controller's, at epoch 1.
    pub fn acquire_lease(
        &self,
        holder: &pg::LeaseHolder,
        ttl: std::time::Duration,
    ) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(Some(1)),
            Backend::Pg(pg) => pg.acquire_lease(holder, ttl),
        }
    }

    /// Extends the lease by `ttl` if it is still `holder`'s at `epoch` and unexpired.
    pub fn renew_lease(
        &self,
        holder: &pg::LeaseHolder,
        epoch: i64,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(true),
            Backend::Pg(pg) => pg.renew_lease(holder, epoch, ttl),
        }
    }

    /// Ends the lease now, if it is still `holder`'s at `epoch`.
    pub fn release_lease(&self, holder: &pg::LeaseHolder, epoch: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(()),
            Backend::Pg(pg) => pg.release_lease(holder, epoch),
        }
    }

    /// The lease's holder and epoch, and whether it is unexpired (None: never taken).
    pub fn lease_holder(&self) -> Result<Option<(String, i64, bool)>, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(None),
            Backend::Pg(pg) => pg.lease_holder(),
        }
    }

    /// From now on every write transaction checks, inside itself, that the lease is still
    /// `holder`'s at `epoch`: a controller that lost it writes nothing more
    /// (`StoreError::Fenced`).
    pub fn fence(&self, holder: &pg::LeaseHolder, epoch: i64) {
        if let Backend::Pg(pg) = &self.backend {
            pg.set_fence(pg::Fence {
                holder: holder.clone(),
                epoch,
            });
        }
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read()?
            .get(META, key)?
            .map(|v| text(META, key, v))
            .transpose()
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut tx = self.write()?;
        tx.insert(META, key, value.as_bytes())?;
        self.commit(tx)
    }

    /// One JSON record of a string-keyed table, or `None`.
    fn get_json<T: DeserializeOwned>(&self, t: Tbl, key: &str) -> Result<Option<T>, StoreError> {
        self.read()?
            .get(t, key)?
            .map(|v| decode(t.name, key, &v))
            .transpose()
    }

    /// Every JSON record of a string-keyed table, in key order.
    fn all_json<T: DeserializeOwned>(&self, t: Tbl) -> Result<Vec<T>, StoreError> {
        self.read()?
            .range(t, ALL, None)?
            .into_iter()
            .map(|(k, v)| decode(t.name, &k, &v))
            .collect()
    }

    /// Writes one JSON record in its own transaction.
    fn put_json<T: Serialize>(&self, t: Tbl, key: &str, value: &T) -> Result<(), StoreError> {
        let mut tx = self.write()?;
        tx.insert(t, key, &encode(value))?;
        self.commit(tx)
    }

    /// Every JSON record of a string-keyed table by key.
    fn all_json_keyed<T: DeserializeOwned>(
        &self,
        t: Tbl,
    ) -> Result<std::collections::BTreeMap<String, T>, StoreError> {
        self.read()?
            .range(t, ALL, None)?
            .into_iter()
            .map(|(k, v)| {
                let rec = decode(t.name, &k, &v)?;
                Ok((k, rec))
            })
            .collect()
    }

    /// Deletes one key in its own transaction (nothing is written when it is absent).
    fn delete_key(&self, t: Tbl, key: &str) -> Result<(), StoreError> {
        let mut tx = self.write()?;
        if tx.remove(t, key)?.is_some() {
            self.commit(tx)
        } else {
            Ok(())
        }
    }
}
