//! fleet-agent from its package on lab hosts, as operators install it: `apt-get install
//! fleet-agent=V` from the repository the lab serves, `fleet-agent join`, start. Also the
//! second, newer fleet-agent package that agent-upgrade tests and benchmarks roll out.

use crate::config::host_name;
use crate::fleet::Binaries;
use crate::lab::Lab;
use crate::packages::{self, Packages};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The version of the newer package: same source, a later Debian revision.
pub const NEXT_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-2");

/// The newer fleet-agent .deb for binaries `b`, built with build.sh when missing or older
/// than the agent binary. Into the lab's own package directory (build.sh's repository
/// keeps every version): cargo-deb stages every package in target/debian, so building
/// into another directory would take the lab's packages away. Call it while holding the
/// lab (it rewrites the repository index the lab serves) or before any lab is up.
pub fn next_package(b: &Binaries) -> Result<PathBuf> {
    let pk = Packages {
        dir: packages::default_dir(),
    };
    // The repository keeps a link to every version built; the top level only the last.
    let deb = pk
        .repo()
        .join(format!("fleet-agent_{NEXT_VERSION}_amd64.deb"));
    let mtime = |p: &std::path::Path| p.metadata().and_then(|m| m.modified()).ok();
    if matches!((mtime(&deb), mtime(&b.agent)), (Some(d), Some(a)) if d >= a) {
        return Ok(deb);
    }
    let ws = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    tracing::info!(version = NEXT_VERSION, dir = %pk.dir.display(), "building the newer fleet-agent package");
    let st = Command::new("bash")
        .arg("packaging/deb/build.sh")
        .arg(&pk.dir)
        .env("FLEET_DEB_VERSION", NEXT_VERSION)
        .current_dir(&ws)
        .status()
        .context("run packaging/deb/build.sh")?;
    if !st.success() || !deb.exists() {
        bail!(
            "FLEET_DEB_VERSION={NEXT_VERSION} bash packaging/deb/build.sh {} did not make {}",
            pk.dir.display(),
            deb.display()
        );
    }
    Ok(deb)
}

/// Installs fleet-agent `version` from the lab's repository on `hosts` and enrolls them
/// (one token for all), in parallel; returns when all are `up`.
pub fn install_and_enroll(lab: &Lab, hosts: &[u32], version: &str) -> Result<()> {
    let pin = lab
        .ca_pin()
        .context("the lab has no controller (LabOptions::no_agents)")?
        .to_owned();
    let token = lab
        .fleetctl(&["token", "create", "--uses", &hosts.len().to_string()])?
        .trim()
        .to_owned();
    let script = format!(
        "set -e; export DEBIAN_FRONTEND=noninteractive; \
         apt-get update -q >/dev/null; apt-get install -y -q fleet-agent={version} >/dev/null; \
         printf '%s\\n' \"$FLEET_TOKEN\" | fleet-agent join --controller {} --ca-pin {pin} --token-stdin; \
         systemctl start fleet-agent",
        crate::config::controller_endpoint()
    );
    std::thread::scope(|s| {
        let jobs: Vec<_> = hosts
            .iter()
            .map(|&n| {
                let script = format!("FLEET_TOKEN='{token}'; {script}");
                s.spawn(move || lab.sh(n, &script).map(|_| ()))
            })
            .collect();
        jobs.into_iter()
            .try_for_each(|j| j.join().expect("install thread panicked"))
    })?;
    let names: Vec<String> = hosts.iter().map(|&n| host_name(n)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    lab.wait_fleet_state(&names, "up", Duration::from_secs(60))
}
