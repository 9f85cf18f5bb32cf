//! Release and fleet-agent package records (their bytes are blobs), never overwritten.

use serde::{Deserialize, Serialize};

use super::kv::{prefixed, span, AGENT_PACKAGES, ALL, RELEASES};
use super::{decode, encode, Store, StoreError};

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
        let own = prefixed(&format!("{app}/"));
        let mut out = self
            .read()?
            .range(RELEASES, span(&own), None)?
            .into_iter()
            .map(|(k, v)| decode(RELEASES.name, &k, &v))
            .collect::<Result<Vec<ReleaseRecord>, _>>()?;
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
        let mut tx = self.write()?;
        let Some(old) = tx.remove(RELEASES, &key)? else {
            return Ok(None);
        };
        let removed = decode(RELEASES.name, &key, &old)?;
        self.commit(tx)?;
        Ok(Some(removed))
    }

    /// Whether any release (of any app) or agent package still refers to this blob.
    pub fn blob_in_use(&self, sha256: &str) -> Result<bool, StoreError> {
        if self.agent_packages()?.iter().any(|p| p.sha256 == sha256) {
            return Ok(true);
        }
        for (k, v) in self.read()?.range(RELEASES, ALL, None)? {
            let r: ReleaseRecord = decode(RELEASES.name, &k, &v)?;
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
        let mut tx = self.write()?;
        if let Some(v) = tx.get(RELEASES, &key)? {
            return Ok(Some(decode(RELEASES.name, &key, &v)?));
        }
        tx.insert(RELEASES, &key, &encode(rec))?;
        self.commit(tx)?;
        Ok(None)
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
        let mut tx = self.write()?;
        if let Some(v) = tx.get(AGENT_PACKAGES, &rec.version)? {
            return Ok(Some(decode(AGENT_PACKAGES.name, &rec.version, &v)?));
        }
        tx.insert(AGENT_PACKAGES, &rec.version, &encode(rec))?;
        self.commit(tx)?;
        Ok(None)
    }
}
