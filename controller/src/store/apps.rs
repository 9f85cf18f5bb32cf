//! App records: the spec each app was last given.

use serde::{Deserialize, Serialize};

use super::kv::APPS;
use super::{Store, StoreError};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AppRecord {
    pub name: String,
    pub spec_toml: String,
    pub updated_at: i64,
}

impl Store {
    pub fn app(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        self.get_json(APPS, name)
    }

    pub fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        self.all_json(APPS)
    }

    pub fn put_app(&self, app: &AppRecord) -> Result<(), StoreError> {
        self.put_json(APPS, &app.name, app)
    }
}
