//! An app's life on its hosts beyond its release: stopped on purpose, and removed (with
//! the removal owed to hosts that were down). Both keyed `<host>/<app>`, so a session
//! start reads one key range; the per-app reads scan only these small tables, for
//! operator actions (stop, start, remove, deploy), never per event.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::kv::{
    host_range, prefixed, span, Tbl, ALL, APPS, DESIRED, RELEASES, REMOVALS, SECRETS, SECRET_META,
    STOPPED,
};
use super::releases::ReleaseRecord;
use super::{decode, encode, Store, StoreError};

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
        let mut tx = self.write()?;
        for host in hosts {
            let k = key(host, app);
            match rec {
                Some(r) => {
                    tx.insert(STOPPED, &k, &encode(r))?;
                }
                None => {
                    tx.remove(STOPPED, &k)?;
                }
            }
        }
        self.commit(tx)
    }

    /// Whether an operator stopped `app` on `host`.
    pub fn is_stopped(&self, app: &str, host: &str) -> Result<bool, StoreError> {
        Ok(self.read()?.get(STOPPED, &key(host, app))?.is_some())
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
        let range = host_range(host);
        Ok(self
            .read()?
            .keys(REMOVALS, span(&range))?
            .into_iter()
            .filter_map(|k| k.split_once('/').map(|(_, app)| app.to_owned()))
            .collect())
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
        let suffix = format!("/{app}");
        let mut tx = self.write()?;
        if tx.remove(APPS, app)?.is_none() {
            return Ok(None);
        }
        let own = prefixed(&format!("{app}/"));
        let releases = tx
            .range(RELEASES, span(&own), None)?
            .into_iter()
            .map(|(k, v)| decode(RELEASES.name, &k, &v))
            .collect::<Result<Vec<ReleaseRecord>, _>>()?;
        for t in [RELEASES, SECRETS, SECRET_META] {
            tx.remove_span(t, span(&own))?;
        }
        let mut owing = hosts.clone();
        for t in [DESIRED, STOPPED] {
            for k in tx.keys(t, ALL)? {
                if let Some(host) = k.strip_suffix(&suffix) {
                    owing.insert(host.to_owned());
                    tx.remove(t, &k)?;
                }
            }
        }
        for host in &owing {
            tx.insert(REMOVALS, &key(host, app), &encode(rec))?;
        }
        self.commit(tx)?;
        Ok(Some(RemovedApp {
            releases,
            hosts: owing,
        }))
    }

    fn hosts_of(&self, t: Tbl, app: &str) -> Result<BTreeSet<String>, StoreError> {
        let suffix = format!("/{app}");
        Ok(self
            .read()?
            .keys(t, ALL)?
            .into_iter()
            .filter_map(|k| k.strip_suffix(&suffix).map(str::to_owned))
            .collect())
    }
}
