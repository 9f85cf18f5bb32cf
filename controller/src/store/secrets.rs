//! App secrets under `<app>/<KEY>`, stored as the `sealing` module sealed them.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};

use super::tables::SECRETS;
use super::{db_err, Store, StoreError};

impl Store {
    /// Sets a secret; returns whether it is new.
    pub fn set_secret(&self, app: &str, key: &str, value: &str) -> Result<bool, StoreError> {
        let k = format!("{app}/{key}");
        let tx = self.db.begin_write().map_err(db_err)?;
        let created = {
            let mut table = tx.open_table(SECRETS).map_err(db_err)?;
            let old = table.insert(k.as_str(), value).map_err(db_err)?;
            old.is_none()
        };
        self.commit(tx)?;
        Ok(created)
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
}
