//! Secret values sealed at rest: ChaCha20-Poly1305 (ring) under a key kept in the data
//! directory (`secrets.key`, 0600), so a copy of the store file (a backup, a stray
//! `scp`) holds no secret in the clear. The slot ("app/KEY") is the associated data: a
//! sealed value copied into another slot does not open.
//!
//! This protects the store file alone; whoever can read the whole data directory (the
//! CA key is there too) gets everything anyway.

use std::path::Path;

use anyhow::{bail, Context};
use base64::Engine;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

use crate::datadir::write_new;

/// Marks a sealed value; anything else in the secrets table is a plaintext value from
/// before sealing, sealed on the next start.
const PREFIX: &str = "sealed:v1:";

pub struct Sealer {
    key: LessSafeKey,
}

#[derive(Debug, thiserror::Error)]
#[error("secret {slot} cannot be opened: {reason} (was secrets.key replaced?)")]
pub struct OpenError {
    slot: String,
    reason: &'static str,
}

impl Sealer {
    pub const FILE: &'static str = "secrets.key";

    /// Loads `DIR/secrets.key`, creating it (32 random bytes, hex, 0600) if missing.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Sealer> {
        let path = data_dir.join(Self::FILE);
        if !path.exists() {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            write_new(&path, &format!("{}\n", hex::encode(key)), 0o600)?;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
        let Some(bytes) = bytes else {
            bail!(
                "{} is not 64 hex digits: restore it from a backup (sealed secrets cannot be opened without it)",
                path.display()
            );
        };
        Ok(Sealer::new(&bytes))
    }

    fn new(key: &[u8]) -> Sealer {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key");
        Sealer {
            key: LessSafeKey::new(key),
        }
    }

    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }

    /// Seals `value` for `slot`, with a fresh random nonce.
    pub fn seal(&self, slot: &str, value: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut buf = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(slot.as_bytes()),
                &mut buf,
            )
            .expect("sealing into a Vec cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
        )
    }

    /// Opens a stored value of `slot`; a plaintext value from before sealing passes as is.
    pub fn open(&self, slot: &str, stored: &str) -> Result<String, OpenError> {
        let Some(sealed) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let err = |reason| OpenError {
            slot: slot.to_owned(),
            reason,
        };
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(sealed)
            .map_err(|_| err("not base64"))?;
        if raw.len() < NONCE_LEN {
            return Err(err("too short"));
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| err("bad nonce"))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(slot.as_bytes()), &mut body)
            .map_err(|_| err("authentication failed"))?;
        String::from_utf8(plain.to_vec()).map_err(|_| err("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_slot_and_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::load_or_create(dir.path()).unwrap();
        let sealed = s.seal("shop/DB", "hunter2");
        assert!(Sealer::is_sealed(&sealed));
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, s.seal("shop/DB", "hunter2"), "nonces differ");
        assert_eq!(s.open("shop/DB", &sealed).unwrap(), "hunter2");
        assert!(s.open("api/DB", &sealed).is_err());
        // Reloaded from the same file: the same key.
        let again = Sealer::load_or_create(dir.path()).unwrap();
        assert_eq!(again.open("shop/DB", &sealed).unwrap(), "hunter2");
        let other = Sealer::new(&[7u8; 32]);
        assert!(other.open("shop/DB", &sealed).is_err());
        assert_eq!(s.open("shop/DB", "legacy").unwrap(), "legacy");
        let mode = std::fs::metadata(dir.path().join(Sealer::FILE)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
}
