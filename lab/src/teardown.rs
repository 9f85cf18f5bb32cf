//! Tearing the lab down so that nothing is left, on every exit path: `down`,
//! Drop of a `Lab`, Ctrl-C/SIGTERM in the CLI, and after a crashed `up`.
//!
//! Works from what is on the machine (the lab's cgroup subtree, mounts under
//! the state dir, the bridge) plus the PIDs recorded in lab.json, so it needs
//! no in-memory state and is idempotent.

use crate::config::{Paths, BRIDGE};
use crate::proc::{self, ProcRec};
use crate::{cgroup, host, net, state};
use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn pid_signal(pid: i32, sig: Signal) {
    if let Some(r) = ProcRec::of(pid) {
        r.signal(sig);
    }
}

fn host_members() -> Vec<String> {
    cgroup::members()
        .into_iter()
        .filter(|m| m.starts_with("host"))
        .collect()
}

/// While `up` works, Ctrl-C/SIGTERM/SIGHUP must not leave half a lab behind.
pub fn on_signal(paths: &Paths) -> Result<()> {
    let p = paths.clone();
    ctrlc::set_handler(move || {
        eprintln!("fleet-lab: interrupted, tearing the lab down");
        // Reap our children (restart loops, controller) as they exit: an
        // unreaped zombie keeps its cgroup from being removed. We exit right
        // after, so reaping any child is fine here.
        std::thread::spawn(|| loop {
            if nix::sys::wait::waitpid(None, None).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        crate::lab::ABORTING.store(true, std::sync::atomic::Ordering::SeqCst);
        let _g = crate::lab::STEP.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = teardown_all(&p) {
            eprintln!("fleet-lab: teardown: {e:#}");
        }
        std::process::exit(130);
    })
    .context("install signal handler")
}

/// Stops every lab process and removes every lab resource. Never takes the
/// lock (the caller either holds it or is the signal handler of the holder).
pub fn teardown_all(paths: &Paths) -> Result<()> {
    let st = state::load(paths);
    // Namespaces of the running hosts, taken before the containers go: a
    // process that entered a host (`nsenter`, i.e. `fleet-lab exec`) is not
    // in the lab cgroup, yet it pins the host's network namespace (so its
    // vb-host* link) and mount namespace (so its overlay) after the host died.
    let host_ns: HashSet<String> = host_members()
        .iter()
        .filter_map(|h| cgroup::leader(h))
        .flat_map(|l| ["net", "mnt"].map(|k| ns_id(l, k)))
        .flatten()
        .collect();
    // 1. No more reboots: stop files for every host we know of.
    if let Ok(rd) = std::fs::read_dir(paths.hosts_dir()) {
        for e in rd.flatten() {
            let _ = std::fs::write(e.path().join("stop"), "down\n");
        }
    }
    // 2. A frozen container cannot shut down: thaw first.
    for h in host_members() {
        if cgroup::is_frozen(&h) {
            let _ = cgroup::set_frozen(&h, false);
        }
    }
    // 3. nspawn first: SIGTERM makes it power the container off cleanly, and
    //    its restart loop then sees the stop file and exits by itself (so the
    //    loop, not PID 1, reaps nspawn). Repeated each second in case a loop
    //    was between two boots when the stop file appeared.
    let end = Instant::now() + Duration::from_secs(10);
    let mut clean = false;
    while Instant::now() < end {
        for h in host_members() {
            for p in nspawns(&h) {
                pid_signal(p, Signal::SIGTERM);
            }
        }
        for pid in cgroup::procs_below("controller")
            .into_iter()
            .chain(cgroup::procs_below("repo"))
        {
            pid_signal(pid, Signal::SIGTERM);
        }
        for c in st
            .iter()
            .flat_map(|s| [s.controller, s.repo_server])
            .flatten()
        {
            c.signal(Signal::SIGTERM);
        }
        if wait_no_procs(Duration::from_secs(1)) {
            clean = true;
            break;
        }
    }
    // 4. Whatever is left (a container that ignored the poweroff request,
    //    e.g. early in boot) is ours by cgroup membership or recorded PID.
    if !clean {
        tracing::warn!(left = ?cgroup::procs_below(""), "lab processes ignored SIGTERM; killing");
        // Containers first, by their PID 1 (a power cut): killing nspawn
        // first would leave the container running as an orphan.
        for h in host_members() {
            if let Some(l) = cgroup::leader(&h) {
                pid_signal(l, Signal::SIGKILL);
            }
        }
        wait_no_procs(Duration::from_secs(3));
        for pid in cgroup::procs_below("") {
            pid_signal(pid, Signal::SIGKILL);
        }
    }
    if let Some(st) = &st {
        for r in st.loops.values() {
            r.signal(Signal::SIGKILL);
        }
    }
    wait_no_procs(Duration::from_secs(15));
    kill_entered(&host_ns);
    // 5. Unmount everything under the state dir, deepest first.
    for m in host::mounts_below(&paths.state) {
        if !host::is_mountpoint(Path::new(&m)) {
            continue; // went with its parent
        }
        if !Command::new("umount")
            .arg(&m)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            tracing::warn!(mount = %m, "umount failed; detaching lazily");
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
    // 6. nspawn's on-disk /run leftovers for our machine names only.
    for h in known_hosts(paths) {
        for sub in ["propagate", "unix-export"] {
            let p = Path::new("/run/systemd/nspawn").join(sub).join(&h);
            if p.exists() {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
    // 7. cgroups depth-first, 8. the bridge (its vb-host* ports went with nspawn).
    let cg = cgroup::remove("", Duration::from_secs(20));
    if let Err(e) = net::delete_bridge() {
        // A concurrent teardown (signal handler) may have deleted it first.
        anyhow::ensure!(!net::link_exists(BRIDGE), e);
    }
    // The kernel destroys a dead container's network namespace (and with it
    // the vb-host* end) asynchronously, up to a few seconds later.
    let end = Instant::now() + Duration::from_secs(60);
    while !net::lab_veths().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(was) = st.as_ref().and_then(|s| s.inotify_instances_was) {
        std::fs::write(crate::lab::INOTIFY_INSTANCES, was.to_string())?;
    }
    // 9. Per-lab state; the lock file and the SSH key pair stay.
    for p in [paths.lab_json(), paths.controller_log(), paths.repo_log()] {
        let _ = std::fs::remove_file(p);
    }
    for d in [paths.hosts_dir(), paths.share(), paths.controller_data()] {
        if d.exists() && host::mounts_below(&d).is_empty() {
            std::fs::remove_dir_all(&d)?;
        }
    }
    cg?;
    let left = leftovers(paths);
    anyhow::ensure!(left.is_empty(), "teardown left: {}", left.join("; "));
    Ok(())
}

fn ns_id(pid: i32, kind: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// SIGKILLs processes still inside a (dead) host's namespaces and waits for
/// them: they were started inside the lab by the lab (exec), by PID.
fn kill_entered(host_ns: &HashSet<String>) {
    if host_ns.is_empty() {
        return;
    }
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let mut found = false;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let inside = ["net", "mnt"]
                .iter()
                .any(|k| ns_id(pid, k).is_some_and(|n| host_ns.contains(&n)));
            if inside && ProcRec::of(pid).is_some_and(|r| r.alive()) {
                found = true;
                pid_signal(pid, Signal::SIGKILL);
            }
        }
        if !found || Instant::now() > end {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// nspawn of a host, wherever it is in the host's cgroup (it moves itself to
/// `supervisor` only once it is running).
fn nspawns(host: &str) -> Vec<i32> {
    cgroup::procs_below(host)
        .into_iter()
        .filter(|p| proc::comm(*p).as_deref() == Some("systemd-nspawn"))
        .collect()
}

fn known_hosts(paths: &Paths) -> Vec<String> {
    let mut v = host_members();
    if let Ok(rd) = std::fs::read_dir(paths.hosts_dir()) {
        v.extend(
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from)),
        );
    }
    v.sort();
    v.dedup();
    v
}

fn wait_no_procs(timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        // Zombies still listed in cgroup.procs are on their way out.
        let live: Vec<i32> = cgroup::procs_below("")
            .into_iter()
            .filter(|p| ProcRec::of(*p).map(|r| r.alive()).unwrap_or(false))
            .collect();
        if live.is_empty() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything a lab could leave behind; empty means clean. Used by `down`
/// and by the teardown tests.
pub fn leftovers(paths: &Paths) -> Vec<String> {
    let mut left = Vec::new();
    for m in host::mounts_below(&paths.state) {
        left.push(format!("mount {m}"));
    }
    for v in net::lab_veths() {
        left.push(format!("link {v}"));
    }
    if net::link_exists(BRIDGE) {
        left.push(format!("bridge {BRIDGE}"));
    }
    for h in ["unified", "systemd"] {
        let d = cgroup::lab_root(h);
        if d.exists() {
            left.push(format!("cgroup {}", d.display()));
        }
    }
    let state_s = paths.state.to_string_lossy().into_owned();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if proc::comm(pid).as_deref() != Some("systemd-nspawn") {
                continue;
            }
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&state_s) {
                left.push(format!("nspawn process {pid}"));
            }
        }
    }
    left
}
