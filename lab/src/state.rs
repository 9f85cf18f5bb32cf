//! lab.json (what the running lab consists of) and the lab lock.

use crate::config::Paths;
use crate::proc::ProcRec;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct LabState {
    /// The process that created the lab (CLI `up` or a test).
    pub owner: Option<ProcRec>,
    /// True once a CLI `up` returned and left the lab running.
    pub detached: bool,
    /// Restart loop of each host, by host number.
    pub loops: BTreeMap<u32, ProcRec>,
    pub controller: Option<ProcRec>,
    /// The static HTTP server of the apt repository (packages.rs), when served.
    #[serde(default)]
    pub repo_server: Option<ProcRec>,
    /// The packaging/deb/build.sh OUT_DIR the repository is served from.
    #[serde(default)]
    pub packages_dir: Option<std::path::PathBuf>,
    pub ca_pin: Option<String>,
    /// fs.inotify.max_user_instances before the lab raised it (restored at
    /// teardown). Each host uses about 8; the default 128 broke 20 hosts.
    #[serde(default)]
    pub inotify_instances_was: Option<u64>,
}

pub fn load(paths: &Paths) -> Option<LabState> {
    let s = std::fs::read_to_string(paths.lab_json()).ok()?;
    serde_json::from_str(&s).ok()
}

pub fn save(paths: &Paths, st: &LabState) -> Result<()> {
    let tmp = paths.state.join(".lab.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(st)?)?;
    std::fs::rename(&tmp, paths.lab_json())?;
    Ok(())
}

/// Takes the exclusive lab lock, waiting up to `wait` for another lab (e.g. a
/// test running in parallel) to finish. A lab left up by the CLI is not
/// waited for: that is an error telling the user to run `fleet-lab down`.
pub fn lock(paths: &Paths, wait: Duration) -> Result<File> {
    lock_with(paths, wait, || Ok(()))
}

/// Whether `st` is a lab whose creator died without detaching it or tearing it down (a
/// test killed with SIGKILL): its hosts still hold the lock they inherited, and nobody
/// will ever release it.
pub fn orphaned(st: &LabState) -> bool {
    !st.detached && st.owner.as_ref().is_some_and(|o| !o.alive())
}

/// Serialises the cleaning of an orphaned lab against a new lab's start: `Lab::up` holds
/// it from taking the lab lock until its own owner record is saved, and whoever tears an
/// orphan down holds it and checks again first, so an orphan's stale lab.json can never
/// make a waiter tear down the lab that just replaced it.
pub fn janitor(paths: &Paths) -> Result<File> {
    std::fs::create_dir_all(&paths.state)?;
    let path = paths.state.join("janitor.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "flock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(f)
}

/// `lock`, calling `on_orphan` whenever the lock is held by an orphaned lab.
pub fn lock_with(
    paths: &Paths,
    wait: Duration,
    mut on_orphan: impl FnMut() -> Result<()>,
) -> Result<File> {
    std::fs::create_dir_all(&paths.state)?;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.lock_file())
        .with_context(|| format!("open {}", paths.lock_file().display()))?;
    let end = Instant::now() + wait;
    let mut said = false;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(f);
        }
        if let Some(st) = load(paths) {
            if st.detached
                && st
                    .loops
                    .values()
                    .chain(st.controller.iter())
                    .any(|r| r.alive())
            {
                bail!(
                    "a lab is already up (started with `fleet-lab up`); run `fleet-lab down` first"
                );
            }
            if orphaned(&st) {
                on_orphan()?;
            }
        }
        if Instant::now() > end {
            bail!(
                "timed out after {wait:?} waiting for the lab lock {}",
                paths.lock_file().display()
            );
        }
        if !said {
            tracing::info!("another lab is running; waiting for the lab lock");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Non-blocking attempt: `None` while some lab process holds the lock.
pub fn try_lock(paths: &Paths) -> Result<Option<File>> {
    std::fs::create_dir_all(&paths.state)?;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.lock_file())?;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((r == 0).then_some(f))
}
