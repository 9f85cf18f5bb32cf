//! The Debian 12 base image every host boots from (read-only overlay lower).
//!
//! Cached at `<cache>/base-<key>`, where the key hashes the package list, the
//! suite and the post-processing recipe, so changing any of them builds a new
//! image. Builds go into a temp dir that is renamed into place only when
//! complete: an interrupted build never leaves a half cache behind.

use crate::config::Paths;
use crate::net::run;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub const SUITE: &str = "bookworm";

/// `--include` list. python3/gunicorn/uvicorn are what apps run on; nftables,
/// logrotate, iproute2 are what the agent drives; openssh-server for Ansible;
/// ca-certificates + curl for HTTP probes from inside a host.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "gunicorn",
    "python3-uvicorn",
    "nftables",
    "logrotate",
    "iproute2",
    "procps",
    "openssh-server",
    // Ansible's apt module (the fleet.fleet collection) drives apt through it, as on a
    // standard Debian install.
    "python3-apt",
    "ca-certificates",
    "curl",
    "less",
    // Per-release virtualenvs (python3 -m venv needs ensurepip's wheels).
    "python3-venv",
    // The reference the agent's metrics are benchmarked against; disabled below and
    // started only by the benchmark.
    "prometheus-node-exporter",
];

/// Timers that would wake every host at random times and touch the disk or
/// the (unreachable) network: noise in measurements and tests.
const DISABLED_UNITS: &[&str] = &[
    "prometheus-node-exporter.service",
    "prometheus-node-exporter-apt.timer",
    "prometheus-node-exporter-ipmitool-sensor.timer",
    "prometheus-node-exporter-mellanox-hca-temp.timer",
    "prometheus-node-exporter-nvme.timer",
    "prometheus-node-exporter-smartmon.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "dpkg-db-backup.timer",
    // Hosts have no default route; nothing in the lab needs network-online,
    // and waiting for "routable" could only delay boot.
    "systemd-networkd-wait-online.service",
];

/// Bump when `post_process` changes, so caches built by older code are rebuilt.
const RECIPE: &str = "fleet-lab base recipe 2";

pub fn cache_key() -> String {
    let mut h = Sha256::new();
    h.update(RECIPE);
    h.update(SUITE);
    for p in PACKAGES {
        h.update(p);
        h.update("\n");
    }
    for u in DISABLED_UNITS {
        h.update(u);
        h.update("\n");
    }
    hex::encode(&h.finalize()[..8])
}

pub fn base_dir(paths: &Paths) -> PathBuf {
    paths.cache.join(format!("base-{}", cache_key()))
}

/// The Debian mirror from the machine's own apt sources (deb822 first, then
/// the one-line format); `FLEET_LAB_MIRROR` overrides.
pub fn mirror() -> String {
    if let Ok(m) = std::env::var("FLEET_LAB_MIRROR") {
        return m;
    }
    let mut candidates = Vec::new();
    if let Ok(s) = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources") {
        for l in s.lines() {
            if let Some(u) = l.strip_prefix("URIs:") {
                candidates.extend(u.split_whitespace().map(String::from));
            }
        }
    }
    if let Ok(s) = std::fs::read_to_string("/etc/apt/sources.list") {
        for l in s.lines().filter(|l| l.trim_start().starts_with("deb ")) {
            if let Some(u) = l.split_whitespace().find(|w| w.starts_with("http")) {
                candidates.push(u.to_string());
            }
        }
    }
    candidates
        .into_iter()
        .find(|u| !u.contains("security"))
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// Returns the cached base image, building it first if it is missing.
/// Caller holds the lab lock, so no two builds race.
pub fn ensure_base(paths: &Paths) -> Result<PathBuf> {
    let dir = base_dir(paths);
    if dir.join("etc/fleet-lab-base").exists() {
        return Ok(dir);
    }
    build(paths)?;
    Ok(dir)
}

/// Builds the image unconditionally (replacing a cached one); returns seconds taken.
pub fn build(paths: &Paths) -> Result<f64> {
    std::fs::create_dir_all(&paths.cache)?;
    // Left-overs of interrupted builds (we hold the lock: nobody else builds).
    for e in std::fs::read_dir(&paths.cache)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(".tmp-base-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let dir = base_dir(paths);
    let tmp = paths
        .cache
        .join(format!(".tmp-base-{}-{}", cache_key(), std::process::id()));
    let started = Instant::now();
    let m = mirror();
    tracing::info!(mirror = %m, target = %dir.display(), "building base image with debootstrap (about a minute)");
    let out = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&tmp)
        .arg(&m)
        .output()
        .context("run debootstrap (is it installed? see lab/setup.sh)")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!(
            "debootstrap failed ({}):\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 20)
        );
    }
    post_process(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir)?;
    // Older images (other keys) are unused once we hold the lock with no lab up.
    for e in std::fs::read_dir(&paths.cache)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("base-") && e.path() != dir {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(secs, "base image ready");
    Ok(secs)
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

fn post_process(root: &Path) -> Result<()> {
    // Each host writes its own hostname; a copied one would name every host
    // after the outer machine.
    let _ = std::fs::remove_file(root.join("etc/hostname"));
    // Empty machine-id: the lab writes a distinct one per host.
    std::fs::write(root.join("etc/machine-id"), "")?;
    let _ = std::fs::remove_file(root.join("var/lib/dbus/machine-id"));
    let rootarg = format!("--root={}", root.display());
    run(Command::new("systemctl").args([&rootarg, "enable", "systemd-networkd.service"]))?;
    for u in DISABLED_UNITS {
        // A unit missing from this package set is fine; anything else is not.
        let _ = run(Command::new("systemctl").args([&rootarg, "disable", u]));
        let _ = run(Command::new("systemctl").args([&rootarg, "mask", u]));
    }
    std::fs::write(
        root.join("etc/fleet-lab-base"),
        format!("{}\n", cache_key()),
    )?;
    Ok(())
}
