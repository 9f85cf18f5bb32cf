//! The fleet-wide firewall policy as last applied.

use super::kv::FIREWALL;
use super::{text, Store, StoreError};

impl Store {
    /// The stored firewall policy TOML and when it was last applied (Unix ms).
    pub fn firewall_policy(&self) -> Result<Option<(String, i64)>, StoreError> {
        let tx = self.read()?;
        let Some(policy) = tx.get(FIREWALL, "policy")? else {
            return Ok(None);
        };
        let at = match tx.get(FIREWALL, "applied_at_ms")? {
            Some(v) => text(FIREWALL, "applied_at_ms", v)?.parse().unwrap_or(0),
            None => 0,
        };
        Ok(Some((text(FIREWALL, "policy", policy)?, at)))
    }

    pub fn set_firewall_policy(&self, toml: &str, at_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.write()?;
        tx.insert(FIREWALL, "policy", toml.as_bytes())?;
        tx.insert(FIREWALL, "applied_at_ms", at_ms.to_string().as_bytes())?;
        self.commit(tx)
    }
}
