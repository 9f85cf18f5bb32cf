//! A private key and its certificate replaced as one pair (key rotation on renewal), for
//! the agent's identity and fleetctl's admin identity alike.
//!
//! Two files cannot be renamed at once, so the swap goes in three crash-safe steps: the
//! new key to `<key>.next`, the new certificate over the old one, the key from `.next`
//! over the old key. Whoever loads the pair calls [`recover`] first: a `.next` whose key
//! the certificate belongs to finishes the swap; any other `.next` (a crash before the
//! certificate was written) is removed, and the old pair is still whole.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::files::{write_atomic, FileError};

fn next_path(key_path: &Path) -> PathBuf {
    let mut name = key_path.file_name().unwrap_or_default().to_os_string();
    name.push(".next");
    key_path.with_file_name(name)
}

fn err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
    let path = path.to_owned();
    move |source| FileError {
        action,
        path,
        source,
    }
}

fn finish(next: &Path, key_path: &Path) -> Result<(), FileError> {
    fs::rename(next, key_path).map_err(err("replace", key_path))?;
    let dir = key_path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("sync", dir))
}

/// Replaces the pair at `key_path` (mode 0600) and `cert_path` (`cert_mode`).
pub fn swap(
    key_path: &Path,
    cert_path: &Path,
    key_pem: &str,
    cert_pem: &str,
    cert_mode: u32,
) -> Result<(), FileError> {
    let next = next_path(key_path);
    write_atomic(&next, key_pem.as_bytes(), 0o600)?;
    write_atomic(cert_path, cert_pem.as_bytes(), cert_mode)?;
    finish(&next, key_path)
}

/// Finishes or undoes a swap a crash interrupted; `pairs(cert_pem, key_pem)` says whether
/// the certificate belongs to the key. Nothing to do (the common case) costs one stat.
/// Returns whether it changed anything.
pub fn recover(
    key_path: &Path,
    cert_path: &Path,
    pairs: impl Fn(&str, &str) -> bool,
) -> Result<bool, FileError> {
    let next = next_path(key_path);
    let next_pem = match fs::read_to_string(&next) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err("read", &next)(e)),
    };
    let cert_pem = fs::read_to_string(cert_path).map_err(err("read", cert_path))?;
    if pairs(&cert_pem, &next_pem) {
        finish(&next, key_path)?;
    } else {
        fs::remove_file(&next).map_err(err("remove", &next))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stand-in pairing for the file mechanics: a "certificate" names its key.
    fn pairs(cert: &str, key: &str) -> bool {
        cert == format!("cert-for-{key}")
    }

    fn files(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("agent.key"), dir.join("agent.crt"))
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn a_swap_replaces_both_and_leaves_no_next() {
        let tmp = tempfile::tempdir().unwrap();
        let (key, cert) = files(tmp.path());
        fs::write(&key, "k1").unwrap();
        fs::write(&cert, "cert-for-k1").unwrap();
        swap(&key, &cert, "k2", "cert-for-k2", 0o644).unwrap();
        assert_eq!(
            (read(&key), read(&cert)),
            ("k2".into(), "cert-for-k2".into())
        );
        assert!(!next_path(&key).exists());
        assert!(!recover(&key, &cert, pairs).unwrap(), "nothing to recover");
    }

    #[test]
    fn a_crash_after_the_certificate_finishes_the_swap() {
        let tmp = tempfile::tempdir().unwrap();
        let (key, cert) = files(tmp.path());
        fs::write(&key, "k1").unwrap();
        fs::write(next_path(&key), "k2").unwrap();
        fs::write(&cert, "cert-for-k2").unwrap();
        assert!(recover(&key, &cert, pairs).unwrap());
        assert_eq!(
            (read(&key), read(&cert)),
            ("k2".into(), "cert-for-k2".into())
        );
        assert!(!next_path(&key).exists());
    }

    #[test]
    fn a_crash_before_the_certificate_keeps_the_old_pair() {
        let tmp = tempfile::tempdir().unwrap();
        let (key, cert) = files(tmp.path());
        fs::write(&key, "k1").unwrap();
        fs::write(&cert, "cert-for-k1").unwrap();
        fs::write(next_path(&key), "k2").unwrap();
        assert!(recover(&key, &cert, pairs).unwrap());
        assert_eq!(
            (read(&key), read(&cert)),
            ("k1".into(), "cert-for-k1".into())
        );
        assert!(!next_path(&key).exists());
    }
}
