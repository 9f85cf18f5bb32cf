//! App secrets under `<app>/<KEY>`, stored as the `sealing` module sealed them, and who
//! set each when (a separate table, so listing names never reads a sealed value).

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::{SECRETS, SECRET_META};
use super::{db_err, decode, encode, Store, StoreError};

/// When and by whom a secret was last set; never its value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SecretMeta {
    pub set_at_ms: i64,
    pub set_by: String,
}

impl Store {
    /// Sets a secret, recording `meta` when given (re-sealing an old value keeps it);
    /// returns whether the secret is new.
    pub fn set_secret(
        &self,
        app: &str,
        key: &str,
        value: &str,
        meta: Option<&SecretMeta>,
    ) -> Result<bool, StoreError> {
        let k = format!("{app}/{key}");
        let tx = self.db.begin_write().map_err(db_err)?;
        let created = {
            let mut table = tx.open_table(SECRETS).map_err(db_err)?;
            let old = table.insert(k.as_str(), value).map_err(db_err)?;
            if let Some(meta) = meta {
                let mut metas = tx.open_table(SECRET_META).map_err(db_err)?;
                metas
                    .insert(k.as_str(), encode(meta).as_slice())
                    .map_err(db_err)?;
            }
            old.is_none()
        };
        self.commit(tx)?;
        Ok(created)
    }

    /// Removes a secret and its record; returns whether it existed (nothing is written
    /// when it did not).
    pub fn unset_secret(&self, app: &str, key: &str) -> Result<bool, StoreError> {
        let k = format!("{app}/{key}");
        let tx = self.db.begin_write().map_err(db_err)?;
        let existed = {
            let mut table = tx.open_table(SECRETS).map_err(db_err)?;
            let existed = table.remove(k.as_str()).map_err(db_err)?.is_some();
            let mut metas = tx.open_table(SECRET_META).map_err(db_err)?;
            metas.remove(k.as_str()).map_err(db_err)?;
            existed
        };
        if existed {
            self.commit(tx)?;
        } else {
            tx.abort().map_err(db_err)?;
        }
        Ok(existed)
    }

    /// Every stored secret as ("app/KEY", stored value): for sealing old plaintext ones.
    pub fn all_secrets(&self) -> Result<Vec<(String, String)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(SECRETS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }

    /// All secrets of `app` by name, as stored (sealed).
    pub fn secrets(&self, app: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let prefix = format!("{app}/");
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(SECRETS).map_err(db_err)?;
        let mut out = BTreeMap::new();
        for row in table.range(prefix.as_str()..).map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            match k.value().strip_prefix(&prefix) {
                Some(name) => out.insert(name.to_owned(), v.value().to_owned()),
                None => break,
            };
        }
        Ok(out)
    }

    /// The names of `app`'s secrets with their records (None for a secret set before
    /// records were kept), without reading a value.
    pub fn secret_names(
        &self,
        app: &str,
    ) -> Result<BTreeMap<String, Option<SecretMeta>>, StoreError> {
        let prefix = format!("{app}/");
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(SECRETS).map_err(db_err)?;
        let metas = tx.open_table(SECRET_META).map_err(db_err)?;
        let mut out = BTreeMap::new();
        for row in table.range(prefix.as_str()..).map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            let key = k.value();
            let Some(name) = key.strip_prefix(&prefix) else {
                break;
            };
            let meta = match metas.get(key).map_err(db_err)? {
                Some(v) => Some(decode("secret_meta", key, v.value())?),
                None => None,
            };
            out.insert(name.to_owned(), meta);
        }
        Ok(out)
    }
}
