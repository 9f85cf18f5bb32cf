//! Release tarballs on disk, content-addressed: `DATA_DIR/blobs/<sha256>`. Uploads are
//! written to a temporary file while hashed and renamed into place only when complete, so
//! a blob file is always whole and always matches its name.
//!
//! On a store several controllers share (docs/ha.md) the store holds every blob too, and
//! this directory is the controller's cache of them: an upload is kept in both before it
//! is acknowledged, and a blob another controller received is copied from the store the
//! first time it is asked for, checked against its name on the way in.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("release is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("release size {got} does not match the announced {announced} bytes")]
    SizeMismatch { got: u64, announced: u64 },
    #[error("release is not a gzip-compressed tarball ({0}): build it with `tar czf`")]
    NotTarball(String),
    #[error(
        "agent package is not a Debian package (no ar archive header): upload a fleet-agent .deb"
    )]
    NotDeb,
    #[error("release storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("release storage: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Compressed bytes kept from an upload's start to check its format.
const HEAD: usize = 64 * 1024;

/// Whether `head` (the first bytes of an upload) starts a gzip stream whose first 512
/// bytes are a tar header with a valid checksum: what the agent's unpacker needs, checked
/// before the upload is stored rather than on every host.
fn check_tarball(head: &[u8]) -> Result<(), BlobError> {
    use std::io::Read;
    let bad = |why: &str| BlobError::NotTarball(why.to_owned());
    if !head.starts_with(&[0x1f, 0x8b]) {
        return Err(bad("no gzip header"));
    }
    let mut block = [0u8; 512];
    let mut gz = flate2::read::MultiGzDecoder::new(head);
    gz.read_exact(&mut block)
        .map_err(|e| bad(&format!("cannot decompress its start: {e}")))?;
    if block.iter().all(|b| *b == 0) {
        return Err(bad("the archive is empty"));
    }
    let header = tar::Header::from_byte_slice(&block);
    let stored = header.cksum().map_err(|_| bad("no tar header"))?;
    let mut fixed = header.clone();
    fixed.set_cksum();
    if fixed.cksum().ok() != Some(stored) {
        return Err(bad("no tar header"));
    }
    Ok(())
}

/// What an upload must be, checked on its first bytes before it is stored.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// A release: gzip-compressed tar, what the agent's unpacker reads.
    Tarball,
    /// A fleet-agent package: a Debian binary package, an ar archive.
    Deb,
}

impl Format {
    fn check(self, head: &[u8]) -> Result<(), BlobError> {
        match self {
            Format::Tarball => check_tarball(head),
            Format::Deb if head.starts_with(b"!<arch>\n") => Ok(()),
            Format::Deb => Err(BlobError::NotDeb),
        }
    }
}

pub struct Blobs {
    dir: PathBuf,
    /// Blobs being served, one open file each however many agents fetch them: a
    /// fleet-wide deploy has every host fetch the same blob at once, and one descriptor
    /// per fetch on top of one socket per agent would run out of descriptors.
    serving: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<std::fs::File>>>,
    /// The store every controller reads, when they share one.
    shared: Option<std::sync::Arc<crate::store::Store>>,
    /// Held while a blob is copied in from the shared store, so a fleet-wide deploy's
    /// fetches on a controller new to the blob copy it once, not once per host.
    filling: std::sync::Mutex<()>,
}

/// An upload in progress.
pub struct Upload {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
    limit: u64,
    head: Vec<u8>,
}

pub const CHUNK: usize = 256 * 1024;

/// Streams an operator's upload into the store: the first message's bytes, then every
/// further message's, bounded by `limit` before anything is written, checked as `format`.
/// `what` names the upload in errors ("release", "package"); `data` picks a chunk's bytes.
pub async fn receive<T: prost::Message + Default>(
    blobs: &Blobs,
    what: &str,
    (announced, first): (u64, &[u8]),
    chunks: &mut tonic::Streaming<T>,
    data: fn(&T) -> &[u8],
    limit: u64,
    format: Format,
) -> Result<(String, u64), tonic::Status> {
    use tonic::Status;
    if announced > limit {
        return Err(Status::invalid_argument(format!(
            "{what} is {announced} bytes, over the controller's limit of {limit} (max_release_bytes)"
        )));
    }
    let mut up = blobs
        .begin(limit)
        .map_err(|e| Status::internal(e.to_string()))?;
    up.write(first)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    while let Some(chunk) = chunks.message().await? {
        up.write(data(&chunk))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    blobs
        .finish(up, announced, format)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

impl Blobs {
    pub fn open(data_dir: &Path) -> std::io::Result<Blobs> {
        let dir = data_dir.join("blobs");
        std::fs::create_dir_all(&dir)?;
        Ok(Blobs {
            dir,
            serving: Default::default(),
            shared: None,
            filling: Default::default(),
        })
    }

    /// Keeps every blob in `store` too when controllers share it (nothing changes on the
    /// embedded store, whose controller is the only one).
    pub fn with_store(mut self, store: &std::sync::Arc<crate::store::Store>) -> Blobs {
        if store.is_shared() {
            self.shared = Some(store.clone());
        }
        self
    }

    /// Where blob `sha256` is on this controller's disk, copied there from the shared
    /// store first if another controller received it; None when no controller holds it.
    /// Blocks for the copy: call it off the async workers.
    pub fn local(&self, sha256: &str) -> Result<Option<PathBuf>, BlobError> {
        let Some(path) = self.path(sha256) else {
            return Ok(None);
        };
        if path.exists() {
            return Ok(Some(path));
        }
        let Some(store) = &self.shared else {
            return Ok(None);
        };
        let _filling = self.filling.lock().unwrap_or_else(|e| e.into_inner());
        if path.exists() {
            return Ok(Some(path));
        }
        let sha = sha256.to_ascii_lowercase();
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let got = {
            let mut hashing = HashingWriter {
                inner: std::io::BufWriter::new(tmp.as_file_mut()),
                hasher: Sha256::new(),
            };
            if store.fetch_blob(&sha, &mut hashing)?.is_none() {
                return Ok(None);
            }
            let HashingWriter { inner, hasher } = hashing;
            inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            hex::encode(hasher.finalize())
        };
        if got != sha {
            return Err(BlobError::Io(std::io::Error::other(format!(
                "blob {sha} from the shared store hashes to {got}: not kept"
            ))));
        }
        tmp.persist(&path).map_err(|e| e.error)?;
        tracing::info!(sha256 = %sha, "copied a blob from the shared store");
        Ok(Some(path))
    }

    /// The blob's shared file if a fetch of it is running now. It was found in use when
    /// that fetch opened it, so later fetches of a fleet-wide deploy skip the store.
    pub fn serving_now(&self, sha256: &str) -> Option<std::sync::Arc<std::fs::File>> {
        let serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        serving
            .get(&sha256.to_ascii_lowercase())
            .and_then(std::sync::Weak::upgrade)
    }

    /// The blob opened for reading at offsets (`FileExt::read_at`), shared by every
    /// fetch of it that is running.
    pub fn open_shared(&self, sha256: &str) -> std::io::Result<std::sync::Arc<std::fs::File>> {
        let path = self.path(sha256).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a blob name")
        })?;
        if self.shared.is_some() && !path.exists() {
            self.local(sha256).map_err(std::io::Error::other)?;
        }
        let key = sha256.to_ascii_lowercase();
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = serving.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(file);
        }
        let file = std::sync::Arc::new(std::fs::File::open(path)?);
        // Entries of blobs no fetch holds any more; as many as blobs, so this stays small.
        serving.retain(|_, f| f.strong_count() > 0);
        serving.insert(key, std::sync::Arc::downgrade(&file));
        Ok(file)
    }

    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        // Names come from our own hashing or from agents: only 64 hex digits are a name.
        (sha256.len() == 64 && sha256.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| self.dir.join(sha256.to_ascii_lowercase()))
    }

    pub fn begin(&self, limit: u64) -> std::io::Result<Upload> {
        Ok(Upload {
            file: tempfile::NamedTempFile::new_in(&self.dir)?,
            hasher: Sha256::new(),
            size: 0,
            limit,
            head: Vec::new(),
        })
    }

    /// Completes an upload: checks the size and the format, names the file by its hash.
    pub fn finish(
        &self,
        mut up: Upload,
        announced: u64,
        format: Format,
    ) -> Result<(String, u64), BlobError> {
        if announced != 0 && announced != up.size {
            return Err(BlobError::SizeMismatch {
                got: up.size,
                announced,
            });
        }
        format.check(&up.head)?;
        up.file.as_file_mut().sync_all()?;
        let sha = hex::encode(up.hasher.finalize());
        let dest = self.dir.join(&sha);
        if !dest.exists() {
            up.file.persist(&dest).map_err(|e| e.error)?;
        }
        if let Some(store) = &self.shared {
            let mut file = std::io::BufReader::new(std::fs::File::open(&dest)?);
            store.put_blob(&sha, up.size, &mut file)?;
        }
        Ok((sha, up.size))
    }

    /// Deletes the blob files no record names any more (`keep`). On a shared store another
    /// controller may have deleted a release while this one was a standby, and only its
    /// own copy would stay behind; run before serving, so no upload is half-recorded.
    /// Files that are not blob names (uploads in progress) are left alone. Returns how
    /// many went.
    pub fn evict_except(
        &self,
        keep: &std::collections::BTreeMap<String, u64>,
    ) -> std::io::Result<usize> {
        let mut evicted = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if self.path(&name).is_none() || name != name.to_ascii_lowercase() {
                continue;
            }
            if !keep.contains_key(&name) {
                std::fs::remove_file(entry.path())?;
                evicted += 1;
            }
        }
        Ok(evicted)
    }

    pub fn remove(&self, sha256: &str) {
        if let Some(p) = self.path(sha256) {
            let _ = std::fs::remove_file(p);
        }
        if let Some(store) = &self.shared {
            if let Err(e) = store.remove_blob(&sha256.to_ascii_lowercase()) {
                tracing::warn!(%sha256, error = %e, "cannot delete a blob from the shared store; it stays there unused");
            }
        }
    }
}

/// Hashes what it passes on, to check a blob copied in against its name.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Upload {
    pub fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        self.size += data.len() as u64;
        if self.size > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        self.hasher.update(data);
        if self.head.len() < HEAD {
            let take = data.len().min(HEAD - self.head.len());
            self.head.extend_from_slice(&data[..take]);
        }
        self.file.write_all(data)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball() -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "app.py", &b"print"[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn only_gzip_tarballs_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let gz_text = {
            use std::io::Write as _;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&[b'x'; 2000]).unwrap();
            e.finish().unwrap()
        };
        for bad in [&b"hello, not a tarball"[..], &gz_text[..]] {
            let mut up = blobs.begin(1 << 20).unwrap();
            up.write(bad).unwrap();
            let err = blobs.finish(up, 0, Format::Tarball).unwrap_err();
            assert!(matches!(err, BlobError::NotTarball(_)), "{err}");
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
            0
        );
    }

    #[test]
    fn agent_packages_must_be_ar_archives_and_releases_tarballs() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let mut up = blobs.begin(1 << 20).unwrap();
        up.write(&tarball()).unwrap();
        let err = blobs.finish(up, 0, Format::Deb).unwrap_err();
        assert!(matches!(err, BlobError::NotDeb), "{err}");
        let mut up = blobs.begin(1 << 20).unwrap();
        up.write(b"!<arch>\ndebian-binary   ").unwrap();
        blobs.finish(up, 0, Format::Deb).unwrap();
        let mut up = blobs.begin(1 << 20).unwrap();
        up.write(b"!<arch>\ndebian-binary   ").unwrap();
        let err = blobs.finish(up, 0, Format::Tarball).unwrap_err();
        assert!(matches!(err, BlobError::NotTarball(_)), "{err}");
    }

    #[test]
    fn every_fetch_of_a_blob_shares_one_open_file() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let mut up = blobs.begin(1 << 20).unwrap();
        up.write(&tarball()).unwrap();
        let (sha, _) = blobs.finish(up, 0, Format::Tarball).unwrap();
        let a = blobs.open_shared(&sha).unwrap();
        let b = blobs.open_shared(&sha.to_ascii_uppercase()).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert!(blobs.serving_now(&sha).is_some());
        drop((a, b));
        assert!(blobs.serving_now(&sha).is_none());
        // Nobody holds it: the next fetch opens it again.
        let c = blobs.open_shared(&sha).unwrap();
        assert_eq!(std::sync::Arc::strong_count(&c), 1);
        assert!(blobs.open_shared("../../etc/passwd").is_err());
    }

    #[test]
    fn eviction_keeps_named_blobs_and_uploads_in_progress() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(tmp.path()).unwrap();
        let (kept, gone) = ("a".repeat(64), "b".repeat(64));
        let dir = tmp.path().join("blobs");
        for name in [kept.as_str(), gone.as_str(), ".tmpUpload"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let keep = std::collections::BTreeMap::from([(kept.clone(), 1)]);
        assert_eq!(blobs.evict_except(&keep).unwrap(), 1);
        assert!(dir.join(&kept).exists());
        assert!(!dir.join(&gone).exists());
        assert!(dir.join(".tmpUpload").exists());
        assert_eq!(blobs.evict_except(&keep).unwrap(), 0);
    }

    #[test]
    fn uploads_are_named_by_content_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let t = tarball();
        let mut up = blobs.begin(1 << 20).unwrap();
        up.write(&t).unwrap();
        let (sha, size) = blobs.finish(up, t.len() as u64, Format::Tarball).unwrap();
        assert_eq!(size, t.len() as u64);
        assert_eq!(std::fs::read(blobs.path(&sha).unwrap()).unwrap(), t);

        let mut big = blobs.begin(4).unwrap();
        assert!(matches!(
            big.write(b"hello"),
            Err(BlobError::TooLarge { .. })
        ));
        assert!(blobs.path("../etc/passwd").is_none());
        let mut short = blobs.begin(10).unwrap();
        short.write(b"hi").unwrap();
        assert!(matches!(
            blobs.finish(short, 5, Format::Tarball),
            Err(BlobError::SizeMismatch { .. })
        ));
        drop(big);
        // Only the one finished blob is left (temp files are removed when dropped).
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
            1
        );
    }
}
