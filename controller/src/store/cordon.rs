//! Cordoned hosts: kept out of deploys and rollouts. A table of its own, so choosing a
//! deploy's targets reads a handful of rows, not every host record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::kv::CORDONED;
use super::{Store, StoreError};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CordonRecord {
    pub by: String,
    pub at: i64,
    pub reason: String,
}

impl Store {
    /// Cordons `host` (Some) or lets it back (None).
    pub fn set_cordon(&self, host: &str, rec: Option<&CordonRecord>) -> Result<(), StoreError> {
        match rec {
            Some(r) => self.put_json(CORDONED, host, r),
            None => self.delete_key(CORDONED, host),
        }
    }

    /// Whether `host` is cordoned: one key read, for per-session checks.
    pub fn is_cordoned(&self, host: &str) -> Result<bool, StoreError> {
        Ok(self.get_json::<CordonRecord>(CORDONED, host)?.is_some())
    }

    pub fn cordoned(&self) -> Result<BTreeMap<String, CordonRecord>, StoreError> {
        self.all_json_keyed(CORDONED)
    }
}
