//! Join tokens: random secrets shown once to the operator and stored only as a SHA-256
//! hash, so a copy of the controller's state cannot be used to enroll a host.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use fleet_proto::v1::{
    ListTokensRequest, ListTokensResponse, RevokeTokenRequest, RevokeTokenResponse, TokenInfo,
};
use tonic::Status;

use crate::shared::{internal, Shared};
use crate::store::TokenRecord;
use crate::timefmt::now_secs;

const PREFIX: &str = "fleetjoin_";
/// Upper bound on what is even hashed, so a join call cannot make us hash megabytes.
const MAX_TOKEN_LEN: usize = 128;

pub struct NewToken {
    /// The secret; shown once, never stored or logged.
    pub secret: String,
    pub hash: String,
    /// Non-secret handle for audit entries: the first 12 hex digits of the hash.
    pub id: String,
}

pub fn generate() -> NewToken {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash(&secret);
    let id = hash[..12].to_owned();
    NewToken { secret, hash, id }
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.trim().as_bytes()))
}

/// Why a token was refused; each message says what to do next.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRefused {
    #[error(
        "join token is malformed (expected fleetjoin_…, as printed by `fleetctl token create`)"
    )]
    Malformed,
    #[error("join token is unknown to this controller: check it was copied whole and made by `fleetctl token create` on this controller")]
    Unknown,
    #[error("join token expired at {0}: create a new one with `fleetctl token create`")]
    Expired(String),
    #[error(
        "join token already used ({0} of {0} uses): create a new one with `fleetctl token create`"
    )]
    Spent(u32),
    #[error("join token was revoked at {0}: create a new one with `fleetctl token create`")]
    Revoked(String),
}

pub fn check_format(secret: &str) -> Result<(), TokenRefused> {
    let s = secret.trim();
    if s.len() > MAX_TOKEN_LEN || !s.starts_with(PREFIX) {
        return Err(TokenRefused::Malformed);
    }
    Ok(())
}

/// Whether one more use of `token` is allowed at `now` (unix seconds).
pub fn check_use(token: Option<&TokenRecord>, now: i64) -> Result<(), TokenRefused> {
    let t = token.ok_or(TokenRefused::Unknown)?;
    if t.revoked_at > 0 {
        return Err(TokenRefused::Revoked(crate::timefmt::rfc3339(t.revoked_at)));
    }
    if now >= t.expires_at {
        return Err(TokenRefused::Expired(crate::timefmt::rfc3339(t.expires_at)));
    }
    if t.uses_left == 0 {
        return Err(TokenRefused::Spent(t.uses_total));
    }
    Ok(())
}

/// Length of a token id: hex digits of its hash.
const ID_LEN: usize = 12;

/// Whether one more use of `t` could be allowed at `now`, in words.
fn state(t: &TokenRecord, now: i64) -> &'static str {
    if t.revoked_at > 0 {
        "revoked"
    } else if now >= t.expires_at {
        "expired"
    } else if t.uses_left == 0 {
        "used up"
    } else {
        "usable"
    }
}

fn info(t: TokenRecord, now: i64) -> TokenInfo {
    TokenInfo {
        state: state(&t, now).into(),
        token_id: t.token_id,
        group: t.group,
        uses_total: t.uses_total,
        uses_left: t.uses_left,
        created_at: t.created_at,
        expires_at: t.expires_at,
        created_by: t.created_by,
        bulk_per_minute: t.bulk_per_minute,
        revoked_at: t.revoked_at,
    }
}

/// `fleetctl token list`: the usable tokens (all not yet pruned with `all`), newest first.
pub fn list(shared: &Shared, req: ListTokensRequest) -> Result<ListTokensResponse, Status> {
    let now = now_secs();
    let mut tokens: Vec<TokenInfo> = shared
        .store
        .tokens()
        .map_err(internal)?
        .into_iter()
        .map(|t| info(t, now))
        .filter(|t| req.all || t.state == "usable")
        .collect();
    tokens.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(a.token_id.cmp(&b.token_id))
    });
    Ok(ListTokensResponse { tokens })
}

/// `fleetctl token revoke ID`: no host can join with it from now on (hosts that joined
/// with it stay enrolled; `fleetctl host remove` removes one).
pub fn revoke(
    shared: &Shared,
    actor: &str,
    req: RevokeTokenRequest,
) -> Result<RevokeTokenResponse, Status> {
    let id = req.token_id.trim();
    if id.len() != ID_LEN || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Status::invalid_argument(format!(
            "a token id is {ID_LEN} lowercase hex digits, as `fleetctl token list` shows them; nothing was revoked"
        )));
    }
    let now = now_secs();
    let Some((t, newly)) = shared.store.revoke_token(id, now).map_err(internal)? else {
        return Err(Status::not_found(format!(
            "no token {id} (an expired token is pruned after a while): see `fleetctl token list --all`"
        )));
    };
    if newly {
        shared
            .audit(
                actor,
                "token.revoke",
                &format!("token:{id}"),
                &format!("{} of {} uses left", t.uses_left, t.uses_total),
            )
            .map_err(internal)?;
    }
    Ok(RevokeTokenResponse {
        token: Some(info(t, now)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expires_at: i64, uses_left: u32) -> TokenRecord {
        TokenRecord {
            token_id: "x".into(),
            created_at: 0,
            expires_at,
            uses_total: 1,
            uses_left,
            created_by: "t".into(),
            group: String::new(),
            bulk_per_minute: 0,
            revoked_at: 0,
        }
    }

    #[test]
    fn a_token_state_names_why_it_cannot_be_used() {
        assert_eq!(state(&record(10, 1), 5), "usable");
        assert_eq!(state(&record(10, 1), 10), "expired");
        assert_eq!(state(&record(10, 0), 5), "used up");
        let revoked = TokenRecord {
            revoked_at: 3,
            ..record(10, 0)
        };
        assert_eq!(state(&revoked, 50), "revoked");
    }

    #[test]
    fn tokens_are_unique_and_hashed() {
        let a = generate();
        let b = generate();
        assert_ne!(a.secret, b.secret);
        assert_eq!(hash(&a.secret), a.hash);
        assert!(!a.hash.contains(&a.secret));
        assert!(check_format(&a.secret).is_ok());
    }

    #[test]
    fn refusals_name_the_reason() {
        assert_eq!(check_use(None, 0), Err(TokenRefused::Unknown));
        assert!(matches!(
            check_use(Some(&record(10, 1)), 10),
            Err(TokenRefused::Expired(_))
        ));
        assert_eq!(
            check_use(Some(&record(10, 0)), 5),
            Err(TokenRefused::Spent(1))
        );
        assert_eq!(check_use(Some(&record(10, 1)), 5), Ok(()));
        let revoked = TokenRecord {
            revoked_at: 3,
            ..record(10, 1)
        };
        assert!(matches!(
            check_use(Some(&revoked), 5),
            Err(TokenRefused::Revoked(_))
        ));
        assert_eq!(check_format("hunter2"), Err(TokenRefused::Malformed));
        assert_eq!(
            check_format(&format!("{PREFIX}{}", "a".repeat(200))),
            Err(TokenRefused::Malformed)
        );
    }
}
