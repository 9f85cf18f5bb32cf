//! Join tokens: random secrets shown once to the operator and stored only as a SHA-256
//! hash, so a copy of the controller's state cannot be used to enroll a host.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::TokenRecord;

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
    if now >= t.expires_at {
        return Err(TokenRefused::Expired(crate::timefmt::rfc3339(t.expires_at)));
    }
    if t.uses_left == 0 {
        return Err(TokenRefused::Spent(t.uses_total));
    }
    Ok(())
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
        }
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
        assert_eq!(check_format("hunter2"), Err(TokenRefused::Malformed));
        assert_eq!(
            check_format(&format!("{PREFIX}{}", "a".repeat(200))),
            Err(TokenRefused::Malformed)
        );
    }
}
