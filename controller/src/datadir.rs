//! The controller's data directory: CA, serving identity, first admin identity, state.
//!
//! ```text
//! DIR/ca.crt  DIR/ca.key (0600)  DIR/controller.crt  DIR/controller.key (0600)
//! DIR/admin/{ca.crt,admin.crt,admin.key (0600)}   DIR/state.redb
//! DIR/secrets.key (0600, seals secret values in state.redb)   DIR/blobs/
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
