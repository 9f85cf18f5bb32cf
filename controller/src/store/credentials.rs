//! What decides who may connect: join tokens (spent atomically) and certificate
//! revocations.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::audit::append_in;
use super::hosts::HostRecord;
use super::kv::{WriteTx, ALL, HOSTS, REVOKED, TOKENS};
use super::{decode, encode, Store, StoreError};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub token_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_total: u32,
    pub uses_left: u32,
    pub created_by: String,
    /// Group given to hosts that join with this token; empty for none.
    #[serde(default)]
    pub group: String,
    /// Joins a minute allowed with this token from any number of sources, in place of the
    /// per-source and fleet-wide join limits; 0 for an ordinary token, which gets those.
    #[serde(default)]
    pub bulk_per_minute: u32,
    /// Unix seconds `fleetctl token revoke` ended it; 0 while it may be used.
    #[serde(default)]
    pub revoked_at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RevokedRecord {
    pub serial: String,
    pub identity: String,
    pub revoked_at: i64,
    /// After this the certificate is dead anyway and the record can be dropped.
    pub not_after: i64,
}

/// The audit entry a join writes with its host (the actor is the token).
pub struct JoinAudit<'a> {
    pub time_ms: i64,
    pub detail: &'a str,
}

impl Store {
    /// Records one revocation (an admin certificate, or any serial by hand); returns
    /// whether it is new.
    pub fn revoke(&self, rec: &RevokedRecord) -> Result<bool, StoreError> {
        let mut tx = self.write()?;
        let existed = tx.insert(REVOKED, &rec.serial, &encode(rec))?;
        self.commit(tx)?;
        Ok(!existed)
    }

    pub fn revoked(&self) -> Result<Vec<RevokedRecord>, StoreError> {
        self.all_json(REVOKED)
    }

    /// The token with `hash`, if any (a read, for the join limiter's bulk-token check).
    pub fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get_json(TOKENS, hash)
    }

    pub fn put_token(&self, hash: &str, token: &TokenRecord) -> Result<(), StoreError> {
        self.put_json(TOKENS, hash, token)
    }

    /// Every token not pruned yet (a few per enrollment batch: small).
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.all_json(TOKENS)
    }

    /// Revokes the token whose id (the first digits of its hash, which keys the table) is
    /// `token_id`, at `now`: the token as it is now and whether this call revoked it, or
    /// None if no token has that id. A token revoked before keeps its first revocation
    /// time, and nothing is written.
    pub fn revoke_token(
        &self,
        token_id: &str,
        now: i64,
    ) -> Result<Option<(TokenRecord, bool)>, StoreError> {
        let mut tx = self.write()?;
        let first = tx.range(
            TOKENS,
            (Bound::Included(token_id), Bound::Unbounded),
            Some(1),
        )?;
        let hit = match first.into_iter().next() {
            Some((key, v)) => {
                let t: TokenRecord = decode(TOKENS.name, &key, &v)?;
                (key.starts_with(token_id) && t.token_id == token_id).then_some((key, t))
            }
            None => None,
        };
        match hit {
            Some((key, mut t)) if t.revoked_at == 0 => {
                t.revoked_at = now;
                tx.insert(TOKENS, &key, &encode(&t))?;
                self.commit(tx)?;
                Ok(Some((t, true)))
            }
            Some((_, t)) => Ok(Some((t, false))),
            None => Ok(None),
        }
    }

    /// A join in one transaction: spends one use of the token (if `decide`, seeing the
    /// token and whether the host is enrolled, allows it), records the host and appends
    /// `audit`. One commit per enrolled host, and never a spent use without its host.
    pub fn join_host<E>(
        &self,
        hash: &str,
        decide: impl FnOnce(Option<&TokenRecord>, bool) -> Result<(), E>,
        host: &HostRecord,
        audit: &JoinAudit<'_>,
    ) -> Result<Result<TokenRecord, E>, StoreError> {
        let mut tx = self.write()?;
        let current = token_in(&*tx, hash)?;
        let enrolled = tx.get(HOSTS, &host.name)?.is_some();
        if let Err(e) = decide(current.as_ref(), enrolled) {
            return Ok(Err(e));
        }
        let mut token = current.expect("decide allowed a missing token");
        token.uses_left = token.uses_left.saturating_sub(1);
        tx.insert(TOKENS, hash, &encode(&token))?;
        tx.insert(HOSTS, &host.name, &encode(host))?;
        append_in(
            &mut *tx,
            audit.time_ms,
            &format!("token:{}", token.token_id),
            "host.join",
            &host.name,
            audit.detail,
        )?;
        self.commit(tx)?;
        Ok(Ok(token))
    }

    /// Spends one use of a token atomically. `decide` sees the current record (or `None`)
    /// and says whether the use is allowed; the decrement commits only if it is.
    pub fn spend_token<E>(
        &self,
        hash: &str,
        decide: impl FnOnce(Option<&TokenRecord>) -> Result<(), E>,
    ) -> Result<Result<TokenRecord, E>, StoreError> {
        let mut tx = self.write()?;
        let current = token_in(&*tx, hash)?;
        if let Err(e) = decide(current.as_ref()) {
            return Ok(Err(e));
        }
        let mut token = current.expect("decide allowed a missing token");
        token.uses_left = token.uses_left.saturating_sub(1);
        tx.insert(TOKENS, hash, &encode(&token))?;
        self.commit(tx)?;
        Ok(Ok(token))
    }

    /// Drops tokens expired before `before` and revocations of certificates that expired
    /// before it: both are dead weight after that.
    pub fn prune(&self, before: i64) -> Result<(), StoreError> {
        let mut tx = self.write()?;
        let mut dead = Vec::new();
        for (k, v) in tx.range(TOKENS, ALL, None)? {
            if serde_json::from_slice::<TokenRecord>(&v).is_ok_and(|t| t.expires_at < before) {
                dead.push((TOKENS, k));
            }
        }
        for (k, v) in tx.range(REVOKED, ALL, None)? {
            if serde_json::from_slice::<RevokedRecord>(&v).is_ok_and(|r| r.not_after < before) {
                dead.push((REVOKED, k));
            }
        }
        if dead.is_empty() {
            return Ok(());
        }
        for (t, k) in &dead {
            tx.remove(*t, k)?;
        }
        self.commit(tx)
    }
}

fn token_in(tx: &dyn WriteTx, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
    tx.get(TOKENS, hash)?
        .map(|v| decode(TOKENS.name, hash, &v))
        .transpose()
}
