//! Releases on this host: owns `/var/lib/fleet/apps/<app>/` and nothing else.
//!
//! ```text
//! <root>/<app>/
//!   releases/<version>/    unpacked trees; `.fleet-release` inside records the sha256
//!   current -> releases/<version>     what runs; swapped atomically
//!   previous -> releases/<version>    what ran before; kept for rollback
//!   .incoming/<sha256>.tar.gz         downloads, resumable
//!   .staging-<version>-<id>/          unpacking in progress (root only)
//! ```
//!
//! A release directory counts only once its marker is written, and the marker is written
//! last (after unpacking and the venv), so a stage that fails or is cut at any point leaves
//! a directory that is ignored and cleaned up, while the running release and `current` are
//! never touched. Staging the same version again with the same bytes is a no-op; with other
//! bytes it is refused, because "1.4.2" must mean the same code on every host.
//!
//! Operations on one app are serialized (staging, switching and pruning the same app at
//! once would race on these directories); different apps proceed in parallel.

mod error;
mod fsops;
mod links;
mod marker;
pub mod requirements;
#[cfg(test)]
mod tests;
mod unpack;
mod venv;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fleet_proto::spec::{AppName, Version};

use crate::fetch::Fetcher;
use error::Ctx;
pub use error::ReleaseError;
use fsops::{
    blocking, clean_staging, exists, make_dir, random_id, remove_tree, sha256_file, sync_dir,
    sync_fs,
};
use links::{read_version_link, replace_link};
use marker::{normalize_sha, read_marker, write_marker};
pub use unpack::Limits;
pub use venv::{venv_bin, RunAs};

/// Unpacks `archive` into the empty directory `dest` exactly as staging a release does and
/// returns the number of entries, or why it refused. For the fuzz targets (lab/fuzz), which
/// check that no archive can make it write outside `dest`; the agent itself calls `stage`.
#[doc(hidden)]
pub fn unpack_for_fuzzing(
    archive: &Path,
    dest: &Path,
    limits: &Limits,
) -> Result<u64, impl std::fmt::Debug> {
    unpack::unpack(archive, dest, limits).map(|s| s.entries)
}

pub const DEFAULT_ROOT: &str = "/var/lib/fleet/apps";
const RELEASES: &str = "releases";
const CURRENT: &str = "current";
const PREVIOUS: &str = "previous";
const INCOMING: &str = ".incoming";
const STAGING: &str = ".staging-";
const LINK_TMP: &str = ".link-";
/// Written last into a release directory: its sha256 and when it was staged.
pub const MARKER: &str = ".fleet-release";
pub const VENV_DIR: &str = ".venv";

/// One staged release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseInfo {
    pub version: Version,
    pub sha256: String,
    pub staged_at_ms: i64,
    pub path: PathBuf,
}

/// Cheap to clone; clones share the per-app locks.
#[derive(Clone)]
pub struct Releases {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    limits: Limits,
    python: PathBuf,
    locks: Mutex<HashMap<AppName, Arc<tokio::sync::Mutex<()>>>>,
}

impl Default for Releases {
    fn default() -> Self {
        Releases::new(DEFAULT_ROOT)
    }
}

impl Releases {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with(root, Limits::default(), "/usr/bin/python3")
    }

    /// `python` builds venvs: Debian's, so venvs match the system's packages.
    pub fn with(root: impl Into<PathBuf>, limits: Limits, python: impl Into<PathBuf>) -> Self {
        Releases {
            inner: Arc::new(Inner {
                root: root.into(),
                limits,
                python: python.into(),
                locks: Mutex::default(),
            }),
        }
    }

    pub fn app_dir(&self, app: &AppName) -> PathBuf {
        self.inner.root.join(app.as_str())
    }

    pub fn release_dir(&self, app: &AppName, version: &Version) -> PathBuf {
        self.app_dir(app).join(RELEASES).join(version.as_str())
    }

    /// Makes release `version` of `app` present and ready (downloaded, verified, unpacked,
    /// venv built) without touching what runs; returns its directory. Idempotent.
    /// Runs the download through `fetcher`, so call it from a task of its own, never from
    /// the session loop (see `fetch`). A venv is built as `run_as` (the app's user); a
    /// release that needs one is refused without it.
    pub async fn stage(
        &self,
        app: &AppName,
        version: &Version,
        sha256: &str,
        size: u64,
        fetcher: &Fetcher,
        run_as: Option<RunAs>,
    ) -> Result<PathBuf, ReleaseError> {
        let ctx = Ctx { app, version };
        let sha = normalize_sha(sha256).ok_or_else(|| ReleaseError::BadSha256 {
            app: app.clone(),
            version: version.clone(),
            sha256: sha256.to_owned(),
        })?;
        let limit = self.inner.limits.max_compressed;
        if size > limit {
            return Err(ReleaseError::TooLarge {
                app: app.clone(),
                version: version.clone(),
                size,
                limit,
            });
        }
        let _lock = self.lock(app).await;
        let app_dir = self.app_dir(app);
        let dest = self.release_dir(app, version);
        // Explicit modes all the way down: the agent runs with UMask=0077, and the app's
        // user must traverse the root and its app dir to reach `current`.
        make_dir(&self.inner.root, 0o755)?;
        make_dir(&app_dir, 0o755)?;
        make_dir(&app_dir.join(RELEASES), 0o755)?;
        make_dir(&app_dir.join(INCOMING), 0o700)?;

        match read_marker(&dest)? {
            Some(m) if m.sha256 == sha => return Ok(dest),
            Some(m) => {
                return Err(ReleaseError::VersionConflict {
                    app: app.clone(),
                    version: version.clone(),
                    existing: m.sha256,
                    offered: sha,
                })
            }
            None if exists(&dest)? => {
                // A stage cut before its marker: never committed, so never current (switch
                // refuses unmarked releases) — unless someone deleted the marker by hand.
                if self.current(app)?.as_ref() == Some(version) {
                    return Err(ReleaseError::Damaged {
                        path: dest,
                        reason: format!("is current but has no {MARKER}; not replacing it"),
                    });
                }
                remove_tree(&dest)?;
            }
            None => {}
        }
        clean_staging(&app_dir)?;

        let incoming = app_dir.join(INCOMING).join(format!("{sha}.tar.gz"));
        fetcher
            .fetch(&sha, size, &incoming)
            .await
            .map_err(|source| ReleaseError::Fetch {
                app: app.clone(),
                version: version.clone(),
                source,
            })?;
        let actual = blocking({
            let incoming = incoming.clone();
            move || sha256_file(&incoming)
        })
        .await?;
        if actual != sha {
            // The next stage must download again, not "resume" these bytes.
            let _ = fs::remove_file(&incoming);
            return Err(ReleaseError::Sha256Mismatch {
                app: app.clone(),
                version: version.clone(),
                expected: sha,
                actual,
            });
        }

        let staging = app_dir.join(format!("{STAGING}{version}-{}", random_id()));
        make_dir(&staging, 0o700)?;
        let unpacked = blocking({
            let (incoming, staging) = (incoming.clone(), staging.clone());
            let limits = self.inner.limits.clone();
            move || {
                let stats = unpack::unpack(&incoming, &staging, &limits);
                // Contents durable before the directory appears under releases/.
                if stats.is_ok() {
                    sync_fs(&staging)?;
                }
                Ok(stats)
            }
        })
        .await?;
        let stats = match unpacked {
            Ok(stats) => stats,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(ctx.unpack_error(e));
            }
        };
        if let Err(source) = fs::rename(&staging, &dest) {
            let _ = fs::remove_dir_all(&staging);
            return Err(ReleaseError::Io {
                op: "move into place",
                path: dest,
                source,
            });
        }
        sync_dir(&app_dir.join(RELEASES))?;

        if venv::wanted(&dest) {
            tracing::info!(%app, %version, "building the release's venv from its wheels");
            let built = venv::build(
                &self.inner.python,
                &dest,
                self.inner.limits.venv_timeout,
                run_as,
            )
            .await;
            if let Err(e) = built {
                let _ = fs::remove_dir_all(&dest);
                return Err(match e {
                    venv::VenvError::Refused(reason) => ReleaseError::Requirements {
                        app: app.clone(),
                        version: version.clone(),
                        reason,
                    },
                    venv::VenvError::Step {
                        step,
                        outcome,
                        tail,
                    } => ReleaseError::Venv {
                        app: app.clone(),
                        version: version.clone(),
                        step,
                        outcome,
                        tail: if tail.is_empty() {
                            String::new()
                        } else {
                            format!(":\n{tail}")
                        },
                    },
                });
            }
        }
        write_marker(&dest, &sha)?;
        let _ = fs::remove_file(&incoming);
        tracing::info!(
            %app, %version, sha256 = %sha, files = stats.files, bytes = stats.bytes,
            "release staged"
        );
        Ok(dest)
    }

    /// Points `current` at `version` (which must be staged) in one atomic rename and
    /// returns the version it pointed at before. That one is remembered as `previous`,
    /// which `prune` keeps for rollback.
    pub async fn switch_current(
        &self,
        app: &AppName,
        version: &Version,
    ) -> Result<Option<Version>, ReleaseError> {
        let _lock = self.lock(app).await;
        let dest = self.release_dir(app, version);
        if read_marker(&dest)?.is_none() {
            return Err(ReleaseError::NotStaged {
                app: app.clone(),
                version: version.clone(),
            });
        }
        let app_dir = self.app_dir(app);
        let before = self.current(app)?;
        if let Some(old) = before.as_ref().filter(|old| *old != version) {
            replace_link(&app_dir, PREVIOUS, old)?;
        }
        replace_link(&app_dir, CURRENT, version)?;
        sync_dir(&app_dir)?;
        tracing::info!(%app, %version, previous = ?before.as_ref().map(Version::as_str), "current release switched");
        Ok(before)
    }

    /// The version `current` points at, if any.
    pub fn current(&self, app: &AppName) -> Result<Option<Version>, ReleaseError> {
        read_version_link(&self.app_dir(app).join(CURRENT))
    }

    /// The version `current` pointed at before the last switch, if any.
    pub fn previous(&self, app: &AppName) -> Result<Option<Version>, ReleaseError> {
        read_version_link(&self.app_dir(app).join(PREVIOUS))
    }

    /// Staged releases, oldest first.
    pub fn list(&self, app: &AppName) -> Result<Vec<ReleaseInfo>, ReleaseError> {
        let dir = self.app_dir(app).join(RELEASES);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ReleaseError::Io {
                    op: "list",
                    path: dir,
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ReleaseError::Io {
                op: "list",
                path: dir.clone(),
                source,
            })?;
            let Some(version) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let path = entry.path();
            match read_marker(&path) {
                Ok(Some(m)) => out.push(ReleaseInfo {
                    version,
                    sha256: m.sha256,
                    staged_at_ms: m.staged_at_ms,
                    path,
                }),
                Ok(None) => {}
                // One damaged release must not hide the others (or block pruning them).
                Err(e) => tracing::warn!(%app, "skipping a release: {e}"),
            }
        }
        out.sort_by(|a, b| {
            (a.staged_at_ms, a.version.as_str()).cmp(&(b.staged_at_ms, b.version.as_str()))
        });
        Ok(out)
    }

    /// Keeps the `keep` most recently staged releases plus, whatever their age, the current
    /// and the previous one; removes the rest, unfinished releases, leftover staging
    /// directories and downloads. Returns the versions removed.
    pub async fn prune(&self, app: &AppName, keep: usize) -> Result<Vec<Version>, ReleaseError> {
        let _lock = self.lock(app).await;
        let app_dir = self.app_dir(app);
        let protected: Vec<Version> = [self.current(app)?, self.previous(app)?]
            .into_iter()
            .flatten()
            .collect();
        let mut kept = 0;
        let mut removed = Vec::new();
        for r in self.list(app)?.into_iter().rev() {
            if protected.contains(&r.version) || kept < keep {
                kept += 1;
                continue;
            }
            remove_tree(&r.path)?;
            removed.push(r.version);
        }
        // Unfinished releases (no marker) that nothing points at.
        if let Ok(entries) = fs::read_dir(app_dir.join(RELEASES)) {
            for entry in entries.flatten() {
                let Some(version) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                if !protected.contains(&version) && matches!(read_marker(&entry.path()), Ok(None)) {
                    remove_tree(&entry.path())?;
                }
            }
        }
        clean_staging(&app_dir)?;
        if let Ok(entries) = fs::read_dir(app_dir.join(INCOMING)) {
            // Under the app lock no download is in flight; a partial one is only worth
            // keeping until the next stage, and pruning runs after a successful one.
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        if !removed.is_empty() {
            tracing::info!(%app, removed = ?removed.iter().map(Version::as_str).collect::<Vec<_>>(), "old releases removed");
        }
        Ok(removed)
    }

    /// Deletes every release of the app and its directory (the app is removed).
    pub async fn remove_all(&self, app: &AppName) -> Result<(), ReleaseError> {
        let _lock = self.lock(app).await;
        let dir = self.app_dir(app);
        blocking(move || remove_tree(&dir)).await
    }

    async fn lock(&self, app: &AppName) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.clone())
            .or_default()
            .clone();
        m.lock_owned().await
    }
}
