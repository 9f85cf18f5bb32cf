//! The lab's cgroup subtree: `/sys/fs/cgroup/{unified,systemd}/fleetlab/<member>`.
//!
//! Every process the lab starts (host restart loops, nspawn, containers, the
//! controller) lives below it, so teardown finds exactly the lab's processes
//! and nothing else. nspawn needs its own cgroup per host: without one, all
//! containers share `<cgroup>/payload` and collide (docs/lab.md).

use crate::config::CGROUP_NAME;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// cgroup2 carries freeze/kill; the named v1 `systemd` hierarchy is what the
/// containers' systemd also uses on this hybrid machine.
const HIERARCHIES: [&str; 2] = ["unified", "systemd"];

pub fn lab_root(hier: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(hier).join(CGROUP_NAME)
}

pub fn member(hier: &str, name: &str) -> PathBuf {
    lab_root(hier).join(name)
}

pub fn create(name: &str) -> Result<()> {
    for h in HIERARCHIES {
        let d = member(h, name);
        std::fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
    }
    Ok(())
}

/// The `cgroup.procs` files a launcher shell writes `$$` into before exec.
pub fn procs_files(name: &str) -> Vec<PathBuf> {
    HIERARCHIES
        .iter()
        .map(|h| member(h, name).join("cgroup.procs"))
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect(&e.path(), out);
            }
        }
    }
}

/// All PIDs anywhere below `dir` (both hierarchies are consulted: a process
/// that moved itself into only one of them still counts).
pub fn procs_below(rel: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for h in HIERARCHIES {
        let d = if rel.is_empty() {
            lab_root(h)
        } else {
            member(h, rel)
        };
        collect(&d, &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Direct members of `rel` only (for a host: its restart-loop shell).
pub fn procs_direct(hier: &str, rel: &str) -> Vec<i32> {
    std::fs::read_to_string(member(hier, rel).join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Member names directly under the lab root (host1, controller, ...).
pub fn members() -> Vec<String> {
    let mut v: Vec<String> = HIERARCHIES
        .iter()
        .flat_map(|h| {
            std::fs::read_dir(lab_root(h))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Freezes or thaws the container payload (cgroup2 freezer) and waits until
/// the kernel reports the new state.
pub fn set_frozen(host: &str, frozen: bool) -> Result<()> {
    let payload = member("unified", host).join("payload");
    std::fs::write(
        payload.join("cgroup.freeze"),
        if frozen { "1" } else { "0" },
    )
    .with_context(|| format!("write {}/cgroup.freeze", payload.display()))?;
    let want = if frozen { "frozen 1" } else { "frozen 0" };
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = std::fs::read_to_string(payload.join("cgroup.events")).unwrap_or_default();
        if ev.lines().any(|l| l.trim() == want) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < end, "{host}: cgroup did not reach {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn is_frozen(host: &str) -> bool {
    std::fs::read_to_string(member("unified", host).join("payload/cgroup.freeze"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

/// PID 1 of the host's container, looked up afresh (it changes at every reboot).
pub fn leader(host: &str) -> Option<i32> {
    let procs = procs_direct("unified", &format!("{host}/payload/init.scope"));
    procs.into_iter().find(|p| crate::proc::is_ns_init(*p))
}

/// The nspawn process of a host: nspawn moves itself to `<host>/supervisor`.
pub fn nspawn_pid(host: &str) -> Option<i32> {
    procs_direct("unified", &format!("{host}/supervisor"))
        .into_iter()
        .find(|p| crate::proc::comm(*p).as_deref() == Some("systemd-nspawn"))
}

fn rmdir_depth_first(dir: &Path) -> bool {
    if !dir.exists() {
        return true;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_depth_first(&e.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok() || !dir.exists()
}

/// Removes `rel` (or the whole lab subtree when empty) in every hierarchy.
/// Retries because PID 1 here reaps orphans a second or two late, and a
/// cgroup with a zombie still in it cannot be removed.
pub fn remove(rel: &str, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        let mut ok = true;
        for h in HIERARCHIES {
            let d = if rel.is_empty() {
                lab_root(h)
            } else {
                member(h, rel)
            };
            ok &= rmdir_depth_first(&d);
        }
        if ok {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < end,
            "could not remove lab cgroup {rel:?}: still has processes {:?}",
            procs_below(rel)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
