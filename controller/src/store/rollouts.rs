//! Rollout records and the release each host should run (shapes owned by `rollout` and
//! `converge`; stored here as JSON).

use redb::{ReadableDatabase, ReadableTable};
use serde::{de::DeserializeOwned, Serialize};

use super::tables::{DESIRED, ROLLOUTS};
use super::{db_err, decode, Store, StoreError};

impl Store {
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
}
