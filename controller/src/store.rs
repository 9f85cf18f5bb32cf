//! The controller's durable state in one redb file (`DATA_DIR/state.redb`).
//!
//! redb over SQLite: pure Rust (no C toolchain or libsqlite3 on the controller host),
//! ACID with fsync'd commits, one file, and a typed table API that keeps records as
//! versioned JSON we control. The controller never starts over an unreadable store: a
//! silently empty store would forget every host, token and revocation.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Tables of JSON records under string keys.
type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;

const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
/// Key: `<app>/<version>`.
const RELEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("releases");
/// Key: `<app>/<KEY>`; value: the secret. The store file is 0600 in a 0700 directory.
const SECRETS: TableDefinition<&str, &str> = TableDefinition::new("secrets");
/// The fleet-wide firewall policy: key `policy` (TOML) and `applied_at_ms`.
const FIREWALL: TableDefinition<&str, &str> = TableDefinition::new("firewall");
/// Rollouts by id (`<app>/<start ms, 16 digits>`), JSON, rewritten after every step.
const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts");
/// Key: `<app>/<host>`; the release each host should run, from the last rollout or deploy
/// that decided it (JSON, shape owned by `converge`).
const DESIRED: TableDefinition<&str, &[u8]> = TableDefinition::new("desired");

/// The one list of tables: `create` makes them, `open` adds any a store made by an older
/// controller lacks (so every reader may assume they exist).
fn open_every_table(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(HOSTS).map_err(db_err)?;
    tx.open_table(TOKENS).map_err(db_err)?;
    tx.open_table(REVOKED).map_err(db_err)?;
    tx.open_table(AUDIT).map_err(db_err)?;
    tx.open_table(META).map_err(db_err)?;
    tx.open_table(APPS).map_err(db_err)?;
    tx.open_table(RELEASES).map_err(db_err)?;
    tx.open_table(SECRETS).map_err(db_err)?;
    tx.open_table(FIREWALL).map_err(db_err)?;
    tx.open_table(ROLLOUTS).map_err(db_err)?;
    tx.open_table(DESIRED).map_err(db_err)?;
    Ok(())
}

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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HostRecord {
    pub name: String,
    pub enrolled_at_ms: i64,
    /// Last peer address seen (IP only).
    pub address: String,
    pub last_seen_ms: i64,
    pub version: String,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub cores: u32,
    pub memory_bytes: u64,
    /// Serials of certificates issued to this host that have not yet expired; all of them
    /// are revoked when the host is removed.
    pub serials: Vec<IssuedSerial>,
    pub cert_expires: i64,
    /// Port of the agent's Prometheus `/metrics` (0: off or not reported yet), from its
    /// last Hello; records written before agents reported it read as 0.
    #[serde(default)]
    pub metrics_port: u32,
    /// Operator-chosen group (Prometheus `group` label); empty for none.
    #[serde(default)]
    pub group: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IssuedSerial {
    pub serial: String,
    pub not_after: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub token_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_total: u32,
    pub uses_left: u32,
    pub created_by: String,
    /// Group given to hosts that join with this token; empty for none.
    #[serde(default)]
    pub group: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RevokedRecord {
    pub serial: String,
    pub identity: String,
    pub revoked_at: i64,
    /// After this the certificate is dead anyway and the record can be dropped.
    pub not_after: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AppRecord {
    pub name: String,
    pub spec_toml: String,
    pub updated_at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReleaseRecord {
    pub app: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub uploaded_at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub seq: u64,
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

pub struct Store {
    db: Database,
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

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(Self::FILE)
    }

    /// Creates a new, empty store; fails if one exists.
    pub fn create(path: &Path) -> Result<Store, StoreError> {
        if path.exists() {
            return Err(StoreError::Db(format!("{} already exists", path.display())));
        }
        let db = Database::create(path).map_err(db_err)?;
        let store = Store { db };
        let tx = store.db.begin_write().map_err(db_err)?;
        {
            open_every_table(&tx)?;
            let mut meta = tx.open_table(META).map_err(db_err)?;
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
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
        let store = Store { db };
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
        tx.commit().map_err(db_err)
    }

    /// The stored firewall policy TOML and when it was last applied (Unix ms).
    pub fn firewall_policy(&self) -> Result<Option<(String, i64)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        // `open` created the table in stores made before the firewall existed.
        let table = tx.open_table(FIREWALL).map_err(db_err)?;
        let Some(policy) = table.get("policy").map_err(db_err)? else {
            return Ok(None);
        };
        let at = table
            .get("applied_at_ms")
            .map_err(db_err)?
            .and_then(|v| v.value().parse().ok())
            .unwrap_or(0);
        Ok(Some((policy.value().to_owned(), at)))
    }

    pub fn set_firewall_policy(&self, toml: &str, at_ms: i64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(FIREWALL).map_err(db_err)?;
            table.insert("policy", toml).map_err(db_err)?;
            table
                .insert("applied_at_ms", at_ms.to_string().as_str())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
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
        tx.commit().map_err(db_err)
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
        tx.commit().map_err(db_err)
    }

    pub fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.all_json(HOSTS)
    }

    pub fn host(&self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        self.get_json(HOSTS, name)
    }

    pub fn put_host(&self, host: &HostRecord) -> Result<(), StoreError> {
        self.put_json(HOSTS, &host.name, host)
    }

    /// Reads, changes and writes one host in a single transaction; `None` if absent.
    pub fn update_host<R>(
        &self,
        name: &str,
        change: impl FnOnce(&mut HostRecord) -> R,
    ) -> Result<Option<R>, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let result = {
            let mut table = tx.open_table(HOSTS).map_err(db_err)?;
            let current: Option<HostRecord> = {
                let got = table.get(name).map_err(db_err)?;
                got.map(|v| decode("hosts", name, v.value())).transpose()?
            };
            match current {
                None => None,
                Some(mut host) => {
                    let r = change(&mut host);
                    table
                        .insert(name, encode(&host).as_slice())
                        .map_err(db_err)?;
                    Some(r)
                }
            }
        };
        tx.commit().map_err(db_err)?;
        Ok(result)
    }

    /// Removes a host and revokes every certificate it holds, in one transaction, so a
    /// crash can never leave a removed host with a live certificate.
    pub fn remove_host(
        &self,
        name: &str,
        identity: &str,
        now: i64,
    ) -> Result<Option<Vec<RevokedRecord>>, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let revoked = {
            let mut hosts = tx.open_table(HOSTS).map_err(db_err)?;
            let host: Option<HostRecord> = {
                let got = hosts.remove(name).map_err(db_err)?;
                got.map(|v| decode("hosts", name, v.value())).transpose()?
            };
            match host {
                None => None,
                Some(host) => {
                    let mut table = tx.open_table(REVOKED).map_err(db_err)?;
                    let mut out = Vec::new();
                    for s in host.serials {
                        let rec = RevokedRecord {
                            serial: s.serial,
                            identity: identity.to_owned(),
                            revoked_at: now,
                            not_after: s.not_after,
                        };
                        table
                            .insert(rec.serial.as_str(), encode(&rec).as_slice())
                            .map_err(db_err)?;
                        out.push(rec);
                    }
                    // A rejoining host starts fresh: no release is owed to a removed one.
                    let mut desired = tx.open_table(DESIRED).map_err(db_err)?;
                    let stale: Vec<String> = desired
                        .iter()
                        .map_err(db_err)?
                        .filter_map(|row| row.ok().map(|(k, _)| k.value().to_owned()))
                        .filter(|k| k.split_once('/').is_some_and(|(_, h)| h == name))
                        .collect();
                    for key in stale {
                        desired.remove(key.as_str()).map_err(db_err)?;
                    }
                    Some(out)
                }
            }
        };
        tx.commit().map_err(db_err)?;
        Ok(revoked)
    }

    pub fn revoked(&self) -> Result<Vec<RevokedRecord>, StoreError> {
        self.all_json(REVOKED)
    }

    pub fn put_token(&self, hash: &str, token: &TokenRecord) -> Result<(), StoreError> {
        self.put_json(TOKENS, hash, token)
    }

    /// Spends one use of a token atomically. `decide` sees the current record (or `None`)
    /// and says whether the use is allowed; the decrement commits only if it is.
    pub fn spend_token<E>(
        &self,
        hash: &str,
        decide: impl FnOnce(Option<&TokenRecord>) -> Result<(), E>,
    ) -> Result<Result<TokenRecord, E>, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let outcome = {
            let mut table = tx.open_table(TOKENS).map_err(db_err)?;
            let current: Option<TokenRecord> = {
                let got = table.get(hash).map_err(db_err)?;
                got.map(|v| decode("tokens", hash, v.value())).transpose()?
            };
            match decide(current.as_ref()) {
                Err(e) => Err(e),
                Ok(()) => {
                    let mut token = current.expect("decide allowed a missing token");
                    token.uses_left = token.uses_left.saturating_sub(1);
                    table
                        .insert(hash, encode(&token).as_slice())
                        .map_err(db_err)?;
                    Ok(token)
                }
            }
        };
        match &outcome {
            Ok(_) => tx.commit().map_err(db_err)?,
            Err(_) => tx.abort().map_err(db_err)?,
        }
        Ok(outcome)
    }

    /// Drops tokens expired before `before` and revocations of certificates that expired
    /// before it: both are dead weight after that.
    pub fn prune(&self, before: i64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut tokens = tx.open_table(TOKENS).map_err(db_err)?;
            tokens
                .retain(|_, v| {
                    serde_json::from_slice::<TokenRecord>(v)
                        .map(|t| t.expires_at >= before)
                        .unwrap_or(true)
                })
                .map_err(db_err)?;
            let mut revoked = tx.open_table(REVOKED).map_err(db_err)?;
            revoked
                .retain(|_, v| {
                    serde_json::from_slice::<RevokedRecord>(v)
                        .map(|r| r.not_after >= before)
                        .unwrap_or(true)
                })
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    pub fn app(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        self.get_json(APPS, name)
    }

    pub fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        self.all_json(APPS)
    }

    pub fn put_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        self.put_json(APPS, &app.name, app)
    }

    /// Writes a rollout record under `id`, replacing the previous step's.
    pub fn put_rollout<T: Serialize>(&self, id: &str, rec: &T) -> Result<(), StoreError> {
        self.put_json(ROLLOUTS, id, rec)
    }

    /// Every rollout record, by id (per app, oldest first).
    pub fn rollouts<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        self.all_json(ROLLOUTS)
    }

    /// The release `host` should run for `app`, if one was decided.
    pub fn desired<T: DeserializeOwned>(
        &self,
        app: &str,
        host: &str,
    ) -> Result<Option<T>, StoreError> {
        self.get_json(DESIRED, &format!("{app}/{host}"))
    }

    /// Records (or with `None`, forgets) the release `host` should run for `app`.
    pub fn set_desired<T: Serialize>(
        &self,
        app: &str,
        host: &str,
        value: Option<&T>,
    ) -> Result<(), StoreError> {
        let key = format!("{app}/{host}");
        match value {
            Some(v) => self.put_json(DESIRED, &key, v),
            None => {
                let tx = self.db.begin_write().map_err(db_err)?;
                {
                    let mut table = tx.open_table(DESIRED).map_err(db_err)?;
                    table.remove(key.as_str()).map_err(db_err)?;
                }
                tx.commit().map_err(db_err)
            }
        }
    }

    /// Every app with a desired release on `host`, as (app, record).
    pub fn desired_on<T: DeserializeOwned>(
        &self,
        host: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(DESIRED).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            if let Some((app, h)) = k.value().split_once('/') {
                if h == host {
                    out.push((app.to_owned(), decode("desired", k.value(), v.value())?));
                }
            }
        }
        Ok(out)
    }

    pub fn release(&self, app: &str, version: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        self.get_json(RELEASES, &format!("{app}/{version}"))
    }

    /// Releases of `app`, oldest upload first.
    pub fn releases(&self, app: &str) -> Result<Vec<ReleaseRecord>, StoreError> {
        let prefix = format!("{app}/");
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(RELEASES).map_err(db_err)?;
        let mut out: Vec<ReleaseRecord> = Vec::new();
        for row in table.range(prefix.as_str()..).map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(decode("releases", k.value(), v.value())?);
        }
        out.sort_by_key(|r| r.uploaded_at);
        Ok(out)
    }

    /// Whether any release (of any app) still refers to this blob.
    pub fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(RELEASES).map_err(db_err)?;
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let r: ReleaseRecord = decode("releases", k.value(), v.value())?;
            if r.sha256 == sha256 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Records a release unless that version exists; returns the existing record if so.
    pub fn put_release_if_absent(
        &self,
        rec: &ReleaseRecord,
    ) -> Result<Option<ReleaseRecord>, StoreError> {
        let key = format!("{}/{}", rec.app, rec.version);
        let tx = self.db.begin_write().map_err(db_err)?;
        let existing = {
            let mut table = tx.open_table(RELEASES).map_err(db_err)?;
            let existing: Option<ReleaseRecord> = {
                let got = table.get(key.as_str()).map_err(db_err)?;
                got.map(|v| decode("releases", &key, v.value()))
                    .transpose()?
            };
            if existing.is_none() {
                table
                    .insert(key.as_str(), encode(rec).as_slice())
                    .map_err(db_err)?;
            }
            existing
        };
        tx.commit().map_err(db_err)?;
        Ok(existing)
    }

    /// Sets a secret; returns whether it is new.
    pub fn set_secret(&self, app: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        let k = format!("{app}/{key}");
        let tx = self.db.begin_write().map_err(db_err)?;
        let created = {
            let mut table = tx.open_table(SECRETS).map_err(db_err)?;
            let old = table.insert(k.as_str(), value).map_err(db_err)?;
            old.is_none()
        };
        tx.commit().map_err(db_err)?;
        Ok(created)
    }

    /// All secrets of `app` by name.
    pub fn secrets(
        &self,
        app: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let prefix = format!("{app}/");
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(SECRETS).map_err(db_err)?;
        let mut out = std::collections::BTreeMap::new();
        for row in table.range(prefix.as_str()..).map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            match k.value().strip_prefix(&prefix) {
                Some(name) => out.insert(name.to_owned(), v.value().to_owned()),
                None => break,
            };
        }
        Ok(out)
    }

    pub fn append_audit(
        &self,
        time_ms: i64,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<AuditRecord, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = tx.open_table(AUDIT).map_err(db_err)?;
            let seq = table
                .last()
                .map_err(db_err)?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(1);
            let record = AuditRecord {
                seq,
                time_ms,
                actor: actor.to_owned(),
                action: action.to_owned(),
                target: target.to_owned(),
                detail: detail.to_owned(),
            };
            table
                .insert(seq, encode(&record).as_slice())
                .map_err(db_err)?;
            record
        };
        tx.commit().map_err(db_err)?;
        Ok(record)
    }

    pub fn audit_since(&self, since_ms: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let rec: AuditRecord = decode("audit", &k.value().to_string(), v.value())?;
            if rec.time_ms >= since_ms {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostRecord {
        HostRecord {
            name: name.into(),
            enrolled_at_ms: 1,
            address: "127.0.0.1".into(),
            last_seen_ms: 0,
            version: String::new(),
            hostname: String::new(),
            os: String::new(),
            kernel: String::new(),
            cores: 0,
            memory_bytes: 0,
            serials: vec![IssuedSerial {
                serial: "ab".into(),
                not_after: 100,
            }],
            cert_expires: 100,
            group: String::new(),
            metrics_port: 0,
        }
    }

    #[test]
    fn desired_releases_are_per_app_and_host() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("s.redb")).unwrap();
        s.set_desired("shop", "host1", Some(&"2.0")).unwrap();
        s.set_desired("shop", "host10", Some(&"2.1")).unwrap();
        s.set_desired("api", "host1", Some(&"1.0")).unwrap();
        assert_eq!(
            s.desired::<String>("shop", "host1").unwrap().as_deref(),
            Some("2.0")
        );
        let on: Vec<(String, String)> = s.desired_on("host1").unwrap();
        assert_eq!(
            on,
            [("api".into(), "1.0".into()), ("shop".into(), "2.0".into())]
        );
        s.set_desired::<String>("shop", "host1", None).unwrap();
        assert_eq!(s.desired::<String>("shop", "host1").unwrap(), None);
        assert_eq!(s.desired_on::<String>("host10").unwrap().len(), 1);
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = Store::create(&path).unwrap();
            s.put_host(&host("web-1")).unwrap();
            s.append_audit(5, "me", "host.add", "web-1", "").unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.hosts().unwrap(), vec![host("web-1")]);
        assert_eq!(s.audit_since(0).unwrap()[0].seq, 1);
        assert_eq!(s.append_audit(6, "me", "x", "y", "").unwrap().seq, 2);
    }

    #[test]
    fn garbage_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        std::fs::write(
            &path,
            b"this is not a database, it is a text file ".repeat(200),
        )
        .unwrap();
        let err = Store::open(&path).err().expect("garbage accepted");
        assert!(matches!(err, StoreError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains("restore the file from a backup"));
        // Untouched: the operator's evidence is still there.
        assert!(std::fs::read(&path).unwrap().starts_with(b"this is not"));
    }

    #[test]
    fn missing_store_says_to_init() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(&dir.path().join("state.redb")).err().unwrap();
        assert!(err.to_string().contains("fleet-controller init"));
    }

    #[test]
    fn remove_host_forgets_the_releases_it_was_owed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("s.redb")).unwrap();
        s.put_host(&host("web-1")).unwrap();
        s.put_host(&host("web-10")).unwrap();
        s.set_desired("shop", "web-1", Some(&"2.0".to_owned()))
            .unwrap();
        s.set_desired("shop", "web-10", Some(&"2.0".to_owned()))
            .unwrap();
        s.remove_host("web-1", "spiffe://x/agent/web-1", 7).unwrap();
        assert_eq!(s.desired::<String>("shop", "web-1").unwrap(), None);
        assert_eq!(
            s.desired::<String>("shop", "web-10").unwrap().as_deref(),
            Some("2.0")
        );
    }

    #[test]
    fn remove_host_revokes_its_serials_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("s.redb")).unwrap();
        s.put_host(&host("web-1")).unwrap();
        let revoked = s
            .remove_host("web-1", "spiffe://x/agent/web-1", 7)
            .unwrap()
            .unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(s.host("web-1").unwrap().is_none());
        assert_eq!(s.revoked().unwrap()[0].serial, "ab");
        assert!(s.remove_host("web-1", "x", 8).unwrap().is_none());
    }

    #[test]
    fn releases_are_per_app_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("s.redb")).unwrap();
        let rec = |app: &str, v: &str, sha: &str, at| ReleaseRecord {
            app: app.into(),
            version: v.into(),
            sha256: sha.into(),
            size: 1,
            uploaded_at: at,
        };
        assert!(s
            .put_release_if_absent(&rec("shop", "1", "aa", 2))
            .unwrap()
            .is_none());
        assert!(s
            .put_release_if_absent(&rec("shop", "0", "bb", 1))
            .unwrap()
            .is_none());
        assert!(s
            .put_release_if_absent(&rec("shopx", "1", "cc", 3))
            .unwrap()
            .is_none());
        let existing = s
            .put_release_if_absent(&rec("shop", "1", "dd", 4))
            .unwrap()
            .unwrap();
        assert_eq!(existing.sha256, "aa");
        let versions: Vec<String> = s
            .releases("shop")
            .unwrap()
            .into_iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(versions, ["0", "1"]);
        assert!(s.blob_in_use("cc").unwrap());
        assert!(!s.blob_in_use("dd").unwrap());
    }

    #[test]
    fn rollouts_are_replaced_by_id_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::create(&path).unwrap();
            store
                .put_rollout("shop/1", &serde_json::json!({"step": 1}))
                .unwrap();
            store
                .put_rollout("shop/1", &serde_json::json!({"step": 2}))
                .unwrap();
            store
                .put_rollout("api/1", &serde_json::json!({"step": 7}))
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let all: Vec<serde_json::Value> = store.rollouts().unwrap();
        assert_eq!(
            all,
            vec![
                serde_json::json!({"step": 7}),
                serde_json::json!({"step": 2})
            ]
        );
    }

    #[test]
    fn secrets_are_per_app() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("s.redb")).unwrap();
        assert!(s.set_secret("shop", "DB", "one").unwrap());
        assert!(!s.set_secret("shop", "DB", "two").unwrap());
        s.set_secret("shopx", "DB", "other").unwrap();
        let got = s.secrets("shop").unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got["DB"], "two");
    }

    #[test]
    fn spending_a_token_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("s.redb")).unwrap();
        let t = TokenRecord {
            token_id: "id".into(),
            created_at: 0,
            expires_at: 10,
            uses_total: 1,
            uses_left: 1,
            group: String::new(),
            created_by: "me".into(),
        };
        s.put_token("h", &t).unwrap();
        let refuse = |t: Option<&TokenRecord>| match t {
            Some(t) if t.uses_left > 0 => Ok(()),
            _ => Err("spent"),
        };
        assert_eq!(s.spend_token("h", refuse).unwrap().unwrap().uses_left, 0);
        assert_eq!(s.spend_token("h", refuse).unwrap(), Err("spent"));
        assert_eq!(s.spend_token("nope", refuse).unwrap(), Err("spent"));
    }

    #[test]
    fn host_records_from_before_metrics_port_still_load() {
        let mut old = serde_json::to_value(host("h")).unwrap();
        old.as_object_mut().unwrap().remove("metrics_port");
        let bytes = serde_json::to_vec(&old).unwrap();
        let record: HostRecord = decode("hosts", "h", &bytes).unwrap();
        assert_eq!(record.metrics_port, 0);
    }
}
