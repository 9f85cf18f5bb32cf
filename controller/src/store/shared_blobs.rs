//! Blobs in the store, for controllers that share one (docs/ha.md). The embedded file
//! holds none: one controller's blobs are the files in its data directory
//! (`crate::blobs`), and these calls do nothing there.

use std::io::{Read, Write};

use super::{Backend, Store, StoreError};

impl Store {
    /// Every blob a record names (releases and agent packages), with its size.
    pub fn blob_refs(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for app in self.apps()? {
            for r in self.releases(&app.name)? {
                out.insert(r.sha256, r.size);
            }
        }
        for p in self.agent_packages()? {
            out.insert(p.sha256, p.size);
        }
        Ok(out)
    }

    /// Keeps blob `sha` (`size` bytes from `from`) where every controller can read it.
    pub fn put_blob(&self, sha: &str, size: u64, from: &mut dyn Read) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(()),
            Backend::Pg(pg) => pg.put_blob(sha, size, from),
        }
    }

    /// Copies blob `sha` into `into`: its size, or None when the store holds no such blob.
    pub fn fetch_blob(&self, sha: &str, into: &mut dyn Write) -> Result<Option<u64>, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(None),
            Backend::Pg(pg) => pg.fetch_blob(sha, into),
        }
    }

    /// Deletes blob `sha` from the store (nothing when it holds none).
    pub fn remove_blob(&self, sha: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(()),
            Backend::Pg(pg) => pg.remove_blob(sha),
        }
    }
}
