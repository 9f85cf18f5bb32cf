//! Release tarballs on disk, content-addressed: `DATA_DIR/blobs/<sha256>`. Uploads are
//! written to a temporary file while hashed and renamed into place only when complete, so
//! a blob file is always whole and always matches its name.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("release is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("release size {got} does not match the announced {announced} bytes")]
    SizeMismatch { got: u64, announced: u64 },
    #[error("release storage: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Blobs {
    dir: PathBuf,
}

/// An upload in progress.
pub struct Upload {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

pub const CHUNK: usize = 256 * 1024;

impl Blobs {
    pub fn open(data_dir: &Path) -> std::io::Result<Blobs> {
        let dir = data_dir.join("blobs");
        std::fs::create_dir_all(&dir)?;
        Ok(Blobs { dir })
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
        })
    }

    /// Completes an upload: checks the size, names the file by its hash.
    pub fn finish(&self, mut up: Upload, announced: u64) -> Result<(String, u64), BlobError> {
        if announced != 0 && announced != up.size {
            return Err(BlobError::SizeMismatch {
                got: up.size,
                announced,
            });
        }
        up.file.as_file_mut().sync_all()?;
        let sha = hex::encode(up.hasher.finalize());
        let dest = self.dir.join(&sha);
        if !dest.exists() {
            up.file.persist(&dest).map_err(|e| e.error)?;
        }
        Ok((sha, up.size))
    }

    pub fn remove(&self, sha256: &str) {
        if let Some(p) = self.path(sha256) {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Upload {
    pub fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        self.size += data.len() as u64;
        if self.size > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        self.hasher.update(data);
        self.file.write_all(data)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_named_by_content_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let mut up = blobs.begin(10).unwrap();
        up.write(b"hello").unwrap();
        let (sha, size) = blobs.finish(up, 5).unwrap();
        assert_eq!(size, 5);
        assert_eq!(std::fs::read(blobs.path(&sha).unwrap()).unwrap(), b"hello");

        let mut big = blobs.begin(4).unwrap();
        assert!(matches!(
            big.write(b"hello"),
            Err(BlobError::TooLarge { .. })
        ));
        assert!(blobs.path("../etc/passwd").is_none());
        let mut short = blobs.begin(10).unwrap();
        short.write(b"hi").unwrap();
        assert!(matches!(
            blobs.finish(short, 5),
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
