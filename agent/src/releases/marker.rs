//! The `.fleet-release` marker: written last into a release directory, so a directory
//! without one is an unfinished stage that is ignored and cleaned up.

use std::fs;
use std::io;
use std::path::Path;

use super::{ReleaseError, MARKER};

/// Lowercase 64-hex, or None. It becomes a file name, so nothing else passes.
pub(super) fn normalize_sha(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

pub(super) struct Marker {
    pub(super) sha256: String,
    pub(super) staged_at_ms: i64,
}

pub(super) fn read_marker(release: &Path) -> Result<Option<Marker>, ReleaseError> {
    let path = release.join(MARKER);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(source) => {
            return Err(ReleaseError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    let sha256 = field("sha256").and_then(normalize_sha);
    let staged_at_ms = field("staged_at_ms").and_then(|v| v.parse().ok());
    match (sha256, staged_at_ms) {
        (Some(sha256), Some(staged_at_ms)) => Ok(Some(Marker {
            sha256,
            staged_at_ms,
        })),
        _ => Err(ReleaseError::Damaged {
            path,
            reason: "unreadable release marker".into(),
        }),
    }
}

pub(super) fn write_marker(release: &Path, sha256: &str) -> Result<(), ReleaseError> {
    let now = crate::clock::now_ms();
    let path = release.join(MARKER);
    let text = format!("sha256={sha256}\nstaged_at_ms={now}\n");
    fleet_proto::files::write_atomic(&path, text.as_bytes(), 0o644).map_err(|e| ReleaseError::Io {
        op: e.action,
        path: e.path,
        source: e.source,
    })
}
