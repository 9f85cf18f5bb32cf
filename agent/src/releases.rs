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

pub mod requirements;
#[cfg(test)]
mod tests;
mod unpack;
mod venv;

use std::collections::HashMap;
use std::fs::{self, File, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fleet_proto::spec::{AppName, Version};
use sha2::{Digest, Sha256};

use crate::fetch::{FetchError, Fetcher};
pub use unpack::Limits;
use unpack::UnpackError;
pub use venv::{venv_bin, RunAs};

/// Unpacks `archive` into the empty directory `dest` exactly as staging a release does and
/// returns the number of entries, or why it refused. For the fuzz targets (lab/fuzz), which
/// check that no archive can make it write outside `dest`; the agent itself calls `stage`.
#[doc(hidden)]
pub fn unpack_for_fuzzing(archive: &Path, dest: &Path, limits: &Limits) -> Result<u64, String> {
    unpack::unpack(archive, dest, limits)
        .map(|s| s.entries)
        .map_err(|e| format!("{e:?}"))
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

struct Ctx<'a> {
    app: &'a AppName,
    version: &'a Version,
}

impl Ctx<'_> {
    fn unpack_error(&self, e: UnpackError) -> ReleaseError {
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

/// Lowercase 64-hex, or None. It becomes a file name, so nothing else passes.
fn normalize_sha(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

struct Marker {
    sha256: String,
    staged_at_ms: i64,
}

fn read_marker(release: &Path) -> Result<Option<Marker>, ReleaseError> {
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

fn write_marker(release: &Path, sha256: &str) -> Result<(), ReleaseError> {
    let now = crate::clock::now_ms();
    let path = release.join(MARKER);
    let text = format!("sha256={sha256}\nstaged_at_ms={now}\n");
    fleet_proto::files::write_atomic(&path, text.as_bytes(), 0o644).map_err(|e| ReleaseError::Io {
        op: e.action,
        path: e.path,
        source: e.source,
    })
}

/// Atomically makes `<app_dir>/<name>` a symlink to `releases/<version>`: a relative
/// target, so the tree stays valid if the root is moved or bind-mounted elsewhere.
fn replace_link(app_dir: &Path, name: &str, version: &Version) -> Result<(), ReleaseError> {
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

fn read_version_link(path: &Path) -> Result<Option<Version>, ReleaseError> {
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

/// Removes staging directories and link temporaries a crashed or cut stage left behind.
/// Only called under the app lock, when none can be in use.
fn clean_staging(app_dir: &Path) -> Result<(), ReleaseError> {
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

fn make_dir(path: &Path, mode: u32) -> Result<(), ReleaseError> {
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

fn exists(path: &Path) -> Result<bool, ReleaseError> {
    path.try_exists().map_err(|source| ReleaseError::Io {
        op: "inspect",
        path: path.to_owned(),
        source,
    })
}

fn remove_tree(path: &Path) -> Result<(), ReleaseError> {
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

fn sha256_file(path: &Path) -> Result<String, ReleaseError> {
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

fn sync_dir(path: &Path) -> Result<(), ReleaseError> {
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
fn sync_fs(path: &Path) -> Result<(), ReleaseError> {
    let io = |source| ReleaseError::Io {
        op: "sync",
        path: path.to_owned(),
        source,
    };
    let dir = File::open(path).map_err(io)?;
    nix::unistd::syncfs(&dir).map_err(|e| io(e.into()))
}

fn random_id() -> String {
    hex::encode(rand::random::<[u8; 4]>())
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReleaseError> + Send + 'static,
) -> Result<T, ReleaseError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        // Only a runtime shutting down cancels it; a panic is a bug worth seeing as one.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(ReleaseError::Interrupted(e.to_string())),
    }
}
