//! Fleet-wide facts about the controllers themselves: the addresses agents are told.
//! One row of `meta` (JSON), so no table or migration is needed and a backup, a snapshot
//! and `migrate` carry it like the schema marker.

use serde::{Deserialize, Serialize};

use super::kv::META;
use super::{Store, StoreError};

const CONTROLLERS_KEY: &str = "controllers";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControllersRecord {
    pub addresses: Vec<String>,
    pub by: String,
    pub at: i64,
}

impl Store {
    /// The controller addresses set with `fleetctl controllers set` (default: none).
    pub fn controllers(&self) -> Result<ControllersRecord, StoreError> {
        Ok(self.get_json(META, CONTROLLERS_KEY)?.unwrap_or_default())
    }

    pub fn set_controllers(&self, rec: &ControllersRecord) -> Result<(), StoreError> {
        self.put_json(META, CONTROLLERS_KEY, rec)
    }
}
