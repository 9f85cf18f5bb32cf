//! One lab host: its overlay root, identity files, nspawn restart loop, and
//! the wait until its systemd is up.

use crate::config::{host_addr, host_name, Paths, BRIDGE, OUTER_ADDR, PREFIX_LEN};
use crate::proc::ProcRec;
use crate::{cgroup, launch};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub fn is_mountpoint(p: &Path) -> bool {
    let want = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| {
            s.lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

/// Mount points at or below `dir`, deepest first (for unmounting).
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    v.sort();
    v.dedup();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

fn random_machine_id() -> Result<String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

/// Mounts the host's overlay (lower = base, upper/work = host's own) and writes
/// its identity through the merged root (never into upper/ while mounted).
/// Idempotent: a host that already has a machine-id keeps it.
pub fn prepare(paths: &Paths, base: &Path, n: u32, ssh_pub: &str) -> Result<()> {
    let (upper, work, merged) = (paths.upper(n), paths.work(n), paths.merged(n));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d)?;
    }
    if !is_mountpoint(&merged) {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            base.display(),
            upper.display(),
            work.display()
        );
        crate::net::run(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(&merged),
        )
        .with_context(|| format!("mount overlay for {}", host_name(n)))?;
    }
    let name = host_name(n);
    std::fs::write(merged.join("etc/hostname"), format!("{name}\n"))?;
    let mid = merged.join("etc/machine-id");
    if std::fs::read_to_string(&mid)
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        std::fs::write(&mid, format!("{}\n", random_machine_id()?))?;
    }
    // 10- sorts before systemd's own 80-container-host0.network (DHCP), which
    // would otherwise win and leave host0 without our address.
    let netdir = merged.join("etc/systemd/network");
    std::fs::create_dir_all(&netdir)?;
    std::fs::write(
        netdir.join("10-fleet-lab.network"),
        format!(
            "# written by fleet-lab: static lab address, deliberately no gateway\n\
             [Match]\nName=host0\n\n[Network]\nAddress={}/{PREFIX_LEN}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
            host_addr(n)
        ),
    )?;
    // Hosts have no route out: the image's Debian mirror would only make `apt-get update`
    // fail. apt sees just the fleet repository the lab serves on the bridge (packages.rs).
    std::fs::write(
        merged.join("etc/apt/sources.list"),
        "# written by fleet-lab: no route out of the lab; see sources.list.d/fleet.list\n",
    )?;
    let mut hosts = format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n{OUTER_ADDR}\tcontroller fleet-controller\n"
    );
    for i in 1..=crate::config::MAX_HOSTS.min(64) {
        hosts.push_str(&format!("{}\t{}\n", host_addr(i), host_name(i)));
    }
    std::fs::write(merged.join("etc/hosts"), hosts)?;
    let ssh = merged.join("root/.ssh");
    std::fs::create_dir_all(&ssh)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))?;
    std::fs::write(ssh.join("authorized_keys"), ssh_pub)?;
    std::fs::set_permissions(
        ssh.join("authorized_keys"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    std::fs::create_dir_all(paths.share())?;
    Ok(())
}

/// The restart loop: nspawn exits 133 when the container reboots and does not
/// come back by itself. Any other exit (poweroff, power cut, SIGTERM) ends
/// the loop, as does the stop file.
const LOOP: &str = r#"stop="$1"; shift
while [ ! -e "$stop" ]; do
  "$@"
  rc=$?
  echo "fleet-lab: nspawn exited $rc" >&2
  [ "$rc" -eq 133 ] || exit "$rc"
done"#;

pub fn nspawn_args(paths: &Paths, n: u32) -> Vec<String> {
    vec![
        "systemd-nspawn".into(),
        // No machined on the outer machine: don't register, keep our cgroup.
        "--register=no".into(),
        "--keep-unit".into(),
        "-q".into(),
        "-D".into(),
        paths.merged(n).display().to_string(),
        "-M".into(),
        host_name(n),
        "-b".into(),
        format!("--network-bridge={BRIDGE}"),
        format!("--bind-ro={}:/opt/fleet", paths.share().display()),
        "--link-journal=no".into(),
        "--console=read-only".into(),
    ]
}

/// Starts the host's restart loop (host must be prepared).
pub fn launch(paths: &Paths, n: u32, lock: &File) -> Result<(Child, ProcRec)> {
    let _ = std::fs::remove_file(paths.stop_file(n));
    let mut args = vec![paths.stop_file(n).display().to_string()];
    args.extend(nspawn_args(paths, n));
    launch::spawn(&host_name(n), LOOP, &args, &paths.console_log(n), lock)
}

pub fn leader(n: u32) -> Option<i32> {
    cgroup::leader(&host_name(n))
}

/// Waits for the host's systemd to finish booting. Returns its state:
/// "running", or "degraded" (failed units are logged).
pub fn wait_booted(paths: &Paths, n: u32, timeout: Duration) -> Result<String> {
    let name = host_name(n);
    let end = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < end {
        if crate::lab::ABORTING.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("interrupted");
        }
        if let Some(l) = leader(n) {
            // Poll rather than `--wait`: a long-lived process inside the
            // host would outlive an interrupted `up` and pin the host's
            // namespaces. `timeout` bounds a call into a dying host.
            let out = Command::new("nsenter")
                .args(["-t", &l.to_string(), "-a", "timeout", "5"])
                .args(["systemctl", "is-system-running"])
                .env_clear()
                .env("PATH", crate::exec::PATH)
                .output()?;
            last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match last.as_str() {
                "running" => return Ok(last),
                "degraded" => {
                    let failed = crate::exec::output(
                        n,
                        &["systemctl", "--failed", "--plain", "--no-legend"],
                    )
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                    tracing::warn!(host = %name, failed = %failed.trim(), "host booted degraded");
                    return Ok(last);
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let console = std::fs::read_to_string(paths.console_log(n)).unwrap_or_default();
    let tail: Vec<&str> = console.lines().rev().take(15).collect();
    bail!(
        "{name} did not boot within {timeout:?} (last state {last:?}); console tail:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// True while the host's restart loop or nspawn is alive.
pub fn is_running(n: u32) -> bool {
    !cgroup::procs_below(&host_name(n)).is_empty()
}

/// Boots a powered-off host of a detached lab. The new restart loop carries
/// the lab lock like the others: taken here if no lab process holds it any
/// more (every host off, no controller), otherwise the other lab processes
/// already hold it and the loop gets a plain descriptor of the lock file.
pub fn start_powered_off(paths: &Paths, n: u32) -> Result<()> {
    if is_running(n) {
        eprintln!("{} is already running", host_name(n));
        return Ok(());
    }
    let mut st = crate::state::load(paths).context("no lab is up")?;
    let lockf = match crate::state::try_lock(paths)? {
        Some(locked) => locked,
        None => std::fs::File::open(paths.lock_file())?,
    };
    let (_child, rec) = launch(paths, n, &lockf)?;
    st.loops.insert(n, rec);
    crate::state::save(paths, &st)?;
    wait_booted(paths, n, std::time::Duration::from_secs(90))?;
    Ok(())
}
