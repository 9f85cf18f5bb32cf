//! An app's life on its hosts beyond its release: stopped on purpose, and removed (with
//! the removal owed to hosts that were down). Both keyed `<host>/<app>`, so a session
//! start reads one key range; the per-app reads scan only these small tables, for
//! operator actions (stop, start, remove, deploy), never per event.

use std::collections::BTreeSet;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::releases::ReleaseRecord;
use super::tables::{
    host_range, JsonTable, APPS, DESIRED, RELEASES, REMOVALS, SECRETS, SECRET_META, STOPPED,
};
use super::{db_err, decode, encode, Store, StoreError};

/// Who asked, and when (Unix seconds).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LifecycleRecord {
    pub by: String,
    pub at: i64,
}

/// What `remove_app` deleted: the releases (whose blobs live outside the store), and the
/// hosts that now owe the removal.
pub struct RemovedApp {
    pub releases: Vec<ReleaseRecord>,
    pub hosts: BTreeSet<String>,
}

fn key(host: &str, app: &str) -> String {
    format!("{host}/{app}")
}

impl Store {
    /// Marks `app` stopped (Some) or running (None) on each of `hosts`, in one commit.
    pub fn set_stopped(
        &self,
        app: &str,
        hosts: &[String],
        rec: Option<&LifecycleRecord>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(STOPPED).map_err(db_err)?;
            for host in hosts {
                let k = key(host, app);
                match rec {
                    Some(r) => {
                        table
                            .insert(k.as_str(), encode(r).as_slice())
                            .map_err(db_err)?;
                    }
                    None => {
                        table.remove(k.as_str()).map_err(db_err)?;
                    }
                }
            }
        }
        self.commit(tx)
    }

    /// Whether an operator stopped `app` on `host`.
    pub fn is_stopped(&self, app: &str, host: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(STOPPED).map_err(db_err)?;
        Ok(table
            .get(key(host, app).as_str())
            .map_err(db_err)?
            .is_some())
    }

    /// The hosts `app` is stopped on.
    pub fn stopped_hosts(&self, app: &str) -> Result<BTreeSet<String>, StoreError> {
        self.hosts_of(STOPPED, app)
    }

    /// The hosts with a desired release of `app`.
    pub fn desired_hosts(&self, app: &str) -> Result<BTreeSet<String>, StoreError> {
        self.hosts_of(DESIRED, app)
    }

    /// The hosts that still owe `app` its removal.
    pub fn pending_removals(&self, app: &str) -> Result<BTreeSet<String>, StoreError> {
        self.hosts_of(REMOVALS, app)
    }

    /// The apps `host` still has to remove.
    pub fn removals_on(&self, host: &str) -> Result<Vec<String>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(REMOVALS).map_err(db_err)?;
        let (from, to) = host_range(host);
        let mut out = Vec::new();
        for row in table.range(from.as_str()..to.as_str()).map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            if let Some((_, app)) = k.value().split_once('/') {
                out.push(app.to_owned());
            }
        }
        Ok(out)
    }

    /// `host` confirmed that `app` is gone from it.
    pub fn removal_done(&self, host: &str, app: &str) -> Result<(), StoreError> {
        self.delete_key(REMOVALS, &key(host, app))
    }

    /// Deletes `app` from the store in one transaction: its spec, secrets, releases,
    /// desired and stopped state; and records the removal as owed by each of `hosts` and
    /// every host it had a desired release or a stop on, until they confirm it. Returns
    /// None (writing nothing) when there is no such app.
    pub fn remove_app(
        &self,
        app: &str,
        hosts: &BTreeSet<String>,
        rec: &LifecycleRecord,
    ) -> Result<Option<RemovedApp>, StoreError> {
        let prefix = format!("{app}/");
        let suffix = format!("/{app}");
        let tx = self.db.begin_write().map_err(db_err)?;
        let removed = {
            let mut apps = tx.open_table(APPS).map_err(db_err)?;
            let existed = apps.remove(app).map_err(db_err)?.is_some();
            if existed {
                let mut releases = Vec::new();
                let mut table = tx.open_table(RELEASES).map_err(db_err)?;
                for row in table.range(prefix.as_str()..).map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    if !k.value().starts_with(&prefix) {
                        break;
                    }
                    releases.push(decode("releases", k.value(), v.value())?);
                }
                table
                    .retain(|k, _| !k.starts_with(&prefix))
                    .map_err(db_err)?;
                let mut secrets = tx.open_table(SECRETS).map_err(db_err)?;
                secrets
                    .retain(|k, _| !k.starts_with(&prefix))
                    .map_err(db_err)?;
                let mut metas = tx.open_table(SECRET_META).map_err(db_err)?;
                metas
                    .retain(|k, _| !k.starts_with(&prefix))
                    .map_err(db_err)?;
                let mut owing = hosts.clone();
                for def in [DESIRED, STOPPED] {
                    let mut t = tx.open_table(def).map_err(db_err)?;
                    t.retain(|k, _| match k.strip_suffix(&suffix) {
                        Some(host) => {
                            owing.insert(host.to_owned());
                            false
                        }
                        None => true,
                    })
                    .map_err(db_err)?;
                }
                let mut owed = tx.open_table(REMOVALS).map_err(db_err)?;
                for host in &owing {
                    owed.insert(key(host, app).as_str(), encode(rec).as_slice())
                        .map_err(db_err)?;
                }
                Some(RemovedApp {
                    releases,
                    hosts: owing,
                })
            } else {
                None
            }
        };
        match removed {
            Some(r) => {
                self.commit(tx)?;
                Ok(Some(r))
            }
            None => {
                tx.abort().map_err(db_err)?;
                Ok(None)
            }
        }
    }

    fn hosts_of(&self, def: JsonTable, app: &str) -> Result<BTreeSet<String>, StoreError> {
        let suffix = format!("/{app}");
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(def).map_err(db_err)?;
        let mut out = BTreeSet::new();
        for row in table.iter().map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            if let Some(host) = k.value().strip_suffix(&suffix) {
                out.insert(host.to_owned());
            }
        }
        Ok(out)
    }
}
