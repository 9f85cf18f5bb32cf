//! Files replaced whole: the agent's identity and state, the controller's certificate,
//! fleetctl's admin certificate. A crash at any point leaves the old file or the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// Writes `path` atomically with `mode`: a temp file in the same dir (so the rename cannot
/// cross filesystems), created with the final mode from the start (a key is never readable
/// by others, not even for an instant), fsynced, renamed over the target, and the dir
/// fsynced so the rename itself survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let err = |action, path: &Path, source| FileError {
        action,
        path: path.to_owned(),
        source,
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(err(
            "write",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
        ));
    };
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    // A temp file left by a crash may have any mode; start from scratch.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("remove", &tmp, e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| err("create", &tmp, e))?;
    let written = (|| {
        // The umask may have removed bits from `mode`; set exactly what we asked for.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err("write", &tmp, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err("replace", path, e)
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("sync", dir, e))
}

/// [`write_atomic`] unless `path` already holds exactly `bytes` with exactly `mode`: an
/// unchanged unit or config file keeps its mtime, and callers learn whether anything
/// changed (a daemon-reload or a re-apply is needed only then). Returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, FileError> {
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o7777 == mode
            && fs::read(path).is_ok_and(|old| old == bytes)
        {
            return Ok(false);
        }
    }
    write_atomic(path, bytes, mode).map(|()| true)
}

/// Creates `dir` (and its parents) if missing and sets its mode.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), FileError> {
    let err = |action, source| FileError {
        action,
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(|e| err("create", e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| err("set the mode of", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn atomic_write_sets_modes_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        write_atomic(&tmp.path().join("agent.key"), b"one", 0o600).unwrap();
        assert_eq!(mode(&tmp.path().join("agent.key")), 0o600);
        assert_eq!(fs::read(tmp.path().join("agent.key")).unwrap(), b"one");
        // A stale temp file with a loose mode does not leak its mode into the new file.
        let stale = tmp.path().join(".agent.key.tmp");
        fs::write(&stale, "junk").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&tmp.path().join("agent.key"), b"two", 0o600).unwrap();
        assert_eq!(fs::read(tmp.path().join("agent.key")).unwrap(), b"two");
        assert_eq!(mode(&tmp.path().join("agent.key")), 0o600);
        assert!(!stale.exists());
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temp files left behind: {left:?}");
    }

    #[test]
    fn a_failed_write_names_the_path_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("missing-dir").join("f");
        let e = write_atomic(&target, b"x", 0o644).unwrap_err();
        assert_eq!(e.action, "create");
        assert!(e.to_string().contains("missing-dir"), "{e}");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn write_if_changed_skips_same_content_and_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("shop.env");
        assert!(write_if_changed(&p, b"A=1\n", 0o600).unwrap());
        assert!(!write_if_changed(&p, b"A=1\n", 0o600).unwrap());
        // Same bytes, other mode: rewritten so the mode is what was asked for.
        assert!(write_if_changed(&p, b"A=1\n", 0o640).unwrap());
        assert_eq!(mode(&p), 0o640);
        assert!(write_if_changed(&p, b"A=2\n", 0o640).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"A=2\n");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn ensure_dir_creates_parents_with_the_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        ensure_dir(&d, 0o700).unwrap();
        assert_eq!(mode(&d), 0o700);
        ensure_dir(&d, 0o750).unwrap();
        assert_eq!(mode(&d), 0o750);
    }
}
