//! Wiring the fleet binaries into the lab: the controller on the outer
//! machine at 198.18.0.1, an enrolled agent on every host, installed from the
//! fleet-agent .deb (packages.rs).
//!
//! Binaries come from `FLEET_BIN_DIR` when set (used as is). Otherwise from
//! the workspace's target/release, rebuilt with
//! `cargo build --workspace --release --locked --bins` when missing or
//! older than their sources (set `FLEET_LAB_BUILD=0` to never run cargo).

use crate::config::{
    controller_endpoint, host_name, Paths, CONTROLLER_HTTP_PORT, CONTROLLER_PORT, OUTER_ADDR,
};
use crate::packages::{self, Packages};
use crate::proc::ProcRec;
use crate::{exec, launch, net};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

/// The agent unit of this checkout (the package installs it): the binary's path is
/// taken from its ExecStart, the one place that path is written down.
pub const AGENT_UNIT: &str = include_str!("../../systemd/fleet-agent.service");
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[derive(Clone, Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    pub controller: PathBuf,
    pub fleetctl: PathBuf,
}

/// Options for the agents a lab installs.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// e.g. "1s": drop-in `Environment=FLEET_AGENT_HEARTBEAT_INTERVAL=`.
    pub heartbeat: Option<String>,
    /// e.g. "3s": drop-in overriding the unit's WatchdogSec (watchdog tests).
    pub watchdog_sec: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct FleetHost {
    pub name: String,
    #[serde(default)]
    pub address: Option<String>,
    pub state: String,
    #[serde(default)]
    pub last_seen: Option<serde_json::Value>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub cert_expires: Option<serde_json::Value>,
}

pub fn agent_bin_path() -> &'static str {
    AGENT_UNIT
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))
        .and_then(|c| c.split_whitespace().next())
        .map(|c| c.trim_start_matches(['-', '@', '+', '!', ':']))
        .expect("systemd/fleet-agent.service has an ExecStart=")
}

fn newest_mtime(dir: &Path, newest: &mut SystemTime) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if p.is_dir() {
            newest_mtime(&p, newest);
        } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
            *newest = (*newest).max(m);
        }
    }
}

pub fn binaries() -> Result<Binaries> {
    if let Some(dir) = std::env::var_os("FLEET_BIN_DIR") {
        let dir = PathBuf::from(dir);
        let b = Binaries {
            agent: dir.join("fleet-agent"),
            controller: dir.join("fleet-controller"),
            fleetctl: dir.join("fleetctl"),
        };
        for p in [&b.agent, &b.controller, &b.fleetctl] {
            anyhow::ensure!(p.exists(), "FLEET_BIN_DIR: {} missing", p.display());
        }
        return Ok(b);
    }
    // Canonical, so the paths printed for operators are ones they can paste.
    let ws = PathBuf::from(WORKSPACE)
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(WORKSPACE));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    let rel = target.join("release");
    let b = Binaries {
        agent: rel.join("fleet-agent"),
        controller: rel.join("fleet-controller"),
        fleetctl: rel.join("fleetctl"),
    };
    let oldest_bin = [&b.agent, &b.controller, &b.fleetctl]
        .iter()
        .map(|p| p.metadata().and_then(|m| m.modified()).ok())
        .collect::<Option<Vec<_>>>()
        .and_then(|v| v.into_iter().min());
    let mut newest_src = SystemTime::UNIX_EPOCH;
    for d in ["proto", "agent", "controller"] {
        newest_mtime(&ws.join(d), &mut newest_src);
    }
    let stale = oldest_bin.is_none_or(|b| b < newest_src);
    if stale {
        if std::env::var("FLEET_LAB_BUILD").as_deref() == Ok("0") {
            bail!(
                "fleet binaries in {} are missing or stale and FLEET_LAB_BUILD=0",
                rel.display()
            );
        }
        tracing::info!("building the fleet binaries (release)");
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            // The same command as lab/test-all.sh and packaging/deb/build.sh: other
            // package sets resolve other features and would rebuild each other's output.
            .args(["build", "--workspace", "--release", "--locked", "--bins"])
            .current_dir(&ws)
            .status()
            .context("run cargo (or set FLEET_BIN_DIR)")?;
        anyhow::ensure!(
            st.success(),
            "cargo build --workspace --release --locked --bins failed"
        );
    }
    Ok(b)
}

fn check(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `fleet-controller init`; returns the CA pin ("sha256:<hex>").
pub fn controller_init(paths: &Paths, b: &Binaries) -> Result<String> {
    let out = check(
        Command::new(&b.controller)
            .args(["init", "--data-dir"])
            .arg(paths.controller_data())
            .args(["--san", OUTER_ADDR]),
    )?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("ca-pin:"))
        .map(|p| p.trim().to_string())
        .context("fleet-controller init printed no `ca-pin:` line")
}

/// The controller's optional `--config` file in the lab.
pub fn controller_config(paths: &Paths) -> std::path::PathBuf {
    paths.controller_data().join("controller.toml")
}

pub fn controller_start(paths: &Paths, b: &Binaries, lock: &File) -> Result<(Child, ProcRec)> {
    let args: Vec<String> = vec![
        b.controller.display().to_string(),
        "run".into(),
        "--data-dir".into(),
        paths.controller_data().display().to_string(),
        "--listen".into(),
        controller_endpoint(),
        "--http-listen".into(),
        format!("{OUTER_ADDR}:{CONTROLLER_HTTP_PORT}"),
    ];
    // Tests that need controller settings (e.g. webhooks) write this file and restart
    // the controller.
    let mut args = args;
    let config = controller_config(paths);
    if config.exists() {
        args.push("--config".into());
        args.push(config.display().to_string());
    }
    let (child, rec) = launch::spawn(
        "controller",
        r#"exec "$@""#,
        &args,
        &paths.controller_log(),
        lock,
    )?;
    let end = Instant::now() + Duration::from_secs(30);
    while !net::tcp_reachable(OUTER_ADDR, CONTROLLER_PORT, Duration::from_millis(300)) {
        if !rec.alive() || Instant::now() > end {
            bail!(
                "controller did not start listening on {} (log: {})",
                controller_endpoint(),
                paths.controller_log().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((child, rec))
}

pub fn fleetctl(paths: &Paths, b: &Binaries, args: &[&str]) -> Result<String> {
    check(
        Command::new(&b.fleetctl)
            .arg("--controller")
            .arg(controller_endpoint())
            .arg("--identity")
            .arg(paths.admin_identity())
            .args(args),
    )
}

/// Runs fleetctl with this process's stdout and stderr, so its live output reaches the
/// operator as it happens; fails on a non-zero exit.
pub fn fleetctl_live(paths: &Paths, b: &Binaries, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(&b.fleetctl);
    cmd.arg("--controller")
        .arg(controller_endpoint())
        .arg("--identity")
        .arg(paths.admin_identity())
        .args(args);
    // Our own buffered lines must come out before the child's.
    std::io::Write::flush(&mut std::io::stdout())?;
    let st = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !st.success() {
        bail!("fleetctl {} failed ({st})", args.join(" "));
    }
    Ok(())
}

pub fn hosts(paths: &Paths, b: &Binaries) -> Result<Vec<FleetHost>> {
    let out = fleetctl(paths, b, &["hosts", "--output", "json"])?;
    serde_json::from_str(&out)
        .with_context(|| format!("parse `fleetctl hosts --output json`: {out}"))
}

/// Waits until every named host shows `state` in `fleetctl hosts`.
pub fn wait_state(
    paths: &Paths,
    b: &Binaries,
    names: &[String],
    state: &str,
    timeout: Duration,
) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        let last = hosts(paths, b);
        if let Ok(hs) = &last {
            if names
                .iter()
                .all(|n| hs.iter().any(|h| &h.name == n && h.state == state))
            {
                return Ok(());
            }
        }
        if Instant::now() > end {
            bail!("hosts {names:?} not all {state:?} within {timeout:?}; last: {last:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Installs the fleet-agent package into host N the way an operator does (`dpkg -i`:
/// binary, unit, tmpfiles, conffile, maintainer scripts against the host's systemd), then
/// the lab's test settings as a drop-in on top of the packaged unit.
pub fn install_agent(paths: &Paths, pk: &Packages, n: u32, opts: &AgentOptions) -> Result<()> {
    packages::dpkg_install(paths, pk, n, "fleet-agent", packages::DEB_VERSION)?;
    let mut dropin = String::from("# fleet-lab test settings\n[Service]\n");
    if let Some(h) = &opts.heartbeat {
        dropin.push_str(&format!("Environment=FLEET_AGENT_HEARTBEAT_INTERVAL={h}\n"));
    }
    if let Some(w) = &opts.watchdog_sec {
        dropin.push_str(&format!("WatchdogSec={w}\n"));
    }
    exec::write_file(
        paths,
        n,
        "/etc/systemd/system/fleet-agent.service.d/lab.conf",
        dropin.as_bytes(),
        0o644,
    )?;
    exec::sh(n, "systemctl daemon-reload")?;
    Ok(())
}

pub fn enroll(n: u32, token: &str, ca_pin: &str) -> Result<()> {
    let name = host_name(n);
    let bin = agent_bin_path();
    let o = exec::output(
        n,
        &[
            bin,
            "join",
            "--controller",
            &controller_endpoint(),
            "--token",
            token,
            "--ca-pin",
            ca_pin,
            "--name",
            &name,
        ],
    )?;
    if !o.status.success() {
        bail!(
            "{name}: fleet-agent join failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    exec::sh(n, "systemctl enable --now fleet-agent.service")?;
    Ok(())
}
