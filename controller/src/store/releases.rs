//! Release and fleet-agent package records (their bytes are blobs), never overwritten.

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::{AGENT_PACKAGES, RELEASES};
use super::{db_err, decode, encode, Store, StoreError};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReleaseRecord {
    pub app: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub uploaded_at: i64,
    /// Empty for releases uploaded before it was recorded.
    #[serde(default)]
    pub uploaded_by: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentPackageRecord {
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub uploaded_at: i64,
}

impl Store {
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

    /// Deletes a release's record; returns it, or None if there was none (then nothing is
    /// written). The caller removes the blob once `blob_in_use` says nothing needs it.
    pub fn remove_release(
        &self,
        app: &str,
        version: &str,
    ) -> Result<Option<ReleaseRecord>, StoreError> {
        let key = format!("{app}/{version}");
        let tx = self.db.begin_write().map_err(db_err)?;
        let removed = {
            let mut table = tx.open_table(RELEASES).map_err(db_err)?;
            let old = table.remove(key.as_str()).map_err(db_err)?;
            old.map(|v| decode("releases", &key, v.value()))
                .transpose()?
        };
        match removed {
            Some(_) => self.commit(tx)?,
            None => tx.abort().map_err(db_err)?,
        }
        Ok(removed)
    }

    /// Whether any release (of any app) or agent package still refers to this blob.
    pub fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError> {
        if self.agent_packages()?.iter().any(|p| p.sha256 == sha256) {
            return Ok(true);
        }
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
        self.commit(tx)?;
        Ok(existing)
    }

    pub fn agent_package(&self, version: &str) -> Result<Option<AgentPackageRecord>, StoreError> {
        self.get_json(AGENT_PACKAGES, version)
    }

    /// Every fleet-agent package held, in version-key order.
    pub fn agent_packages(&self) -> Result<Vec<AgentPackageRecord>, StoreError> {
        self.all_json(AGENT_PACKAGES)
    }

    /// Records an agent package unless that version exists; returns the existing one if so.
    pub fn put_agent_package_if_absent(
        &self,
        rec: &AgentPackageRecord,
    ) -> Result<Option<AgentPackageRecord>, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let existing = {
            let mut table = tx.open_table(AGENT_PACKAGES).map_err(db_err)?;
            let existing: Option<AgentPackageRecord> = {
                let got = table.get(rec.version.as_str()).map_err(db_err)?;
                got.map(|v| decode("agent_packages", &rec.version, v.value()))
                    .transpose()?
            };
            if existing.is_none() {
                table
                    .insert(rec.version.as_str(), encode(rec).as_slice())
                    .map_err(db_err)?;
            }
            existing
        };
        self.commit(tx)?;
        Ok(existing)
    }
}
