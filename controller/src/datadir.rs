//! The controller's data directory: CA, serving identity, first admin identity, state.
//!
//! ```text
//! DIR/ca.crt  DIR/ca.key (0600)  DIR/controller.crt  DIR/controller.key (0600)
//! DIR/admin/{ca.crt,admin.crt,admin.key (0600)}   DIR/state.redb
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.0.join("controller.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.0.join("controller.key")
    }
    pub fn admin_dir(&self) -> PathBuf {
        self.0.join("admin")
    }
    pub fn store(&self) -> PathBuf {
        crate::store::Store::path(&self.0)
    }

    pub fn read(&self, path: &Path) -> anyhow::Result<String> {
        fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {} (is {} a controller data dir made by `fleet-controller init`?)",
                path.display(),
                self.0.display()
            )
        })
    }
}

pub fn create_dir_private(path: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Writes a file that must not exist yet, with `mode`, flushed to disk. Keys are created
/// with their final mode, never chmod'ed after the fact.
pub fn write_new(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Replaces `path` with `contents` (mode `mode`) so that a crash at any point leaves either
/// the old file or the new one, never a torn one: a fresh temporary file beside it, flushed,
/// renamed over it, and the directory flushed.
pub fn replace_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.new-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover from a crash of this same PID (after a reboot) would block create_new.
    let _ = fs::remove_file(&tmp);
    let written = write_new(&tmp, contents, mode).and_then(|()| {
        fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot flush {}", dir.display()))
    });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}
