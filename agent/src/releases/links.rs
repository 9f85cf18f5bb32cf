//! The `current` and `previous` symlinks of an app, each replaced in one rename.

use std::fs;
use std::io;
use std::path::Path;

use fleet_proto::spec::Version;

use super::fsops::random_id;
use super::{ReleaseError, LINK_TMP, RELEASES};

/// Atomically makes `<app_dir>/<name>` a symlink to `releases/<version>`: a relative
/// target, so the tree stays valid if the root is moved or bind-mounted elsewhere.
pub(super) fn replace_link(
    app_dir: &Path,
    name: &str,
    version: &Version,
) -> Result<(), ReleaseError> {
    let tmp = app_dir.join(format!("{LINK_TMP}{}", random_id()));
    let target = Path::new(RELEASES).join(version.as_str());
    std::os::unix::fs::symlink(&target, &tmp).map_err(|source| ReleaseError::Io {
        op: "create link",
        path: tmp.clone(),
        source,
    })?;
    let path = app_dir.join(name);
    fs::rename(&tmp, &path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        ReleaseError::Io {
            op: "replace",
            path,
            source,
        }
    })
}

pub(super) fn read_version_link(path: &Path) -> Result<Option<Version>, ReleaseError> {
    let target = match fs::read_link(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReleaseError::Io {
                op: "read link",
                path: path.to_owned(),
                source,
            })
        }
    };
    let version = target
        .strip_prefix(RELEASES)
        .ok()
        .and_then(|v| v.to_str())
        .and_then(|v| v.parse().ok());
    match version {
        Some(v) => Ok(Some(v)),
        None => Err(ReleaseError::Damaged {
            path: path.to_owned(),
            reason: format!("points at {}, not at releases/<version>", target.display()),
        }),
    }
}
