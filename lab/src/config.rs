//! Fixed lab constants and the on-disk layout of the lab state.
//!
//! Only one lab can exist per machine: it owns one /24, one bridge name and one
//! cgroup name, so everything here is a constant rather than an option.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// Bridge the lab creates and deletes; nothing else on the machine is touched.
pub const BRIDGE: &str = "fleetlab0";
/// The outer machine's address on the bridge (controller listens here).
pub const OUTER_ADDR: &str = "198.18.0.1";
pub const PREFIX_LEN: u8 = 24;
/// Name of the lab's cgroup directory in every hierarchy we use.
pub const CGROUP_NAME: &str = "fleetlab";
pub const CONTROLLER_PORT: u16 = 7443;
pub const CONTROLLER_HTTP_PORT: u16 = 7444;
/// Host N gets 198.18.0.(10+N), so N is at most 244.
pub const MAX_HOSTS: u32 = 244;

pub fn host_name(n: u32) -> String {
    format!("host{n}")
}

pub fn host_addr(n: u32) -> String {
    format!("198.18.0.{}", 10 + n)
}

pub fn controller_endpoint() -> String {
    format!("{OUTER_ADDR}:{CONTROLLER_PORT}")
}

/// Parses "hostN" (or a bare "N") into N.
pub fn parse_host(s: &str) -> Result<u32> {
    let digits = s.strip_prefix("host").unwrap_or(s);
    let n: u32 = digits
        .parse()
        .with_context(|| format!("host must look like hostN, got {s:?}"))?;
    if n == 0 || n > MAX_HOSTS {
        bail!("host number must be 1..={MAX_HOSTS}, got {n}");
    }
    Ok(n)
}

/// Where the lab keeps its state (per lab) and its cache (across labs).
#[derive(Clone, Debug)]
pub struct Paths {
    /// `FLEET_LAB_STATE_DIR`, default /var/lib/fleet-lab
    pub state: PathBuf,
    /// `FLEET_LAB_CACHE_DIR`, default /var/cache/fleet-lab (base images)
    pub cache: PathBuf,
}

impl Paths {
    pub fn from_env() -> Self {
        let state = std::env::var_os("FLEET_LAB_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/fleet-lab"));
        let cache = std::env::var_os("FLEET_LAB_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/fleet-lab"));
        Paths { state, cache }
    }
    pub fn lock_file(&self) -> PathBuf {
        self.state.join("lock")
    }
    pub fn lab_json(&self) -> PathBuf {
        self.state.join("lab.json")
    }
    pub fn hosts_dir(&self) -> PathBuf {
        self.state.join("hosts")
    }
    pub fn host_dir(&self, n: u32) -> PathBuf {
        self.hosts_dir().join(host_name(n))
    }
    pub fn merged(&self, n: u32) -> PathBuf {
        self.host_dir(n).join("merged")
    }
    pub fn upper(&self, n: u32) -> PathBuf {
        self.host_dir(n).join("upper")
    }
    pub fn work(&self, n: u32) -> PathBuf {
        self.host_dir(n).join("work")
    }
    /// Presence tells the host's restart loop not to boot it again.
    pub fn stop_file(&self, n: u32) -> PathBuf {
        self.host_dir(n).join("stop")
    }
    pub fn console_log(&self, n: u32) -> PathBuf {
        self.host_dir(n).join("console.log")
    }
    /// Outer directory bound read-only to /opt/fleet in every host.
    pub fn share(&self) -> PathBuf {
        self.state.join("share")
    }
    pub fn controller_data(&self) -> PathBuf {
        self.state.join("controller")
    }
    pub fn admin_identity(&self) -> PathBuf {
        self.controller_data().join("admin")
    }
    pub fn controller_log(&self) -> PathBuf {
        self.state.join("controller.log")
    }
    /// The apt repository server's request log (packages.rs).
    pub fn repo_log(&self) -> PathBuf {
        self.state.join("repo.log")
    }
    /// Lab SSH key pair, generated once and kept across labs.
    pub fn ssh_key(&self) -> PathBuf {
        self.state.join("lab_key")
    }
}
