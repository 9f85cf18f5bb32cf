//! Arbitrary bytes as a release archive. Input that does not start with the gzip magic is
//! gzipped first, so the fuzzer works on tar structure rather than on deflate.
//!
//! Properties, whether the unpacker accepts or refuses the archive:
//! - nothing appears beside the destination directory (the only other thing in the
//!   private scratch directory is the archive itself);
//! - nothing under it, followed through any of its symlinks, resolves outside it;
//! - only directories, regular files and symlinks exist: no device, fifo, hard link,
//!   setuid/setgid/sticky bit or group/other write bit;
//! - the unpacked bytes stay under the limit.
#![no_main]

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use fleet_agent::releases::{unpack_for_fuzzing, Limits};
use libfuzzer_sys::fuzz_target;

const MAX_UNPACKED: u64 = 1 << 20;

/// Scratch space on tmpfs when there is one: each run creates and removes a tree.
fn scratch_root() -> PathBuf {
    if let Some(d) = std::env::var_os("FLEET_FUZZ_TMP") {
        return d.into();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// One path step, owned so that link targets can be spliced into the walk.
enum Step {
    Root,
    Up,
    Name(std::ffi::OsString),
}

fn steps(p: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    p.components().filter_map(|c| match c {
        Component::RootDir => Some(Step::Root),
        Component::ParentDir => Some(Step::Up),
        Component::Normal(n) => Some(Step::Name(n.to_owned())),
        Component::Prefix(_) | Component::CurDir => None,
    })
}

/// Where `path` (under `root`) leads once every symlink on the way is followed, missing
/// components taken literally: what a process opening it would reach.
fn resolve(root: &Path, path: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut todo: Vec<Step> = steps(rel).rev().collect();
    let mut hops = 0;
    while let Some(step) = todo.pop() {
        match step {
            Step::Root => out = PathBuf::from("/"),
            Step::Up => {
                out.pop();
            }
            Step::Name(n) => {
                let next = out.join(n);
                match fs::read_link(&next) {
                    Ok(target) => {
                        hops += 1;
                        if hops > 40 {
                            // The kernel gives up too (ELOOP): such a path opens nothing.
                            return root.to_path_buf();
                        }
                        todo.extend(steps(&target).rev());
                    }
                    Err(_) => out = next,
                }
            }
        }
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            walk(&p, out);
        }
        out.push(p);
    }
}

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::Builder::new()
        .prefix("fleet-fuzz-unpack-")
        .tempdir_in(scratch_root())
        .unwrap();
    let archive = scratch.path().join("release.tar.gz");
    if data.starts_with(&[0x1f, 0x8b]) {
        fs::write(&archive, data).unwrap();
    } else {
        fs::write(&archive, gzip(data)).unwrap();
    }
    let dest = scratch.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let limits = Limits {
        max_unpacked: MAX_UNPACKED,
        max_entries: 256,
        ..Limits::default()
    };
    let result = unpack_for_fuzzing(&archive, &dest, &limits);

    let beside: BTreeSet<_> = fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let expected: BTreeSet<_> = ["release.tar.gz", "dest"].map(Into::into).into();
    assert_eq!(beside, expected, "written beside the release ({result:?})");
    assert!(fs::symlink_metadata(&dest).unwrap().is_dir());

    let root = dest.canonicalize().unwrap();
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    let mut bytes = 0;
    for p in &paths {
        let m = fs::symlink_metadata(p).unwrap();
        let mode = m.permissions().mode() & 0o7777;
        let ft = m.file_type();
        if ft.is_symlink() {
            let to = resolve(&root, p);
            assert!(
                to.starts_with(&root),
                "{} leads to {} ({result:?})",
                p.display(),
                to.display()
            );
        } else if ft.is_dir() {
            assert_eq!(mode & !0o755, 0, "{} has mode {mode:o}", p.display());
        } else if ft.is_file() {
            assert_eq!(mode & !0o755, 0, "{} has mode {mode:o}", p.display());
            assert_eq!(m.nlink(), 1, "{} is a hard link", p.display());
            bytes += m.len();
        } else {
            panic!("{} is neither file, directory nor symlink", p.display());
        }
    }
    assert!(bytes <= MAX_UNPACKED, "{bytes} bytes unpacked");
    if let Ok(entries) = result {
        assert!(entries >= 1);
        let m = fs::metadata(&root).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    }
});
