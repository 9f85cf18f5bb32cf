//! Rollout records and the release each host should run (shapes owned by `rollout` and
//! `converge`; stored here as JSON).

use serde::{de::DeserializeOwned, Serialize};

use super::kv::{host_range, span, ALL, DESIRED, ROLLOUTS};
use super::{decode, encode, Store, StoreError};

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
        self.get_json(DESIRED, &format!("{host}/{app}"))
    }

    /// Records (or with `None`, forgets) the release `host` should run for `app`.
    pub fn set_desired<T: Serialize>(
        &self,
        app: &str,
        host: &str,
        value: Option<&T>,
    ) -> Result<(), StoreError> {
        self.set_desired_many(app, [(host, value)])
    }

    /// `set_desired` for many hosts of one app in one transaction: a rollout or deploy
    /// over thousands of hosts is one commit, not one per host.
    pub fn set_desired_many<'a, T: Serialize + 'a>(
        &self,
        app: &str,
        values: impl IntoIterator<Item = (&'a str, Option<&'a T>)>,
    ) -> Result<(), StoreError> {
        let (mut put, mut gone) = (Vec::new(), Vec::new());
        for (host, value) in values {
            let key = format!("{host}/{app}");
            match value {
                Some(v) => put.push((key, encode(v))),
                None => gone.push(key),
            }
        }
        let put: Vec<(&str, &[u8])> = put
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
        let mut tx = self.write()?;
        // Callers name each host once, so removals and puts do not overlap.
        tx.remove_many(DESIRED, &gone)?;
        tx.put_many(DESIRED, &put)?;
        self.commit(tx)
    }

    /// Every app with a desired release on `host`, as (app, record), by app.
    pub fn desired_on<T: DeserializeOwned>(
        &self,
        host: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let range = host_range(host);
        let mut out = Vec::new();
        for (k, v) in self.read()?.range(DESIRED, span(&range), None)? {
            if let Some((_, app)) = k.split_once('/') {
                out.push((app.to_owned(), decode(DESIRED.name, &k, &v)?));
            }
        }
        Ok(out)
    }

    /// How many hosts should run each release of `app`, by version. A scan of the whole
    /// table: for the rare `release list|remove` and pruning after an upload, never per
    /// event.
    pub fn desired_versions(
        &self,
        app: &str,
    ) -> Result<std::collections::BTreeMap<String, u32>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Version {
            version: String,
        }
        let mut out = std::collections::BTreeMap::new();
        for (k, v) in self.read()?.range(DESIRED, ALL, None)? {
            if k.split_once('/').map(|(_, a)| a) == Some(app) {
                let d: Version = decode(DESIRED.name, &k, &v)?;
                *out.entry(d.version).or_insert(0) += 1;
            }
        }
        Ok(out)
    }
}
