//! The leader lease's rows (`fleet_lease`, docs/ha.md): taken only when expired, renewed
//! by its holder, released on a clean shutdown; and the fence that makes every write of
//! the holder check it (`PgStore::write`).

use std::time::Duration;

use futures_executor::block_on;

use super::{pg_err, PgStore};
use crate::store::StoreError;

impl PgStore {
    pub(in crate::store) fn set_fence(&self, fence: Fence) {
        *self.fence.write().expect("fence lock") = Some(fence);
    }

    /// Takes the leader lease for `holder` if nobody holds it unexpired: its new epoch.
    pub(in crate::store) fn acquire_lease(
        &self,
        holder: &LeaseHolder,
        ttl: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.client()?;
        let ttl_ms = ttl.as_millis() as f64;
        let rows = block_on(client.query(
            "INSERT INTO fleet_lease AS l (name, holder, epoch, expires_at)
             VALUES ('leader', $1, 1, now() + $2 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE
                 SET holder = EXCLUDED.holder, epoch = l.epoch + 1,
                     expires_at = EXCLUDED.expires_at
                 WHERE l.expires_at <= now()
             RETURNING epoch",
            &[&holder.as_str(), &ttl_ms],
        ))
        .map_err(|e| pg_err("lease", e))?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// Extends the lease if it is still `holder`'s at `epoch` and unexpired.
    pub(in crate::store) fn renew_lease(
        &self,
        holder: &LeaseHolder,
        epoch: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let client = self.client()?;
        let ttl_ms = ttl.as_millis() as f64;
        let n = block_on(client.execute(
            "UPDATE fleet_lease SET expires_at = now() + $3 * interval '1 millisecond'
             WHERE name = 'leader' AND holder = $1 AND epoch = $2 AND expires_at > now()",
            &[&holder.as_str(), &epoch, &ttl_ms],
        ))
        .map_err(|e| pg_err("lease", e))?;
        Ok(n == 1)
    }

    /// Ends the lease now if it is still `holder`'s at `epoch` (a clean shutdown: a standby
    /// need not wait out its lifetime).
    pub(in crate::store) fn release_lease(
        &self,
        holder: &LeaseHolder,
        epoch: i64,
    ) -> Result<(), StoreError> {
        let client = self.client()?;
        block_on(client.execute(
            "UPDATE fleet_lease SET expires_at = now()
             WHERE name = 'leader' AND holder = $1 AND epoch = $2 AND expires_at > now()",
            &[&holder.as_str(), &epoch],
        ))
        .map_err(|e| pg_err("lease", e))?;
        Ok(())
    }

    /// Who holds the lease, and whether it is still unexpired.
    pub(in crate::store) fn lease_holder(&self) -> Result<Option<(String, i64, bool)>, StoreError> {
        let client = self.client()?;
        let rows = block_on(client.query(
            "SELECT holder, epoch, expires_at > now() FROM fleet_lease WHERE name = 'leader'",
            &[],
        ))
        .map_err(|e| pg_err("lease", e))?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1), r.get(2))))
    }
}

/// A controller's name in the lease: letters, digits, `.`, `_`, `-`, at most 64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseHolder(String);

impl LeaseHolder {
    pub fn new(name: &str) -> Result<LeaseHolder, StoreError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(StoreError::Db(format!(
                "controller name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
            )));
        }
        Ok(LeaseHolder(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug)]
pub(in crate::store) struct Fence {
    pub holder: LeaseHolder,
    pub epoch: i64,
}
