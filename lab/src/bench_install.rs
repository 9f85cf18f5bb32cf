//! `fleet-lab bench-ansible` and `fleet-lab bench-agent-upgrade` (issue 12's benchmarks):
//! wall time of the fleet.fleet collection installing and enrolling N fresh hosts, and of
//! `fleetctl agent upgrade` rolling a newer fleet-agent package across N hosts. Each boots
//! its own lab (hosts plus controller, no agents), measures, checks the outcome, tears down.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::agentpkg::{self, NEXT_VERSION};
use crate::config::host_name;
use crate::{ansible, packages, Lab, LabOptions};

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Installs + enrolls `hosts` fresh hosts with `site.yml`; then times a no-op re-run.
pub fn ansible(hosts: u32) -> Result<()> {
    let lab = Lab::up(&LabOptions::no_agents(hosts))?;
    let r = (|| -> Result<()> {
        // In the lab's state dir: the token file goes away with the lab's files.
        let work = lab.paths.state.join("bench-ansible");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let w = work.as_path();
        let inv = ansible::lab_inventory(&lab, w)?;
        let groups = ansible::agents_group(w)?;
        let token = lab
            .fleetctl(&["token", "create", "--uses", &hosts.to_string()])?
            .trim()
            .to_owned();
        let vars = ansible::agent_vars(w, "vars.json", packages::DEB_VERSION, &token, None)?;
        let t0 = Instant::now();
        let first = ansible::site(w, &[&inv, &groups], &[&vars], &[])?;
        let install = t0.elapsed();
        if !first.status.success() {
            bail!(
                "site.yml failed:\n{}",
                String::from_utf8_lossy(&first.stdout)
            );
        }
        let names: Vec<String> = (1..=hosts).map(host_name).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let t1 = Instant::now();
        lab.wait_fleet_state(&names, "up", Duration::from_secs(60))?;
        let until_up = install + t1.elapsed();
        let t2 = Instant::now();
        let second = ansible::site(w, &[&inv, &groups], &[&vars], &[])?;
        let rerun = t2.elapsed();
        let recap = ansible::recap(&String::from_utf8_lossy(&second.stdout));
        let changed: u32 = recap.values().map(|r| r.changed + r.failed).sum();
        println!("hosts: {hosts}");
        println!(
            "site.yml, fresh hosts (install + enroll + start): {}",
            secs(install)
        );
        println!(
            "  until all {hosts} are up in fleetctl hosts:    {}",
            secs(until_up)
        );
        println!(
            "site.yml re-run (changed+failed = {changed}):          {}",
            secs(rerun)
        );
        let _ = std::fs::remove_dir_all(&work);
        if changed != 0 || recap.len() != hosts as usize {
            bail!("the re-run was not a no-op on every host: {recap:?}");
        }
        Ok(())
    })();
    lab.down()?;
    r
}

/// Installs fleet-agent at the lab's version on `hosts` hosts, then times
/// `fleetctl agent upgrade` to the newer package with `max_parallel`.
pub fn agent_upgrade(hosts: u32, max_parallel: u32) -> Result<()> {
    let b = crate::fleet::binaries()?;
    let next = agentpkg::next_package(&b)?;
    let lab = Lab::up(&LabOptions::no_agents(hosts))?;
    let r = (|| -> Result<()> {
        let all: Vec<u32> = (1..=hosts).collect();
        agentpkg::install_and_enroll(&lab, &all, packages::DEB_VERSION)?;
        lab.fleetctl(&["agent", "upload", next.to_str().context("path")?])?;
        let t0 = Instant::now();
        let out = lab.fleetctl(&[
            "agent",
            "upgrade",
            "--version",
            NEXT_VERSION,
            "--max-parallel",
            &max_parallel.to_string(),
        ])?;
        let wall = t0.elapsed();
        if !out.contains(&format!("on {hosts} host(s)")) {
            bail!("not every host was upgraded:\n{out}");
        }
        let size = next.metadata()?.len();
        println!("hosts: {hosts}, --max-parallel {max_parallel}, package {size} bytes");
        println!(
            "fleetctl agent upgrade (all back with {NEXT_VERSION}): {}",
            secs(wall)
        );
        for line in out.lines().filter(|l| l.contains(" upgraded: ")) {
            println!("  {line}");
        }
        Ok(())
    })();
    lab.down()?;
    r
}
