//! Operators: admin identities (`spiffe://TD/admin/NAME`) with the role that decides what
//! each may call, by name.

use serde::{Deserialize, Serialize};

use super::kv::ADMINS;
use super::{Store, StoreError};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdminRecord {
    pub name: String,
    /// `viewer`, `deployer` or `admin` (fleet_proto::access::OperatorRole).
    pub role: String,
    pub created_at: i64,
    pub created_by: String,
    /// Unix seconds; 0 while the operator may call.
    #[serde(default)]
    pub revoked_at: i64,
    /// Serials of the certificates issued to this name (the newest last, a few kept),
    /// revoked with it.
    #[serde(default)]
    pub serials: Vec<String>,
    /// Their expiry, in step with `serials` (revocation records need it).
    #[serde(default)]
    pub not_afters: Vec<i64>,
}

impl Store {
    pub fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        self.all_json(ADMINS)
    }

    pub fn admin(&self, name: &str) -> Result<Option<AdminRecord>, StoreError> {
        self.get_json(ADMINS, name)
    }

    pub fn put_admin(&self, rec: &AdminRecord) -> Result<(), StoreError> {
        self.put_json(ADMINS, &rec.name, rec)
    }
}
