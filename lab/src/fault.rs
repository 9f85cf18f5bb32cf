//! Faults a test (or an operator trying fleet) can inject into a host.
//!
//! - `cut`/`heal`: take the host's veth down/up (all its traffic is dropped;
//!   a reboot recreates the veth, so a reboot also heals).
//! - `freeze`/`thaw`: cgroup2 freezer on the container payload; TCP connects
//!   still succeed while frozen (the kernel answers), so probe at HTTP level.
//! - `power-cut`: SIGKILL the container's PID 1 — no shutdown, like pulling
//!   the plug. The host STAYS OFF (the restart loop only restarts on reboot)
//!   until `fleet-lab start hostN`; its disk (overlay upper) is kept.
//! - `reboot`: `systemctl reboot` inside; nspawn exits 133, the loop boots it
//!   again and this returns once it is booted with a new leader.

use crate::config::{host_name, Paths};
use crate::{cgroup, host, net};
use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Cut,
    Heal,
    Freeze,
    Thaw,
    PowerCut,
    Reboot,
}

impl std::str::FromStr for Fault {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "cut" => Fault::Cut,
            "heal" => Fault::Heal,
            "freeze" => Fault::Freeze,
            "thaw" => Fault::Thaw,
            "power-cut" => Fault::PowerCut,
            "reboot" => Fault::Reboot,
            _ => bail!("unknown fault {s:?} (cut|heal|freeze|thaw|power-cut|reboot)"),
        })
    }
}

pub fn apply(paths: &Paths, n: u32, fault: Fault) -> Result<()> {
    let name = host_name(n);
    match fault {
        Fault::Cut => net::set_link(n, false),
        Fault::Heal => net::set_link(n, true),
        Fault::Freeze => cgroup::set_frozen(&name, true),
        Fault::Thaw => cgroup::set_frozen(&name, false),
        Fault::PowerCut => power_cut(paths, n),
        Fault::Reboot => reboot(paths, n),
    }
}

pub fn power_cut(paths: &Paths, n: u32) -> Result<()> {
    let name = host_name(n);
    let leader = host::leader(n).with_context(|| format!("{name} is not running"))?;
    // Stop file first: whatever exit code nspawn reports, don't reboot it.
    std::fs::write(paths.stop_file(n), "power-cut\n")?;
    if cgroup::is_frozen(&name) {
        // SIGKILL is delivered to frozen tasks too, but nspawn's cleanup of
        // the payload is simpler when it is thawed.
        let _ = cgroup::set_frozen(&name, false);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader),
        nix::sys::signal::SIGKILL,
    )?;
    let end = Instant::now() + Duration::from_secs(20);
    while host::is_running(n) {
        if Instant::now() > end {
            bail!("{name}: still running 20 s after power cut");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn reboot(paths: &Paths, n: u32) -> Result<()> {
    let name = host_name(n);
    let old = host::leader(n).with_context(|| format!("{name} is not running"))?;
    // Exit status of `systemctl reboot` is irrelevant: the namespace is torn
    // down under it.
    let _ = crate::exec::output(n, &["systemctl", "reboot"]);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match host::leader(n) {
            Some(l) if l != old => break,
            _ => {}
        }
        if !host::is_running(n) {
            bail!(
                "{name}: restart loop ended during reboot (see {})",
                paths.console_log(n).display()
            );
        }
        if Instant::now() > end {
            bail!("{name}: no new leader 60 s after reboot");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    host::wait_booted(paths, n, Duration::from_secs(60))?;
    Ok(())
}
