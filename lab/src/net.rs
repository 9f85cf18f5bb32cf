//! The lab's bridge and the per-host veth links nspawn creates on it.
//! Only `fleetlab0` and `vb-host*` links are ever touched.

use crate::config::{host_name, BRIDGE, OUTER_ADDR, PREFIX_LEN};
use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Creates the bridge with 198.18.0.1/24. Refuses to start if that address
/// already sits on some other interface: we never touch foreign links.
pub fn ensure_bridge() -> Result<()> {
    let addrs = run(Command::new("ip").args(["-o", "-4", "addr", "show"]))?;
    for line in addrs.lines() {
        let mut f = line.split_whitespace();
        let dev = f.nth(1).unwrap_or("");
        if dev != BRIDGE && line.contains(&format!(" {OUTER_ADDR}/")) {
            bail!("{OUTER_ADDR} is already configured on {dev}; refusing to touch it");
        }
    }
    if !link_exists(BRIDGE) {
        run(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]))?;
    }
    let cidr = format!("{OUTER_ADDR}/{PREFIX_LEN}");
    let have = run(Command::new("ip").args(["-o", "-4", "addr", "show", "dev", BRIDGE]))?;
    if !have.contains(&cidr) {
        run(Command::new("ip").args(["addr", "add", &cidr, "dev", BRIDGE]))?;
    }
    run(Command::new("ip").args(["link", "set", BRIDGE, "up"]))?;
    Ok(())
}

pub fn delete_bridge() -> Result<()> {
    if link_exists(BRIDGE) {
        run(Command::new("ip").args(["link", "del", BRIDGE]))?;
    }
    Ok(())
}

/// nspawn names the outer end of a host's veth "vb-<machine>".
pub fn veth(n: u32) -> String {
    format!("vb-{}", host_name(n))
}

/// Cut (down) or heal (up) a host's only link. Taking the outer end down
/// drops all traffic of that host, to the outer machine and to other hosts.
pub fn set_link(n: u32, up: bool) -> Result<()> {
    let v = veth(n);
    if !link_exists(&v) {
        bail!("{v} does not exist: is {} running?", host_name(n));
    }
    run(Command::new("ip").args(["link", "set", &v, if up { "up" } else { "down" }]))?;
    Ok(())
}

/// All vb-host* links currently present (for teardown checks).
pub fn lab_veths() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| n.starts_with("vb-host"))
        .collect()
}

/// No ping on this machine: reachability means a TCP connect succeeds.
pub fn tcp_reachable(addr: &str, port: u16, timeout: Duration) -> bool {
    let sa: SocketAddr = match format!("{addr}:{port}").parse() {
        Ok(s) => s,
        Err(_) => return false,
    };
    TcpStream::connect_timeout(&sa, timeout).is_ok()
}
