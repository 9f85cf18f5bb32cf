//! Controller backup and restore. `fleet-controller backup` asks the running controller
//! (Admin.Backup, with the data dir's admin identity) for one tar archive: a consistent
//! snapshot of the store (one read transaction), the CA, the serving identity, the first
//! admin identity, the sealing key, and a manifest naming every release blob (the blobs
//! themselves with `--with-blobs`). `fleet-controller restore` unpacks one into a new data
//! directory, offline; agents then reconnect with the certificates they hold.
//!
//! The archive holds the CA key and the key that opens the sealed secrets: it is written
//! 0600, and whoever holds it holds the fleet.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use fleet_proto::v1::{BackupChunk, BackupRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::shared::Shared;
use crate::store::Store;
use crate::timefmt::now_ms;

/// The manifest's name in the archive; its first entry.
pub const MANIFEST: &str = "fleet-backup.json";
const FORMAT: u32 = 1;
/// Files copied from the data directory, with their modes on restore.
const FILES: &[(&str, u32)] = &[
    ("ca.crt", 0o644),
    ("ca.key", 0o600),
    ("controller.crt", 0o644),
    ("controller.key", 0o600),
    ("secrets.key", 0o600),
    ("admin/ca.crt", 0o644),
    ("admin/admin.crt", 0o644),
    ("admin/admin.key", 0o600),
];
const CHUNK: usize = 256 * 1024;
/// Largest archive entry restore reads into memory (every one but the store and blobs,
/// which are streamed to disk).
const MAX_SMALL_ENTRY: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub controller_version: String,
    pub created_at_ms: i64,
    /// Every blob a release or agent package refers to.
    pub blobs: Vec<BlobEntry>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct BlobEntry {
    pub sha256: String,
    pub size: u64,
    /// In the archive as `blobs/<sha256>`.
    pub included: bool,
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "backup: {what}");
    Status::internal(format!("backup failed: {what}: {e}"))
}

fn append_file(tar: &mut tar::Builder<File>, name: &str, path: &Path) -> std::io::Result<()> {
    let mut f = File::open(path)?;
    let mut h = tar::Header::new_gnu();
    h.set_size(f.metadata()?.len());
    h.set_mode(0o600);
    h.set_mtime(0);
    tar.append_data(&mut h, name, &mut f)
}

/// Writes the archive to `out` (a new file, 0600) on this thread.
fn write_archive(shared: &Shared, with_blobs: bool, out: &Path) -> Result<Manifest, Status> {
    let dir = &shared.data_dir;
    let snapshot = tempfile::Builder::new()
        .prefix(".backup-state-")
        .tempdir_in(dir)
        .map_err(|e| internal("cannot make a working directory in the data dir", e))?;
    let state = snapshot.path().join("state.redb");
    shared
        .store
        .snapshot(&state)
        .map_err(|e| internal("cannot snapshot the store", e))?;
    let refs = shared
        .store
        .blob_refs()
        .map_err(|e| internal("cannot list release blobs", e))?;
    let manifest = Manifest {
        format: FORMAT,
        controller_version: env!("CARGO_PKG_VERSION").into(),
        created_at_ms: now_ms(),
        blobs: refs
            .iter()
            .map(|(sha256, &size)| BlobEntry {
                sha256: sha256.clone(),
                size,
                included: with_blobs && matches!(shared.blobs.local(sha256), Ok(Some(_))),
            })
            .collect(),
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| internal("cannot create the archive", e))?;
    let mut tar = tar::Builder::new(file);
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    let mut h = tar::Header::new_gnu();
    h.set_size(json.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(0);
    tar.append_data(&mut h, MANIFEST, json.as_slice())
        .map_err(|e| internal("cannot write the archive", e))?;
    for (name, _) in FILES {
        append_file(&mut tar, name, &dir.join(name))
            .map_err(|e| internal(&format!("cannot add {name}"), e))?;
    }
    append_file(&mut tar, "state.redb", &state)
        .map_err(|e| internal("cannot add the store snapshot", e))?;
    for b in manifest.blobs.iter().filter(|b| b.included) {
        let path = shared.blobs.path(&b.sha256).expect("checked above");
        append_file(&mut tar, &format!("blobs/{}", b.sha256), &path)
            .map_err(|e| internal(&format!("cannot add blob {}", b.sha256), e))?;
    }
    let file = tar
        .into_inner()
        .map_err(|e| internal("cannot finish the archive", e))?;
    file.sync_all()
        .map_err(|e| internal("cannot flush the archive", e))?;
    Ok(manifest)
}

/// Admin.Backup: builds the archive in the data dir off the async workers, then streams it.
pub async fn serve(
    shared: Arc<Shared>,
    actor: String,
    req: BackupRequest,
) -> Result<ReceiverStream<Result<BackupChunk, Status>>, Status> {
    let work = tempfile::Builder::new()
        .prefix(".backup-")
        .tempdir_in(&shared.data_dir)
        .map_err(|e| internal("cannot make a working directory in the data dir", e))?;
    let archive = work.path().join("backup.tar");
    // Before the snapshot, so the archive records its own making.
    shared
        .audit(
            &actor,
            "controller.backup",
            "state",
            if req.with_blobs {
                "with release blobs"
            } else {
                "without release blobs"
            },
        )
        .map_err(crate::shared::internal)?;
    let s = shared.clone();
    let path = archive.clone();
    let manifest = tokio::task::spawn_blocking(move || write_archive(&s, req.with_blobs, &path))
        .await
        .map_err(|e| internal("the archive writer stopped", e))??;
    let size = fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    tracing::info!(
        bytes = size,
        blobs = manifest.blobs.len(),
        included = manifest.blobs.iter().filter(|b| b.included).count(),
        "backup made"
    );
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let _work = work;
        let mut f = match File::open(&archive) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(internal("cannot reopen the archive", e)));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; CHUNK];
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(BackupChunk { data: buf })).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(internal("cannot read the archive", e)));
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Where an archive entry goes in the new data dir, or why it is refused: only the
/// manifest, the known files, the store and `blobs/<64 hex>` are accepted.
fn entry_target(name: &Path) -> anyhow::Result<(String, u32)> {
    if name
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        bail!("unsafe path {} in the archive", name.display());
    }
    let s = name.to_str().context("a non-UTF-8 path in the archive")?;
    if s == MANIFEST || s == "state.redb" {
        return Ok((s.to_owned(), 0o600));
    }
    if let Some((_, mode)) = FILES.iter().find(|(f, _)| *f == s) {
        return Ok((s.to_owned(), *mode));
    }
    if let Some(sha) = s.strip_prefix("blobs/") {
        if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok((s.to_ascii_lowercase(), 0o600));
        }
    }
    bail!("unexpected entry {s} in the archive: is it a fleet controller backup?")
}

/// What a restore put in place.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    pub blobs_restored: usize,
}

/// Unpacks `archive` into `data_dir`, which must not exist or be empty. Everything is
/// written to a sibling directory first and checked (every file present, the store
/// opens, the CA loads), then renamed into place: a corrupt or foreign archive changes
/// nothing.
pub fn restore(archive: &Path, data_dir: &Path) -> anyhow::Result<Restored> {
    if data_dir.exists() {
        let mut entries = fs::read_dir(data_dir)
            .with_context(|| format!("cannot read {}", data_dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty: restore only into a new data directory (stop the controller and move the old one aside first); nothing was changed",
                data_dir.display()
            );
        }
    }
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".fleet-restore-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot make a working directory in {}", parent.display()))?;
    let manifest = unpack(archive, work.path())?;
    for (name, _) in FILES {
        if !work.path().join(name).exists() {
            bail!("the archive has no {name}: it is not a whole fleet controller backup; nothing was changed");
        }
    }
    let state = Store::path(work.path());
    if !state.exists() {
        bail!("the archive has no state.redb; nothing was changed");
    }
    let store = Store::open(&state).context("the archived store does not open")?;
    let td: fleet_proto::identity::TrustDomain = store
        .meta(crate::init::TRUST_DOMAIN_KEY)?
        .context("the archived store has no trust domain")?
        .parse()
        .context("the archived store holds an invalid trust domain")?;
    drop(store);
    let read = |f: &str| fs::read_to_string(work.path().join(f));
    crate::pki::Ca::load(td, &read("ca.crt")?, &read("ca.key")?)
        .context("the archived CA does not load")?;
    let mut blobs_restored = 0;
    for b in &manifest.blobs {
        if b.included {
            let p = work.path().join("blobs").join(&b.sha256);
            let size = fs::metadata(&p)
                .with_context(|| format!("the archive lists blob {} but lacks it", b.sha256))?
                .len();
            if size != b.size {
                bail!(
                    "blob {} is {size} bytes, the manifest says {}",
                    b.sha256,
                    b.size
                );
            }
            blobs_restored += 1;
        }
    }
    fs::create_dir_all(work.path().join("blobs")).context("cannot create blobs/")?;
    for d in [
        work.path().to_path_buf(),
        work.path().join("admin"),
        work.path().join("blobs"),
    ] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set the mode of {}", d.display()))?;
    }
    if data_dir.exists() {
        fs::remove_dir(data_dir)
            .with_context(|| format!("cannot replace {}", data_dir.display()))?;
    }
    let kept = work.keep();
    fs::rename(&kept, data_dir)
        .with_context(|| format!("cannot move {} to {}", kept.display(), data_dir.display()))?;
    Ok(Restored {
        manifest,
        blobs_restored,
    })
}

fn unpack(archive: &Path, into: &Path) -> anyhow::Result<Manifest> {
    let file = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut tar = tar::Archive::new(file);
    let mut manifest: Option<Manifest> = None;
    let mut seen = std::collections::BTreeSet::new();
    for entry in tar.entries().context("not a tar archive")? {
        let mut entry = entry.context("the archive is corrupt or not a fleet controller backup")?;
        if !entry.header().entry_type().is_file() {
            bail!("the archive holds something other than files; nothing was changed");
        }
        let path = entry
            .path()
            .context("an unreadable path in the archive")?
            .into_owned();
        let (name, mode) = entry_target(&path)?;
        if !seen.insert(name.clone()) {
            bail!("{name} appears twice in the archive");
        }
        if name == MANIFEST {
            if entry.size() > MAX_SMALL_ENTRY {
                bail!("the manifest is too large");
            }
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .context("cannot read the manifest")?;
            let m: Manifest = serde_json::from_str(&text)
                .context("the manifest is not a fleet backup manifest")?;
            if m.format != FORMAT {
                bail!("backup format {} is not {FORMAT}: restore it with the fleet-controller version that made it ({})", m.format, m.controller_version);
            }
            manifest = Some(m);
            continue;
        }
        if manifest.is_none() {
            bail!("the archive does not start with {MANIFEST}: it is not a fleet controller backup; nothing was changed");
        }
        if name != "state.redb" && !name.starts_with("blobs/") && entry.size() > MAX_SMALL_ENTRY {
            bail!("{name} is too large for what it should be");
        }
        let target: PathBuf = into.join(&name);
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&target)
            .with_context(|| format!("cannot create {}", target.display()))?;
        std::io::copy(&mut entry, &mut out).with_context(|| format!("cannot write {name}"))?;
        out.sync_all()
            .with_context(|| format!("cannot flush {name}"))?;
    }
    manifest.context("the archive has no manifest: it is not a fleet controller backup")
}

/// `fleet-controller backup`: fetches the archive from the running controller with the
/// data dir's admin identity and writes it to `out` (0600, via a temporary file, so a
/// failed backup never leaves a partial archive under the final name).
pub async fn fetch(
    data_dir: &Path,
    controller: &str,
    out: &Path,
    with_blobs: bool,
) -> anyhow::Result<u64> {
    use fleet_proto::transport::{connect, identity_client_config};
    use fleet_proto::v1::admin_client::AdminClient;
    let admin = data_dir.join("admin");
    let read = |f: &str| {
        fs::read_to_string(admin.join(f)).with_context(|| {
            format!(
                "cannot read {} (the admin identity `init` made)",
                admin.join(f).display()
            )
        })
    };
    let config = identity_client_config(&read("ca.crt")?, &read("admin.crt")?, &read("admin.key")?)
        .context("the data dir's admin identity is unusable")?;
    let channel = connect(controller, config, std::time::Duration::from_secs(10))
        .await
        .with_context(|| {
            format!("cannot reach the controller at {controller}: is it running? (--controller)")
        })?;
    let mut stream = AdminClient::new(channel)
        .backup(BackupRequest { with_blobs })
        .await
        .map_err(|s| anyhow::anyhow!("the controller refused the backup: {}", s.message()))?
        .into_inner();
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".fleet-backup-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut size = 0u64;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("the backup stopped: {}", s.message()))?
    {
        tmp.write_all(&chunk.data)?;
        size += chunk.data.len() as u64;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_entries_are_restored() {
        assert_eq!(
            entry_target(Path::new("ca.key")).unwrap(),
            ("ca.key".into(), 0o600)
        );
        assert_eq!(entry_target(Path::new("admin/admin.crt")).unwrap().1, 0o644);
        assert!(entry_target(Path::new(&format!("blobs/{}", "a".repeat(64)))).is_ok());
        for bad in [
            "../ca.key",
            "/etc/passwd",
            "blobs/short",
            "admin/../ca.key",
            "other.txt",
            "./ca.key",
        ] {
            assert!(entry_target(Path::new(bad)).is_err(), "{bad} accepted");
        }
    }
}
