//! Safe unpacking of a release tarball (`.tar.gz`) into a fresh, empty directory.
//!
//! The archive comes from an operator's upload, so it is treated as hostile: nothing it
//! says may create a file outside the release root, make a file the app could use to gain
//! privileges, or fill the disk. Each entry is checked before anything is written, and
//! written by walking its path one component at a time, refusing any symlink on the way —
//! so a link made by an earlier entry can never redirect a later one (`a -> .` then
//! `a/../../x`, or a link to a directory then a file "inside" it).
//!
//! Everything is written fresh (`create_new`), owned by whoever runs the agent (root), and
//! with normalized modes: directories 0755, files 0644 or 0755 if any execute bit was set.
//! App users can read and run the code; they can never write it.

use std::cell::Cell;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use tar::EntryType;

/// Bounds on what one release may contain.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Size of the `.tar.gz` itself.
    pub max_compressed: u64,
    /// Sum of the sizes of all files once unpacked.
    pub max_unpacked: u64,
    /// Number of archive entries (files, directories, links).
    pub max_entries: u64,
    /// Length in bytes of an entry's path or a symlink's target.
    pub max_path: usize,
    /// How long building the venv may take before it is killed.
    pub venv_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_compressed: 512 << 20,
            max_unpacked: 2 << 30,
            max_entries: 100_000,
            max_path: 4096,
            venv_timeout: Duration::from_secs(600),
        }
    }
}

/// Longest file name Linux filesystems accept; longer would only fail later, less clearly.
const MAX_COMPONENT: usize = 255;
/// Names fleet itself writes at the top of a release; an archive may not bring its own.
pub(super) const RESERVED: &[&str] = &[super::MARKER, super::VENV_DIR];

#[derive(Debug)]
pub(super) enum UnpackError {
    /// One entry is refused; `entry` is its path as the archive spells it.
    Entry { entry: String, reason: String },
    /// The archive as a whole is unreadable or over a limit.
    Archive(String),
    /// Writing the release failed (disk full, permissions): not the archive's fault.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Stats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Unpacks `archive` into `dest`, which must exist and be empty.
pub(super) fn unpack(archive: &Path, dest: &Path, limits: &Limits) -> Result<Stats, UnpackError> {
    let file = File::open(archive).map_err(io_err("open", archive))?;
    // File data is bounded entry by entry below; this also bounds what the tar reader
    // buffers for itself (long names, pax headers) and how long a bomb can keep us busy.
    let headroom = limits
        .max_entries
        .saturating_mul(1024)
        .saturating_add(64 << 20);
    let cap = limits.max_unpacked.saturating_add(headroom);
    let over = Rc::new(Cell::new(false));
    let reader = Capped {
        inner: MultiGzDecoder::new(BufReader::new(file)),
        left: cap,
        over: over.clone(),
    };
    let archive_err = |e: io::Error| {
        if over.get() {
            UnpackError::Archive(format!(
                "archive expands to more than {cap} bytes (limit for {} bytes of files)",
                limits.max_unpacked
            ))
        } else {
            UnpackError::Archive(format!("not a readable .tar.gz: {e}"))
        }
    };

    let mut tar = tar::Archive::new(reader);
    let mut stats = Stats::default();
    for entry in tar.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        stats.entries += 1;
        let raw = entry.path().map_err(archive_err)?.into_owned();
        let name = raw.display().to_string();
        let refuse = |reason: String| UnpackError::Entry {
            entry: name.clone(),
            reason,
        };
        if stats.entries > limits.max_entries {
            return Err(refuse(format!(
                "archive has more than {} entries",
                limits.max_entries
            )));
        }
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            // `git archive` puts the commit id here; it describes no file.
            continue;
        }
        let parts = clean_path(&raw, limits.max_path).map_err(|e| refuse(e.to_string()))?;
        let mode = entry.header().mode().map_err(archive_err)?;
        if mode & 0o7000 != 0 {
            return Err(refuse(format!(
                "setuid, setgid and sticky bits are not allowed (mode {mode:04o})"
            )));
        }
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                if stats.bytes.saturating_add(size) > limits.max_unpacked {
                    return Err(refuse(format!(
                        "files would exceed the {}-byte unpacked size limit",
                        limits.max_unpacked
                    )));
                }
                let path = leaf(dest, &parts, &name)?;
                let written = write_file(&path, &mut entry, mode).map_err(|e| match e {
                    Write::Read(e) => archive_err(e),
                    Write::Io(op, source) => exists_or(source, &name, op, &path),
                })?;
                if written != size {
                    return Err(refuse(format!("truncated: {written} of {size} bytes")));
                }
                stats.files += 1;
                stats.bytes += size;
            }
            EntryType::Directory => {
                if !parts.is_empty() {
                    let path = leaf(dest, &parts, &name)?;
                    make_dir(&path, &name)?;
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(archive_err)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                check_link(&parts, &target, limits.max_path).map_err(|e| refuse(e.to_string()))?;
                let path = leaf(dest, &parts, &name)?;
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(|e| exists_or(e, &name, "symlink", &path))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                return Err(refuse(format!(
                    "hard links are not allowed (link to {target:?})"
                )));
            }
            EntryType::Char | EntryType::Block => {
                return Err(refuse("device files are not allowed".into()))
            }
            EntryType::Fifo => return Err(refuse("fifos are not allowed".into())),
            EntryType::GNUSparse => return Err(refuse("sparse files are not supported".into())),
            other => {
                return Err(refuse(format!(
                    "unsupported entry type {:?}",
                    other.as_byte() as char
                )))
            }
        }
    }
    if stats.entries == 0 {
        return Err(UnpackError::Archive("archive is empty".into()));
    }
    fs::set_permissions(dest, Permissions::from_mode(0o755)).map_err(io_err("chmod", dest))?;
    Ok(stats)
}

/// Why an entry's path or a symlink's target is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum UnsafePath {
    #[error("path is longer than {0} bytes")]
    TooLong(usize),
    #[error("absolute paths are not allowed")]
    Absolute,
    #[error("'..' is not allowed in paths")]
    ParentDir,
    #[error("a path component is longer than {MAX_COMPONENT} bytes")]
    LongComponent,
    #[error("{0} is reserved: fleet writes it itself")]
    Reserved(&'static str),
    #[error("the release root cannot be a symlink")]
    RootLink,
    #[error("symlink has an empty target")]
    EmptyTarget,
    #[error("symlink target is longer than {0} bytes")]
    LongTarget(usize),
    #[error("symlink to absolute path {0:?} is not allowed")]
    AbsoluteTarget(PathBuf),
    #[error("symlink target {0:?} has '..' after a name; only leading '..' are allowed")]
    ClimbAfterName(PathBuf),
    #[error("symlink target {0:?} points outside the release")]
    Outside(PathBuf),
}

/// The entry's path as plain names, or why it is refused. A leading `./` (and any `.`) is
/// dropped; the empty result is the release root itself.
fn clean_path(raw: &Path, max_path: usize) -> Result<Vec<OsString>, UnsafePath> {
    if raw.as_os_str().len() > max_path {
        return Err(UnsafePath::TooLong(max_path));
    }
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => return Err(UnsafePath::Absolute),
            Component::ParentDir => return Err(UnsafePath::ParentDir),
            Component::CurDir => {}
            Component::Normal(n) if n.len() > MAX_COMPONENT => {
                return Err(UnsafePath::LongComponent)
            }
            Component::Normal(n) => parts.push(n.to_owned()),
        }
    }
    let top = parts.first().and_then(|t| t.to_str());
    if let Some(r) = RESERVED.iter().find(|r| top == Some(**r)) {
        return Err(UnsafePath::Reserved(r));
    }
    Ok(parts)
}

/// A symlink may point anywhere inside the release, and nowhere else. Its target is taken
/// from the link's own directory: leading `..` may climb at most back to the release root,
/// and no `..` may follow a name. That second rule is stricter than a lexical check and is
/// what makes links safe in combination: after a name the path may pass through another
/// link (`x -> .`), where a later `..` would climb from wherever that link leads, not
/// from where the text suggests (`y -> x/..` would leave the root).
fn check_link(parts: &[OsString], target: &Path, max_path: usize) -> Result<(), UnsafePath> {
    if parts.is_empty() {
        return Err(UnsafePath::RootLink);
    }
    if target.as_os_str().is_empty() {
        return Err(UnsafePath::EmptyTarget);
    }
    if target.as_os_str().len() > max_path {
        return Err(UnsafePath::LongTarget(max_path));
    }
    let depth = parts.len() - 1;
    let mut up = 0;
    let mut named = false;
    for c in target.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => {
                return Err(UnsafePath::AbsoluteTarget(target.to_owned()))
            }
            Component::CurDir => {}
            Component::ParentDir if named => {
                return Err(UnsafePath::ClimbAfterName(target.to_owned()))
            }
            Component::ParentDir => {
                up += 1;
                if up > depth {
                    return Err(UnsafePath::Outside(target.to_owned()));
                }
            }
            Component::Normal(_) => named = true,
        }
    }
    Ok(())
}

/// Makes the parent directories of `parts` (never through a symlink) and returns the path
/// of its last component, which the caller creates.
fn leaf(dest: &Path, parts: &[OsString], name: &str) -> Result<PathBuf, UnpackError> {
    let mut path = dest.to_path_buf();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(UnpackError::Entry {
            entry: name.to_owned(),
            reason: "only a directory may name the release root".into(),
        });
    };
    for d in dirs {
        path.push(d);
        make_dir(&path, name)?;
    }
    path.push(last);
    Ok(path)
}

/// Creates directory `path` (mode 0755) unless it already is one; anything else in its
/// place — a file, or a symlink that could lead out — is refused.
fn make_dir(path: &Path, name: &str) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(m) => Err(UnpackError::Entry {
            entry: name.to_owned(),
            reason: format!(
                "{} is {} in the archive, not a directory",
                path.file_name().unwrap_or_default().to_string_lossy(),
                if m.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "a file"
                }
            ),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(path).map_err(io_err("create directory", path))?;
            fs::set_permissions(path, Permissions::from_mode(0o755)).map_err(io_err("chmod", path))
        }
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

enum Write {
    Read(io::Error),
    Io(&'static str, io::Error),
}

fn write_file(path: &Path, data: &mut impl Read, mode: u32) -> Result<u64, Write> {
    let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
    // create_new (O_EXCL) never follows a symlink and never reuses an existing file, so a
    // duplicate entry cannot overwrite or write through something made earlier.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Write::Io("create", e))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Write::Read(e)),
        };
        io::Write::write_all(&mut file, &buf[..n]).map_err(|e| Write::Io("write", e))?;
        written += n as u64;
    }
    // The umask may have cleared bits from `mode` at creation.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(|e| Write::Io("chmod", e))?;
    Ok(written)
}

fn exists_or(e: io::Error, name: &str, op: &'static str, path: &Path) -> UnpackError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        UnpackError::Entry {
            entry: name.to_owned(),
            reason: "appears more than once in the archive".into(),
        }
    } else {
        io_err(op, path)(e)
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A reader that fails, and says so through `over`, once more than `left` bytes were read.
struct Capped<R> {
    inner: R,
    left: u64,
    over: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte more than allowed tells a bomb from an archive that ends exactly here.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.over.set(true);
                    Err(io::Error::other("archive expands beyond the limit"))
                }
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(p: &str) -> Vec<OsString> {
        clean_path(Path::new(p), 4096).unwrap()
    }

    #[test]
    fn paths_are_cleaned_or_refused() {
        assert_eq!(parts("./app.py"), vec![OsString::from("app.py")]);
        assert_eq!(parts("a/./b"), vec![OsString::from("a"), "b".into()]);
        assert!(parts("./").is_empty());
        assert!(clean_path(Path::new("/etc/passwd"), 4096).is_err());
        assert!(clean_path(Path::new("a/../b"), 4096).is_err());
        assert!(clean_path(Path::new(".fleet-release"), 4096).is_err());
        assert!(clean_path(Path::new("./.venv/bin/python"), 4096).is_err());
        // Only the top level is reserved.
        assert_eq!(parts("lib/.venv").len(), 2);
        assert!(clean_path(Path::new(&"a".repeat(300)), 4096).is_err());
        assert!(clean_path(Path::new(&"a/".repeat(100)), 50).is_err());
    }

    #[test]
    fn symlink_targets_stay_inside() {
        let link = |p: &str, t: &str| check_link(&parts(p), Path::new(t), 4096);
        assert!(link("a", ".").is_ok());
        assert!(link("a", "b/c").is_ok());
        assert!(link("x/y/a", "../../b").is_ok());
        assert!(link("x/a", "..").is_ok());
        assert!(link("a", "..").is_err());
        assert!(link("x/a", "../../b").is_err());
        assert!(link("a", "/etc").is_err());
        assert!(link("a", "b/../c").is_err());
        assert!(link("a", "").is_err());
    }

    #[test]
    fn capped_reader_tells_the_limit_from_the_end() {
        let over = Rc::new(Cell::new(false));
        let mut r = Capped {
            inner: &[1u8, 2, 3][..],
            left: 3,
            over: over.clone(),
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, [1, 2, 3]);
        let mut r = Capped {
            inner: &[1u8, 2, 3, 4][..],
            left: 3,
            over: over.clone(),
        };
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        assert!(over.get());
    }
}
