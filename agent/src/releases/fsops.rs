//! Filesystem steps of staging and pruning, each failing with the path it was about.

use std::fs::{self, File, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{ReleaseError, LINK_TMP, STAGING};

/// Removes staging directories and link temporaries a crashed or cut stage left behind.
/// Only called under the app lock, when none can be in use.
pub(super) fn clean_staging(app_dir: &Path) -> Result<(), ReleaseError> {
    let entries = match fs::read_dir(app_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ReleaseError::Io {
                op: "list",
                path: app_dir.to_owned(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(STAGING) {
            remove_tree(&entry.path())?;
        } else if name.starts_with(LINK_TMP) {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

pub(super) fn make_dir(path: &Path, mode: u32) -> Result<(), ReleaseError> {
    let io = |op| {
        move |source| ReleaseError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    match fs::create_dir_all(path) {
        Ok(()) => fs::set_permissions(path, Permissions::from_mode(mode)).map_err(io("chmod")),
        Err(source) => Err(io("create")(source)),
    }
}

pub(super) fn exists(path: &Path) -> Result<bool, ReleaseError> {
    path.try_exists().map_err(|source| ReleaseError::Io {
        op: "inspect",
        path: path.to_owned(),
        source,
    })
}

pub(super) fn remove_tree(path: &Path) -> Result<(), ReleaseError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ReleaseError::Io {
            op: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

pub(super) fn sha256_file(path: &Path) -> Result<String, ReleaseError> {
    let io = |op| {
        move |source| ReleaseError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let mut file = File::open(path).map_err(io("open"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io("read"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

pub(super) fn sync_dir(path: &Path) -> Result<(), ReleaseError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| ReleaseError::Io {
            op: "sync",
            path: path.to_owned(),
            source,
        })
}

/// Flushes the whole filesystem holding `path`: one call instead of an fsync per file of
/// a release, so a power cut never leaves a marked release with empty files.
pub(super) fn sync_fs(path: &Path) -> Result<(), ReleaseError> {
    let io = |source| ReleaseError::Io {
        op: "sync",
        path: path.to_owned(),
        source,
    };
    let dir = File::open(path).map_err(io)?;
    nix::unistd::syncfs(&dir).map_err(|e| io(e.into()))
}

pub(super) fn random_id() -> String {
    hex::encode(rand::random::<[u8; 4]>())
}

/// Runs blocking filesystem work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReleaseError> + Send + 'static,
) -> Result<T, ReleaseError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        // Only a runtime shutting down cancels it; a panic is a bug worth seeing as one.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(ReleaseError::Interrupted(e.to_string())),
    }
}
