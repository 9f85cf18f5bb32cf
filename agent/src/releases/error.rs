//! What staging can fail with, each naming the app and version it was about.

use std::io;
use std::path::PathBuf;

use fleet_proto::spec::{AppName, Version};

use super::unpack::UnpackError;
use crate::fetch::FetchError;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("release {app} {version}: sha256 {sha256:?} is not 64 hex digits")]
    BadSha256 {
        app: AppName,
        version: Version,
        sha256: String,
    },
    #[error("release {app} {version}: archive of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        app: AppName,
        version: Version,
        size: u64,
        limit: u64,
    },
    #[error(
        "release {app} {version} is already staged with sha256 {existing}; refusing other \
         bytes (sha256 {offered}) under the same version"
    )]
    VersionConflict {
        app: AppName,
        version: Version,
        existing: String,
        offered: String,
    },
    #[error("release {app} {version}: {source}")]
    Fetch {
        app: AppName,
        version: Version,
        source: FetchError,
    },
    #[error("release {app} {version}: download has sha256 {actual}, expected {expected}")]
    Sha256Mismatch {
        app: AppName,
        version: Version,
        expected: String,
        actual: String,
    },
    #[error("release {app} {version}: refused archive entry {entry:?}: {reason}")]
    UnsafeEntry {
        app: AppName,
        version: Version,
        entry: String,
        reason: String,
    },
    #[error("release {app} {version}: {reason}")]
    BadArchive {
        app: AppName,
        version: Version,
        reason: String,
    },
    #[error("release {app} {version} refused: {reason}")]
    Requirements {
        app: AppName,
        version: Version,
        reason: String,
    },
    #[error("release {app} {version}: building the venv failed: `{step}` {outcome}{tail}")]
    Venv {
        app: AppName,
        version: Version,
        step: String,
        outcome: String,
        /// The end of the command's output, on lines of its own (empty if none).
        tail: String,
    },
    #[error("release {app} {version} is not staged on this host")]
    NotStaged { app: AppName, version: Version },
    #[error("{}: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("staging was interrupted: {0}")]
    Interrupted(String),
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// The release a stage is about, to name in the errors of its steps.
pub(super) struct Ctx<'a> {
    pub(super) app: &'a AppName,
    pub(super) version: &'a Version,
}

impl Ctx<'_> {
    pub(super) fn unpack_error(&self, e: UnpackError) -> ReleaseError {
        let (app, version) = (self.app.clone(), self.version.clone());
        match e {
            UnpackError::Entry { entry, reason } => ReleaseError::UnsafeEntry {
                app,
                version,
                entry,
                reason,
            },
            UnpackError::Archive(reason) => ReleaseError::BadArchive {
                app,
                version,
                reason,
            },
            UnpackError::Io { op, path, source } => ReleaseError::Io { op, path, source },
        }
    }
}
