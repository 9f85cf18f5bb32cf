//! The fleet-wide firewall policy as last applied.

use redb::ReadableDatabase;

use super::tables::FIREWALL;
use super::{db_err, Store, StoreError};

impl Store {
    /// The stored firewall policy TOML and when it was last applied (Unix ms).
    pub fn firewall_policy(&self) -> Result<Option<(String, i64)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        // `open` created the table in stores made before the firewall existed.
        let table = tx.open_table(FIREWALL).map_err(db_err)?;
        let Some(policy) = table.get("policy").map_err(db_err)? else {
            return Ok(None);
        };
        let at = table
            .get("applied_at_ms")
            .map_err(db_err)?
            .and_then(|v| v.value().parse().ok())
            .unwrap_or(0);
        Ok(Some((policy.value().to_owned(), at)))
    }

    pub fn set_firewall_policy(&self, toml: &str, at_ms: i64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(FIREWALL).map_err(db_err)?;
            table.insert("policy", toml).map_err(db_err)?;
            table
                .insert("applied_at_ms", at_ms.to_string().as_str())
                .map_err(db_err)?;
        }
        self.commit(tx)
    }
}
