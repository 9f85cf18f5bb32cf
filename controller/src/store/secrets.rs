//! App secrets under `<app>/<KEY>`, stored as the `sealing` module sealed them, and who
//! set each when (a separate table, so listing names never reads a sealed value).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::kv::{prefixed, span, ALL, SECRETS, SECRET_META};
use super::{decode, encode, text, Store, StoreError};

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
        let mut tx = self.write()?;
        let existed = tx.insert(SECRETS, &k, value.as_bytes())?;
        if let Some(meta) = meta {
            tx.insert(SECRET_META, &k, &encode(meta))?;
        }
        self.commit(tx)?;
        Ok(!existed)
    }

    /// Removes a secret and its record; returns whether it existed (nothing is written
    /// when it did not).
    pub fn unset_secret(&self, app: &str, key: &str) -> Result<bool, StoreError> {
        let k = format!("{app}/{key}");
        let mut tx = self.write()?;
        if tx.remove(SECRETS, &k)?.is_none() {
            return Ok(false);
        }
        tx.remove(SECRET_META, &k)?;
        self.commit(tx)?;
        Ok(true)
    }

    /// Every stored secret as ("app/KEY", stored value): for sealing old plaintext ones.
    pub fn all_secrets(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read()?
            .range(SECRETS, ALL, None)?
            .into_iter()
            .map(|(k, v)| {
                let value = text(SECRETS, &k, v)?;
                Ok((k, value))
            })
            .collect()
    }

    /// All secrets of `app` by name, as stored (sealed).
    pub fn secrets(&self, app: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let own = prefixed(&format!("{app}/"));
        let mut out = BTreeMap::new();
        for (k, v) in self.read()?.range(SECRETS, span(&own), None)? {
            let value = text(SECRETS, &k, v)?;
            if let Some((_, name)) = k.split_once('/') {
                out.insert(name.to_owned(), value);
            }
        }
        Ok(out)
    }

    /// The names of `app`'s secrets with their records (None for a secret set before
    /// records were kept), without reading a value.
    pub fn secret_names(
        &self,
        app: &str,
    ) -> Result<BTreeMap<String, Option<SecretMeta>>, StoreError> {
        let own = prefixed(&format!("{app}/"));
        let tx = self.read()?;
        let mut metas: BTreeMap<String, SecretMeta> = BTreeMap::new();
        for (k, v) in tx.range(SECRET_META, span(&own), None)? {
            metas.insert(k.clone(), decode(SECRET_META.name, &k, &v)?);
        }
        let mut out = BTreeMap::new();
        for k in tx.keys(SECRETS, span(&own))? {
            if let Some((_, name)) = k.split_once('/') {
                out.insert(name.to_owned(), metas.remove(&k));
            }
        }
        Ok(out)
    }
}
