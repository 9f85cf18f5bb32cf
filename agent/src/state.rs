//! The agent's state dir (default `/var/lib/fleet-agent`, mode 0700):
//!
//! - `agent.key`  private key, 0600; made on this host and never sent anywhere;
//! - `agent.crt`  this host's certificate (replaced atomically on renewal);
//! - `ca.crt`     the fleet CA, the only issuer trusted for the controller;
//! - `agent.toml` controller address, host name and trust domain.
//!
//! `agent.crt` present means "enrolled". Every file is written atomically (temp file, fsync,
//! rename, fsync of the dir), so a crash or power cut leaves either the old or the new
//! version, never a torn one.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fleet_proto::controllers::ControllerList;
use fleet_proto::identity::{Name, TrustDomain};
use fleet_proto::peer::{cert_info, CertInfo};
use fleet_proto::transport::certs_from_pem;
use rcgen::{KeyPair, PublicKeyData};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/fleet-agent";
pub const KEY_FILE: &str = "agent.key";
pub const CERT_FILE: &str = "agent.crt";
pub const CA_FILE: &str = "ca.crt";
pub const META_FILE: &str = "agent.toml";

const DIR_MODE: u32 = 0o700;
const KEY_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "not enrolled: run fleet-agent join --controller ADDR:PORT --token TOKEN --ca-pin sha256:HEX \
         (no {CERT_FILE} in {})",
        dir.display()
    )]
    NotEnrolled { dir: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is not usable: {reason}; re-enroll with fleet-agent join --force", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// `agent.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// One `host:port`, or several (controllers on one store, docs/ha.md): written as one
    /// comma-separated string, which older agents read as well.
    pub controller: ControllerList,
    pub name: Name,
    pub trust_domain: TrustDomain,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaFile {
    controller: String,
    name: String,
    trust_domain: String,
}

/// Everything `run` needs to connect, read fresh from disk at each attempt.
pub struct Credentials {
    pub meta: Meta,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub cert: CertInfo,
}

// The key must never reach a log line through a `{:?}`.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("meta", &self.meta)
            .field("cert", &self.cert.identity.uri())
            .finish_non_exhaustive()
    }
}

/// A complete new enrollment to write.
pub struct NewEnrollment<'a> {
    pub meta: &'a Meta,
    pub key_pem: &'a str,
    pub cert_pem: &'a str,
    pub ca_pem: &'a str,
}

#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether this dir holds an enrollment (an `agent.crt`). Errors other than "absent"
    /// (e.g. permission denied) are reported rather than taken as "not enrolled".
    pub fn is_enrolled(&self) -> Result<bool, StateError> {
        let path = self.file(CERT_FILE);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StateError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    pub fn load_meta(&self) -> Result<Meta, StateError> {
        let path = self.file(META_FILE);
        let text = read(&path)?;
        let raw: MetaFile = toml::from_str(&text).map_err(|e| invalid(&path, e))?;
        Ok(Meta {
            controller: raw.controller.parse().map_err(|e| invalid(&path, e))?,
            name: raw.name.parse().map_err(|e| invalid(&path, e))?,
            trust_domain: raw.trust_domain.parse().map_err(|e| invalid(&path, e))?,
        })
    }

    /// Facts of the current certificate, without touching the key.
    pub fn load_cert(&self) -> Result<CertInfo, StateError> {
        let path = self.file(CERT_FILE);
        parse_cert(&path, &read(&path)?)
    }

    /// Loads and cross-checks the whole enrollment.
    pub fn load(&self) -> Result<Credentials, StateError> {
        if !self.is_enrolled()? {
            return Err(StateError::NotEnrolled {
                dir: self.dir.clone(),
            });
        }
        let meta = self.load_meta()?;
        let cert_path = self.file(CERT_FILE);
        let key_path = self.file(KEY_FILE);
        // A renewal cut off mid-swap is finished (or undone) before the pair is read.
        let recovered = fleet_proto::key_swap::recover(&key_path, &cert_path, |cert, key| {
            KeyPair::from_pem(key).is_ok_and(|k| cert_matches_key(cert, &k))
        })
        .map_err(file_err)?;
        if recovered {
            tracing::warn!(dir = %self.dir.display(), "finished a key rotation a crash had interrupted");
        }
        let cert_pem = read(&cert_path)?;
        let cert = parse_cert(&cert_path, &cert_pem)?;
        let key_pem = read(&key_path)?;
        warn_if_exposed(&key_path);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, e))?;
        if !cert_matches_key(&cert_pem, &key) {
            return Err(invalid(
                &cert_path,
                format!("it does not belong to the key in {KEY_FILE}"),
            ));
        }
        let ca_path = self.file(CA_FILE);
        let ca_pem = read(&ca_path)?;
        certs_from_pem(&ca_pem, "the CA file").map_err(|e| invalid(&ca_path, e))?;
        Ok(Credentials {
            meta,
            key_pem,
            cert_pem,
            ca_pem,
            cert,
        })
    }

    /// Writes a whole enrollment. The key goes first, so that a certificate on disk always
    /// has its key next to it; `agent.toml` goes last.
    pub fn write_enrollment(&self, new: &NewEnrollment<'_>) -> Result<(), StateError> {
        self.ensure_dir()?;
        let meta = toml::to_string(&MetaFile {
            controller: new.meta.controller.to_string(),
            name: new.meta.name.to_string(),
            trust_domain: new.meta.trust_domain.to_string(),
        })
        .map_err(|e| invalid(&self.file(META_FILE), e))?;
        write_atomic(&self.dir, KEY_FILE, new.key_pem.as_bytes(), KEY_MODE)?;
        write_atomic(&self.dir, CERT_FILE, new.cert_pem.as_bytes(), PUBLIC_MODE)?;
        write_atomic(&self.dir, CA_FILE, new.ca_pem.as_bytes(), PUBLIC_MODE)?;
        write_atomic(&self.dir, META_FILE, meta.as_bytes(), PUBLIC_MODE)
    }

    /// Replaces the controller addresses of `agent.toml` (learned from a Welcome), keeping
    /// the rest. Returns whether anything changed: an unchanged list writes nothing.
    pub fn write_controllers(&self, list: &ControllerList) -> Result<bool, StateError> {
        let meta = self.load_meta()?;
        if &meta.controller == list {
            return Ok(false);
        }
        let text = toml::to_string(&MetaFile {
            controller: list.to_string(),
            name: meta.name.to_string(),
            trust_domain: meta.trust_domain.to_string(),
        })
        .map_err(|e| invalid(&self.file(META_FILE), e))?;
        write_atomic(&self.dir, META_FILE, text.as_bytes(), PUBLIC_MODE)?;
        Ok(true)
    }

    /// Replaces key and certificate after a renewal with a new key, crash-safe
    /// (`fleet_proto::key_swap`): a crash at any point leaves a pair `load` accepts.
    pub fn write_rotated(&self, key_pem: &str, cert_pem: &str) -> Result<(), StateError> {
        fleet_proto::key_swap::swap(
            &self.file(KEY_FILE),
            &self.file(CERT_FILE),
            key_pem,
            cert_pem,
            PUBLIC_MODE,
        )
        .map_err(file_err)
    }

    /// Creates the dir 0700, or tightens an existing one: it holds our private key.
    fn ensure_dir(&self) -> Result<(), StateError> {
        let io_err = |action, source| StateError::Io {
            action,
            path: self.dir.clone(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.dir)
            .map_err(|e| io_err("create", e))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| io_err("set permissions on", e))
    }
}

/// Writes `dir/name` whole with `mode` (see [`fleet_proto::files::write_atomic`]).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    fleet_proto::files::write_atomic(&dir.join(name), bytes, mode).map_err(file_err)
}

fn file_err(e: fleet_proto::files::FileError) -> StateError {
    StateError::Io {
        action: e.action,
        path: e.path,
        source: e.source,
    }
}

fn read(path: &Path) -> Result<String, StateError> {
    fs::read_to_string(path).map_err(|source| StateError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> StateError {
    StateError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn parse_cert(path: &Path, pem: &str) -> Result<CertInfo, StateError> {
    let certs = certs_from_pem(pem, "the certificate file").map_err(|e| invalid(path, e))?;
    cert_info(&certs[0]).map_err(|e| invalid(path, e))
}

fn cert_matches_key(cert_pem: &str, key: &KeyPair) -> bool {
    let Ok(certs) = certs_from_pem(cert_pem, "the certificate file") else {
        return false;
    };
    match X509Certificate::from_der(&certs[0]) {
        Ok((_, cert)) => cert.public_key().raw == key.subject_public_key_info().as_slice(),
        Err(_) => false,
    }
}

fn warn_if_exposed(key_path: &Path) {
    if let Ok(meta) = fs::metadata(key_path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %key_path.display(),
                mode = format!("{mode:o}"),
                "private key is readable by other users; it should be 0600"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::renew::testca::TestCa;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn enroll(dir: &StateDir) -> (KeyPair, TestCa) {
        let ca = TestCa::new();
        let key = KeyPair::generate().unwrap();
        let cert = ca.issue("spiffe://fleet.local/agent/web-1", &key);
        let meta = Meta {
            controller: "127.0.0.1:7443".parse().unwrap(),
            name: "web-1".parse().unwrap(),
            trust_domain: TrustDomain::default(),
        };
        dir.write_enrollment(&NewEnrollment {
            meta: &meta,
            key_pem: &key.serialize_pem(),
            cert_pem: &cert,
            ca_pem: &ca.pem,
        })
        .unwrap();
        (key, ca)
    }

    #[test]
    fn learned_controllers_replace_only_the_controller_line() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        enroll(&dir);
        let meta_path = dir.path().join(META_FILE);
        let same: ControllerList = "127.0.0.1:7443".parse().unwrap();
        let before = fs::metadata(&meta_path).unwrap().modified().unwrap();
        assert!(
            !dir.write_controllers(&same).unwrap(),
            "unchanged: no write"
        );
        assert_eq!(
            fs::metadata(&meta_path).unwrap().modified().unwrap(),
            before
        );

        let two: ControllerList = "c1.example:7443,127.0.0.1:7443".parse().unwrap();
        assert!(dir.write_controllers(&two).unwrap());
        let meta = dir.load_meta().unwrap();
        assert_eq!(meta.controller, two);
        assert_eq!(meta.name.as_str(), "web-1");
        // One comma-separated string, as agents before the list was learned wrote it.
        let text = fs::read_to_string(&meta_path).unwrap();
        assert!(
            text.contains("controller = \"c1.example:7443,127.0.0.1:7443\""),
            "{text}"
        );
        assert_eq!(mode(&meta_path), 0o644);
        dir.load().unwrap();
    }

    #[test]
    fn an_unusable_controller_line_is_reported_at_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        enroll(&dir);
        let meta_path = dir.path().join(META_FILE);
        let text = fs::read_to_string(&meta_path)
            .unwrap()
            .replace("127.0.0.1:7443", "127.0.0.1");
        fs::write(&meta_path, text).unwrap();
        let err = dir.load().unwrap_err().to_string();
        assert!(err.contains("not a controller address"), "{err}");
        assert!(err.contains("re-enroll"), "{err}");
    }

    #[test]
    fn enrollment_round_trips_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state/nested"));
        let (key, _ca) = enroll(&dir);
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
        assert!(dir.is_enrolled().unwrap());
        let creds = dir.load().unwrap();
        assert_eq!(creds.meta.name.as_str(), "web-1");
        assert_eq!(creds.meta.controller.addrs(), ["127.0.0.1:7443"]);
        assert_eq!(creds.key_pem, key.serialize_pem());
        assert_eq!(
            creds.cert.identity.uri(),
            "spiffe://fleet.local/agent/web-1"
        );
        assert!(!format!("{creds:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn a_rotation_cut_off_after_the_certificate_is_finished_on_load() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let (old, ca) = enroll(&dir);
        let new = KeyPair::generate().unwrap();
        let cert = ca.issue("spiffe://fleet.local/agent/web-1", &new);
        // The first two steps of the swap, then a crash: new key beside, new certificate.
        write_atomic(
            dir.path(),
            "agent.key.next",
            new.serialize_pem().as_bytes(),
            0o600,
        )
        .unwrap();
        write_atomic(dir.path(), CERT_FILE, cert.as_bytes(), PUBLIC_MODE).unwrap();
        let creds = dir.load().unwrap();
        assert_eq!(creds.key_pem, new.serialize_pem());
        assert!(!dir.path().join("agent.key.next").exists());
        assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);

        // Cut off after the first step: the old pair stays, the stray key goes.
        let newer = KeyPair::generate().unwrap();
        write_atomic(
            dir.path(),
            "agent.key.next",
            newer.serialize_pem().as_bytes(),
            0o600,
        )
        .unwrap();
        assert_eq!(dir.load().unwrap().key_pem, new.serialize_pem());
        assert!(!dir.path().join("agent.key.next").exists());

        // A whole swap.
        let cert = ca.issue("spiffe://fleet.local/agent/web-1", &newer);
        dir.write_rotated(&newer.serialize_pem(), &cert).unwrap();
        assert_eq!(dir.load().unwrap().key_pem, newer.serialize_pem());
        assert_ne!(old.serialize_pem(), newer.serialize_pem());
    }

    #[test]
    fn existing_loose_dir_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        enroll(&StateDir::new(tmp.path()));
        assert_eq!(mode(tmp.path()), 0o700);
    }

    #[test]
    fn empty_dir_is_not_enrolled() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("absent"));
        assert!(!dir.is_enrolled().unwrap());
        let err = dir.load().unwrap_err();
        assert!(matches!(err, StateError::NotEnrolled { .. }));
        assert!(err
            .to_string()
            .starts_with("not enrolled: run fleet-agent join"));
    }

    #[test]
    fn broken_state_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        enroll(&dir);

        fs::write(tmp.path().join(META_FILE), "name = 3").unwrap();
        let err = dir.load().unwrap_err().to_string();
        assert!(err.contains(META_FILE), "{err}");

        enroll(&dir);
        fs::remove_file(tmp.path().join(KEY_FILE)).unwrap();
        let err = dir.load().unwrap_err().to_string();
        assert!(
            err.contains(KEY_FILE) && err.contains("cannot read"),
            "{err}"
        );

        // A key that is not the certificate's (e.g. a crash between two writes of a
        // forced re-enrollment) is caught at load, not at the controller.
        enroll(&dir);
        let other = KeyPair::generate().unwrap().serialize_pem();
        write_atomic(tmp.path(), KEY_FILE, other.as_bytes(), 0o600).unwrap();
        let err = dir.load().unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");

        enroll(&dir);
        fs::write(tmp.path().join(CERT_FILE), "not a cert").unwrap();
        let err = dir.load().unwrap_err().to_string();
        assert!(
            err.contains(CERT_FILE) && err.contains("join --force"),
            "{err}"
        );
    }
}
