//! What decides who may connect: join tokens (spent atomically) and certificate
//! revocations.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::audit::append_in;
use super::hosts::HostRecord;
use super::tables::{AUDIT, HOSTS, REVOKED, TOKENS};
use super::{db_err, decode, encode, Store, StoreError};

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
        let tx = self.db.begin_write().map_err(db_err)?;
        let created = {
            let mut table = tx.open_table(REVOKED).map_err(db_err)?;
            let old = table
                .insert(rec.serial.as_str(), encode(rec).as_slice())
                .map_err(db_err)?;
            old.is_none()
        };
        self.commit(tx)?;
        Ok(created)
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
        let tx = self.db.begin_write().map_err(db_err)?;
        let found = {
            let mut table = tx.open_table(TOKENS).map_err(db_err)?;
            let hit = {
                let mut rows = table.range(token_id..).map_err(db_err)?;
                match rows.next() {
                    Some(row) => {
                        let (k, v) = row.map_err(db_err)?;
                        let key = k.value().to_owned();
                        let t: TokenRecord = decode("tokens", &key, v.value())?;
                        (key.starts_with(token_id) && t.token_id == token_id).then_some((key, t))
                    }
                    None => None,
                }
            };
            match hit {
                Some((key, mut t)) if t.revoked_at == 0 => {
                    t.revoked_at = now;
                    table
                        .insert(key.as_str(), encode(&t).as_slice())
                        .map_err(db_err)?;
                    Some((t, true))
                }
                Some((_, t)) => Some((t, false)),
                None => None,
            }
        };
        match &found {
            Some((_, true)) => self.commit(tx)?,
            _ => tx.abort().map_err(db_err)?,
        }
        Ok(found)
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
        let tx = self.db.begin_write().map_err(db_err)?;
        let outcome = {
            let mut tokens = tx.open_table(TOKENS).map_err(db_err)?;
            let mut hosts = tx.open_table(HOSTS).map_err(db_err)?;
            let current: Option<TokenRecord> = {
                let got = tokens.get(hash).map_err(db_err)?;
                got.map(|v| decode("tokens", hash, v.value())).transpose()?
            };
            let enrolled = hosts.get(host.name.as_str()).map_err(db_err)?.is_some();
            match decide(current.as_ref(), enrolled) {
                Err(e) => Err(e),
                Ok(()) => {
                    let mut token = current.expect("decide allowed a missing token");
                    token.uses_left = token.uses_left.saturating_sub(1);
                    tokens
                        .insert(hash, encode(&token).as_slice())
                        .map_err(db_err)?;
                    hosts
                        .insert(host.name.as_str(), encode(host).as_slice())
                        .map_err(db_err)?;
                    let mut log = tx.open_table(AUDIT).map_err(db_err)?;
                    append_in(
                        &mut log,
                        audit.time_ms,
                        &format!("token:{}", token.token_id),
                        "host.join",
                        &host.name,
                        audit.detail,
                    )?;
                    Ok(token)
                }
            }
        };
        match &outcome {
            Ok(_) => self.commit(tx)?,
            Err(_) => tx.abort().map_err(db_err)?,
        }
        Ok(outcome)
    }

    /// Spends one use of a token atomically. `decide` sees the current record (or `None`)
    /// and says whether the use is allowed; the decrement commits only if it is.
    pub fn spend_token<E>(
        &self,
        hash: &str,
        decide: impl FnOnce(Option<&TokenRecord>) -> Result<(), E>,
    ) -> Result<Result<TokenRecord, E>, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let outcome = {
            let mut table = tx.open_table(TOKENS).map_err(db_err)?;
            let current: Option<TokenRecord> = {
                let got = table.get(hash).map_err(db_err)?;
                got.map(|v| decode("tokens", hash, v.value())).transpose()?
            };
            match decide(current.as_ref()) {
                Err(e) => Err(e),
                Ok(()) => {
                    let mut token = current.expect("decide allowed a missing token");
                    token.uses_left = token.uses_left.saturating_sub(1);
                    table
                        .insert(hash, encode(&token).as_slice())
                        .map_err(db_err)?;
                    Ok(token)
                }
            }
        };
        match &outcome {
            Ok(_) => self.commit(tx)?,
            Err(_) => tx.abort().map_err(db_err)?,
        }
        Ok(outcome)
    }

    /// Drops tokens expired before `before` and revocations of certificates that expired
    /// before it: both are dead weight after that.
    pub fn prune(&self, before: i64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut tokens = tx.open_table(TOKENS).map_err(db_err)?;
            tokens
                .retain(|_, v| {
                    serde_json::from_slice::<TokenRecord>(v)
                        .map(|t| t.expires_at >= before)
                        .unwrap_or(true)
                })
                .map_err(db_err)?;
            let mut revoked = tx.open_table(REVOKED).map_err(db_err)?;
            revoked
                .retain(|_, v| {
                    serde_json::from_slice::<RevokedRecord>(v)
                        .map(|r| r.not_after >= before)
                        .unwrap_or(true)
                })
                .map_err(db_err)?;
        }
        self.commit(tx)
    }
}
