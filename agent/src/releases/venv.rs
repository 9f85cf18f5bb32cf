//! A per-release virtualenv, built offline from the wheels the release ships, never as
//! root.
//!
//! A release with `requirements.txt` and a `wheels/` directory gets `<release>/.venv`,
//! built where it will be used (a venv's scripts carry its absolute path, so it cannot be
//! built elsewhere and moved). `requirements.txt` never reaches pip: it is parsed into
//! `name==version` pins (see `requirements`), each pin is matched to one wheel file, and
//! pip gets exactly those files on a fixed command line with `--no-index --no-deps`
//! (`pip check` then proves the pins are a complete set). pip and `python -m venv` run as
//! the app's own user with no privileges and a clean environment, in a `.venv` owned by
//! that user; once built, the tree is handed to root (0755/0644, no setuid bits) so the
//! app can run its code but never change it, like the rest of its release. A release
//! without `requirements.txt` runs on the system python with Debian's gunicorn/uvicorn.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{fchownat, Gid, Uid};
use tokio::process::Command;

use super::requirements;

pub(super) const REQUIREMENTS: &str = "requirements.txt";
pub(super) const WHEELS: &str = "wheels";
/// Lines of pip's output kept in an error: enough for its actual complaint.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 4096;
/// Bounds on the tree pip leaves, walked as root afterwards.
const MAX_DEPTH: usize = 64;
const MAX_ENTRIES: usize = 500_000;
/// Wheels considered in `wheels/`.
const MAX_WHEEL_FILES: usize = 10_000;

/// Who builds the venv: the app's user, resolved by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// The venv's `bin/` (holding `python`, `gunicorn`...) if this release has one.
pub fn venv_bin(release_dir: &Path) -> Option<PathBuf> {
    let bin = release_dir.join(super::VENV_DIR).join("bin");
    bin.join("python").exists().then_some(bin)
}

/// Whether the release asks for a venv: both `requirements.txt` and `wheels/` are there,
/// whatever they are (a symlink in their place is refused by `build`, not ignored).
pub(super) fn wanted(release: &Path) -> bool {
    fs::symlink_metadata(release.join(REQUIREMENTS)).is_ok()
        && fs::symlink_metadata(release.join(WHEELS)).is_ok()
}

#[derive(Debug)]
pub(super) enum VenvError {
    /// The release itself is refused (its requirements or wheels); nothing ran.
    Refused(String),
    /// A build step failed.
    Step {
        /// The command that failed, as an operator would type it.
        step: String,
        /// "failed (exit status: 1)", "timed out after 10m", "could not start: ...".
        outcome: String,
        /// The end of its output.
        tail: String,
    },
}

impl VenvError {
    fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> VenvError {
        VenvError::Step {
            step: format!("{what} {}", path.display()),
            outcome: format!("failed: {e}"),
            tail: String::new(),
        }
    }
}

/// The wheel files to install, in pin order: everything about the release that can be
/// refused is refused here, before anything runs.
pub(super) fn plan(release: &Path) -> Result<Vec<PathBuf>, VenvError> {
    let refused = |m: String| VenvError::Refused(m);
    let text = read_requirements(&release.join(REQUIREMENTS)).map_err(refused)?;
    let pins = requirements::parse(&text).map_err(|e| refused(e.to_string()))?;
    let wheels = release.join(WHEELS);
    let files = wheel_files(&wheels).map_err(refused)?;
    let chosen = requirements::match_wheels(&pins, &files, std::env::consts::ARCH)
        .map_err(|e| refused(e.to_string()))?;
    Ok(chosen.into_iter().map(|f| wheels.join(f)).collect())
}

/// The file's bytes, if it is a regular file of bounded size (a symlink could lead to any
/// file root can read, so it is refused, not followed).
fn read_requirements(path: &Path) -> Result<Vec<u8>, String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ELOOP as i32 => {
                format!("{REQUIREMENTS} is a symlink; it must be a regular file")
            }
            _ => format!("cannot open {REQUIREMENTS}: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot inspect {REQUIREMENTS}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{REQUIREMENTS} must be a regular file"));
    }
    let mut text = Vec::new();
    file.take(requirements::MAX_BYTES as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read {REQUIREMENTS}: {e}"))?;
    Ok(text)
}

/// Names of the regular files directly in `wheels/` (which must be a real directory).
fn wheel_files(dir: &Path) -> Result<Vec<String>, String> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "{WHEELS}/ must be a directory (not a symlink or file)"
            ))
        }
        Err(e) => return Err(format!("cannot inspect {WHEELS}/: {e}")),
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("cannot list {WHEELS}/: {e}"))? {
        let entry = entry.map_err(|e| format!("cannot list {WHEELS}/: {e}"))?;
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if let (true, Some(name)) = (is_file, entry.file_name().to_str()) {
            out.push(name.to_owned());
            if out.len() > MAX_WHEEL_FILES {
                return Err(format!("{WHEELS}/ has more than {MAX_WHEEL_FILES} files"));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub(super) async fn build(
    python: &Path,
    release: &Path,
    limit: Duration,
    run_as: Option<RunAs>,
) -> Result<(), VenvError> {
    let wheels = plan(release)?;
    let run_as = match run_as {
        Some(r) if r.uid != 0 => r,
        Some(_) => {
            return Err(VenvError::Refused(
                "refusing to build a venv as root: the app needs an unprivileged user".into(),
            ))
        }
        None => {
            return Err(VenvError::Refused(
                "this release has a venv to build but the controller did not say which user \
                 the app runs as (an older controller?); deploy it with `fleetctl deploy`"
                    .into(),
            ))
        }
    };
    let venv = release.join(super::VENV_DIR);
    let io = |what, e| VenvError::io(what, &venv, e);
    fs::create_dir(&venv).map_err(|e| io("create", e))?;
    fs::set_permissions(&venv, fs::Permissions::from_mode(0o755)).map_err(|e| io("chmod", e))?;
    std::os::unix::fs::chown(&venv, Some(run_as.uid), Some(run_as.gid))
        .map_err(|e| io("chown", e))?;
    let mut venv_cmd = as_user(run_as, python);
    venv_cmd.args(["-I", "-m", "venv"]).arg(&venv);
    run(&mut venv_cmd, &venv, limit).await?;
    let py = venv.join("bin").join("python");
    // No pins (only comments): an empty venv, as the file asks; pip refuses no arguments.
    if !wheels.is_empty() {
        let mut pip = as_user(run_as, &py);
        pip.args(["-I", "-m", "pip", "install"])
            .args(PIP_FLAGS)
            .arg("--")
            .args(&wheels);
        run(&mut pip, &venv, limit).await?;
    }
    let mut check = as_user(run_as, &py);
    check.args([
        "-I",
        "-m",
        "pip",
        "check",
        "--disable-pip-version-check",
        "--no-input",
    ]);
    run(&mut check, &venv, limit).await?;
    let sealed = tokio::task::spawn_blocking({
        let venv = venv.clone();
        move || seal(&venv)
    })
    .await
    .map_err(|e| io("hand to root", io::Error::other(e)))?;
    sealed.map_err(|e| io("hand to root", e))
}

/// Every flag pip gets: nothing from a file, the environment or a config decides what
/// it installs or where it looks.
const PIP_FLAGS: &[&str] = &[
    "--isolated",
    "--no-index",
    "--no-deps",
    "--only-binary",
    ":all:",
    "--no-cache-dir",
    "--disable-pip-version-check",
    "--no-input",
];

/// `program` run by setpriv as `run_as`: no supplementary groups, no capabilities, no way
/// back up (`--no-new-privs` also disarms setuid binaries).
fn as_user(run_as: RunAs, program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", run_as.uid))
        .arg(format!("--regid={}", run_as.gid))
        .args([
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(program);
    cmd
}

/// Hands the tree pip built to root: each directory is taken first (so its owner can no
/// longer add, rename or swap entries), then its entries, all through file descriptors
/// opened without following symlinks. Modes become 0755 for directories and 0644/0755 for
/// files; a hard link, fifo, socket or device in the tree fails the build.
fn seal(venv: &Path) -> io::Result<()> {
    let top = openat(
        nix::fcntl::AT_FDCWD,
        venv,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut count = 0;
    seal_dir(top, 0, &mut count)
}

fn seal_dir(dir: OwnedFd, depth: usize, count: &mut usize) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!("deeper than {MAX_DEPTH} levels")));
    }
    let file = File::from(dir);
    std::os::unix::fs::fchown(&file, Some(0), Some(0))?;
    file.set_permissions(fs::Permissions::from_mode(0o755))?;
    let dir = OwnedFd::from(file);
    let names: Vec<std::ffi::OsString> = {
        let listing = nix::dir::Dir::from_fd(dir.try_clone()?)?;
        let mut names = Vec::new();
        for entry in listing.into_iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            names.push(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name).to_owned(),
            );
        }
        names
    };
    for name in names {
        *count += 1;
        if *count > MAX_ENTRIES {
            return Err(io::Error::other(format!("more than {MAX_ENTRIES} entries")));
        }
        let shown = || Path::new(&name).display().to_string();
        let st = fstatat(
            dir.as_fd(),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            fchownat(
                dir.as_fd(),
                name.as_os_str(),
                Some(Uid::from_raw(0)),
                Some(Gid::from_raw(0)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        } else if kind == SFlag::S_IFDIR {
            let sub = openat(
                dir.as_fd(),
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            seal_dir(sub, depth + 1, count)?;
        } else if kind == SFlag::S_IFREG {
            let fd = openat(
                dir.as_fd(),
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            let file = File::from(fd);
            let meta = file.metadata()?;
            if !meta.is_file() || meta.ino() != st.st_ino as u64 {
                return Err(io::Error::other(format!(
                    "{} changed while sealing",
                    shown()
                )));
            }
            if meta.nlink() != 1 {
                return Err(io::Error::other(format!("{} is a hard link", shown())));
            }
            std::os::unix::fs::fchown(&file, Some(0), Some(0))?;
            let mode = if meta.mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        } else {
            return Err(io::Error::other(format!(
                "{} is not a file, directory or symlink",
                shown()
            )));
        }
    }
    Ok(())
}

async fn run(cmd: &mut Command, cwd: &Path, limit: Duration) -> Result<(), VenvError> {
    let step = describe(cmd);
    // A clean environment: the agent's own (or a stray PIP_INDEX_URL, PIP_USER...) must
    // not change what gets installed. PIP_CONFIG_FILE=/dev/null skips pip.conf files.
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C.UTF-8")
        .env("HOME", "/nonexistent")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let fail = |outcome: String, tail: String| VenvError::Step {
        step: step.clone(),
        outcome,
        tail,
    };
    let child = cmd
        .spawn()
        .map_err(|e| fail(format!("could not start: {e}"), String::new()))?;
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(fail(format!("failed: {e}"), String::new())),
        Err(_) => {
            return Err(fail(
                format!("timed out after {}", humantime::format_duration(limit)),
                String::new(),
            ))
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(fail(format!("failed ({})", out.status), tail(&text)))
}

fn describe(cmd: &Command) -> String {
    let std = cmd.as_std();
    let mut s = std.get_program().to_string_lossy().into_owned();
    for a in std.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last lines of `text`, at most `TAIL_BYTES` of them.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if out.len() > TAIL_BYTES {
        let mut cut = out.len() - TAIL_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = out[cut..].to_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (0..50).map(|i| format!("line {i}\n\n")).collect();
        let t = tail(&text);
        assert!(t.starts_with("line 30\n"), "{t}");
        assert!(t.ends_with("line 49"));
        assert!(tail(&"é".repeat(5000)).len() <= TAIL_BYTES);
    }
}
