//! `Lab`: a running lab, and the RAII guard that tears it down on Drop.

use crate::config::{host_name, Paths, MAX_HOSTS};
use crate::fault::Fault;
use crate::fleet::{self, AgentOptions, Binaries, FleetHost};
use crate::packages::{self, Packages};
use crate::proc::ProcRec;
use crate::state::{self, LabState};
use crate::{exec, fault, host, image, net, teardown};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::process::{Child, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const INOTIFY_INSTANCES: &str = "/proc/sys/fs/inotify/max_user_instances";

/// Set by a signal handler that is tearing the lab down: `up` must not
/// create anything more after that.
pub static ABORTING: AtomicBool = AtomicBool::new(false);
/// Held by `up` around each step that creates resources, and by the signal
/// handler for its whole teardown, so the two never interleave.
pub static STEP: Mutex<()> = Mutex::new(());

fn step() -> Result<std::sync::MutexGuard<'static, ()>> {
    let g = STEP.lock().unwrap_or_else(|e| e.into_inner());
    if ABORTING.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(g)
}

#[derive(Clone, Debug)]
pub struct LabOptions {
    pub hosts: u32,
    /// Start the controller and enroll an agent on every host.
    pub fleet: bool,
    /// With `fleet`: install and enroll an agent on every host (false: hosts plus the
    /// controller only, to install agents by apt or Ansible).
    pub agents: bool,
    /// Serve the apt repository of the fleet packages on the bridge and point every
    /// host's apt at it (packages.rs).
    pub repo: bool,
    pub agent: AgentOptions,
    /// How long to wait for another lab (a parallel test) to finish.
    pub lock_wait: Duration,
    pub boot_timeout: Duration,
}

impl LabOptions {
    /// Bare hosts (no controller/agents).
    pub fn hosts(n: u32) -> Self {
        LabOptions {
            hosts: n,
            fleet: false,
            agents: false,
            repo: false,
            agent: AgentOptions::default(),
            lock_wait: Duration::from_secs(30 * 60),
            boot_timeout: Duration::from_secs(90),
        }
    }
    /// Hosts plus controller and enrolled agents.
    pub fn fleet(n: u32) -> Self {
        LabOptions {
            fleet: true,
            agents: true,
            ..Self::hosts(n)
        }
    }
    /// Hosts plus the controller, no agent: the served apt repository is how agents get
    /// installed (by a test, an operator or Ansible).
    pub fn no_agents(n: u32) -> Self {
        LabOptions {
            agents: false,
            repo: true,
            ..Self::fleet(n)
        }
    }
}

/// Checks that a lab can run here: root and systemd-nspawn/debootstrap/ip.
pub fn preconditions() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab needs root (it mounts overlays, creates a bridge and cgroups)");
    }
    for tool in [
        "systemd-nspawn",
        "debootstrap",
        "ip",
        "nsenter",
        "ssh-keygen",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        if !found {
            bail!("{tool} not found; run lab/setup.sh (installs systemd-container debootstrap iproute2 ...)");
        }
    }
    Ok(())
}

/// A running lab. Dropping it tears everything down (unless `detach`ed).
pub struct Lab {
    pub paths: Paths,
    lock: Option<File>,
    state: LabState,
    hosts: Vec<u32>,
    children: Vec<Child>,
    bins: Option<Binaries>,
    packages: Option<Packages>,
    detached: bool,
}

impl Lab {
    /// Boots a lab. Teardown is armed before any work: if anything fails
    /// (or the caller panics later), Drop removes everything.
    pub fn up(opts: &LabOptions) -> Result<Lab> {
        preconditions()?;
        if opts.hosts == 0 || opts.hosts > MAX_HOSTS {
            bail!("number of hosts must be 1..={MAX_HOSTS}");
        }
        let paths = Paths::from_env();
        let lock = state::lock_with(&paths, opts.lock_wait, || reap_orphan(&paths))?;
        let janitor = state::janitor(&paths)?;
        // Left-overs of a crashed `up` (we hold the lock: nobody owns them).
        if !teardown::leftovers(&paths).is_empty() || paths.lab_json().exists() {
            tracing::warn!("cleaning up after a previous lab that was not torn down");
            teardown::teardown_all(&paths)?;
        }
        let mut lab = Lab {
            paths,
            lock: Some(lock),
            state: LabState {
                owner: ProcRec::of(std::process::id() as i32),
                ..Default::default()
            },
            hosts: (1..=opts.hosts).collect(),
            children: Vec::new(),
            bins: None,
            packages: None,
            detached: false,
        };
        state::save(&lab.paths, &lab.state)?;
        drop(janitor);
        lab.boot(opts)?;
        Ok(lab)
    }

    fn boot(&mut self, opts: &LabOptions) -> Result<()> {
        if opts.fleet || opts.repo {
            // Before booting anything: a cargo build can take minutes.
            self.bins = Some(fleet::binaries()?);
        }
        // Agents are installed from their package, so a lab with agents needs the
        // packages as much as one that serves the repository.
        if opts.repo || (opts.fleet && opts.agents) {
            let b = self.bins.as_ref().context("no binaries")?;
            self.packages = Some(packages::ensure(b)?);
        }
        let t0 = Instant::now();
        let base = image::ensure_base(&self.paths)?;
        let ssh_pub = ensure_ssh_key(&self.paths)?;
        {
            let _g = step()?;
            net::ensure_bridge()?;
        }
        self.raise_inotify_limit()?;
        let t_boot = Instant::now();
        for n in self.hosts.clone() {
            let _g = step()?;
            host::prepare(&self.paths, &base, n, &ssh_pub)?;
            self.start_loop(n)?;
        }
        for &n in &self.hosts {
            let st = host::wait_booted(&self.paths, n, opts.boot_timeout)?;
            tracing::info!(host = %host_name(n), state = %st, "booted");
        }
        tracing::info!(
            hosts = self.hosts.len(),
            boot_secs = t_boot.elapsed().as_secs_f64(),
            total_secs = t0.elapsed().as_secs_f64(),
            "lab hosts up"
        );
        if opts.repo {
            self.start_repo()?;
        }
        if opts.fleet {
            self.start_fleet(opts.agents, &opts.agent)?;
        }
        Ok(())
    }

    fn start_repo(&mut self) -> Result<()> {
        let pk = self.packages.clone().context("no packages")?;
        {
            let _g = step()?;
            let lock = self.lock.as_ref().context("lab lock released")?;
            let (child, rec) = packages::serve_repo(&self.paths, &pk, lock)?;
            self.children.push(child);
            self.state.repo_server = Some(rec);
            self.state.packages_dir = Some(pk.dir.clone());
            state::save(&self.paths, &self.state)?;
        }
        for &n in &self.hosts {
            packages::add_repo_source(&self.paths, &pk, n)?;
        }
        Ok(())
    }

    fn raise_inotify_limit(&mut self) -> Result<()> {
        let want = 128 + 10 * self.hosts.len() as u64;
        let cur: u64 = std::fs::read_to_string(INOTIFY_INSTANCES)?.trim().parse()?;
        if cur < want {
            self.state.inotify_instances_was = Some(cur);
            state::save(&self.paths, &self.state)?;
            std::fs::write(INOTIFY_INSTANCES, want.to_string())?;
            tracing::info!(
                from = cur,
                to = want,
                "raised fs.inotify.max_user_instances"
            );
        }
        Ok(())
    }

    fn start_loop(&mut self, n: u32) -> Result<()> {
        let lock = self.lock.as_ref().context("lab lock released")?;
        let (child, rec) = host::launch(&self.paths, n, lock)?;
        self.children.push(child);
        self.state.loops.insert(n, rec);
        state::save(&self.paths, &self.state)
    }

    fn start_fleet(&mut self, agents: bool, agent: &AgentOptions) -> Result<()> {
        let b = self.bins.clone().context("no binaries")?;
        let pin = fleet::controller_init(&self.paths, &b)?;
        self.state.ca_pin = Some(pin.clone());
        {
            let _g = step()?;
            self.start_controller()?;
        }
        state::save(&self.paths, &self.state)?;
        if !agents {
            return Ok(());
        }
        let pk = self.packages.clone().context("no packages")?;
        let token = fleet::fleetctl(
            &self.paths,
            &b,
            &[
                "token",
                "create",
                "--uses",
                &self.hosts.len().to_string(),
                "--ttl",
                "1h",
            ],
        )?;
        let token = token.trim().to_string();
        for &n in &self.hosts {
            fleet::install_agent(&self.paths, &pk, n, agent)?;
            fleet::enroll(n, &token, &pin)?;
        }
        let names: Vec<String> = self.hosts.iter().map(|&n| host_name(n)).collect();
        fleet::wait_state(&self.paths, &b, &names, "up", Duration::from_secs(60))?;
        Ok(())
    }

    fn start_controller(&mut self) -> Result<()> {
        let b = self.bins.clone().context("no binaries")?;
        let lock = self.lock.as_ref().context("lab lock released")?;
        let (child, rec) = fleet::controller_start(&self.paths, &b, lock)?;
        self.children.push(child);
        self.state.controller = Some(rec);
        state::save(&self.paths, &self.state)
    }

    /// Stops the controller (SIGTERM, by PID) and starts it again on the
    /// same data dir.
    pub fn restart_controller(&mut self) -> Result<()> {
        self.restart_controller_with(|| Ok(()))
    }

    /// Like `restart_controller`, running `between` while the controller is stopped
    /// (e.g. to move its data dir onto another filesystem).
    pub fn restart_controller_with(&mut self, between: impl FnOnce() -> Result<()>) -> Result<()> {
        if let Some(c) = self.state.controller.take() {
            c.signal(nix::sys::signal::SIGTERM);
            if !c.wait_gone(Duration::from_secs(15)) {
                c.signal(nix::sys::signal::SIGKILL);
                c.wait_gone(Duration::from_secs(5));
            }
        }
        self.reap();
        between()?;
        self.start_controller()
    }

    pub fn controller(&self) -> Option<ProcRec> {
        self.state.controller
    }

    pub fn hosts(&self) -> &[u32] {
        &self.hosts
    }

    pub fn binaries(&self) -> Option<&Binaries> {
        self.bins.as_ref()
    }

    /// The fleet packages (with `LabOptions::repo`).
    pub fn packages(&self) -> Option<&Packages> {
        self.packages.as_ref()
    }

    /// The CA pin printed by `fleet-controller init` (labs with a fleet).
    pub fn ca_pin(&self) -> Option<&str> {
        self.state.ca_pin.as_deref()
    }

    /// Runs argv inside host N (nsenter), stdio inherited; returns exit code.
    pub fn exec(&self, n: u32, argv: &[&str]) -> Result<i32> {
        exec::run(n, argv, false)
    }

    /// Runs argv inside host N and captures its output.
    pub fn exec_output(&self, n: u32, argv: &[&str]) -> Result<Output> {
        exec::output(n, argv)
    }

    /// Runs argv in a transient unit inside host N (`systemd-run --wait --pipe`).
    pub fn exec_unit(&self, n: u32, argv: &[&str]) -> Result<Output> {
        exec::output_unit(n, argv)
    }

    /// `sh -c` inside host N, must exit 0; returns stdout.
    pub fn sh(&self, n: u32, script: &str) -> Result<String> {
        exec::sh(n, script)
    }

    pub fn leader(&self, n: u32) -> Option<i32> {
        host::leader(n)
    }

    pub fn fault(&self, n: u32, f: Fault) -> Result<()> {
        fault::apply(&self.paths, n, f)
    }

    /// Boots a host that is off (after a power cut).
    pub fn start_host(&mut self, n: u32) -> Result<()> {
        if host::is_running(n) {
            return Ok(());
        }
        self.reap();
        self.start_loop(n)?;
        host::wait_booted(&self.paths, n, Duration::from_secs(90))?;
        Ok(())
    }

    pub fn fleet_hosts(&self) -> Result<Vec<FleetHost>> {
        fleet::hosts(&self.paths, self.bins.as_ref().context("lab has no fleet")?)
    }

    pub fn fleetctl(&self, args: &[&str]) -> Result<String> {
        fleet::fleetctl(
            &self.paths,
            self.bins.as_ref().context("lab has no fleet")?,
            args,
        )
    }

    pub fn wait_fleet_state(&self, names: &[&str], state: &str, timeout: Duration) -> Result<()> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        fleet::wait_state(
            &self.paths,
            self.bins.as_ref().context("lab has no fleet")?,
            &names,
            state,
            timeout,
        )
    }

    fn reap(&mut self) {
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }

    /// Leaves the lab running after this value is gone (CLI `up`). The lab
    /// processes keep the lock; `fleet-lab down` ends it.
    pub fn detach(mut self) -> Result<()> {
        self.state.detached = true;
        state::save(&self.paths, &self.state)?;
        self.detached = true;
        Ok(())
    }

    /// Tears the lab down now and reports errors (Drop can only log them).
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        self.detached = true; // never twice
                              // A CLI signal handler that is tearing down holds STEP until the
                              // process exits; never run a second teardown alongside it.
        let _g = STEP.lock().unwrap_or_else(|e| e.into_inner());
        if ABORTING.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Our own children (restart loops, controller) must be reaped while
        // teardown runs: an unreaped zombie keeps its cgroup from being removed.
        let mut children = std::mem::take(&mut self.children);
        let reaper = std::thread::spawn(move || {
            for c in &mut children {
                let _ = c.wait();
            }
        });
        let r = teardown::teardown_all(&self.paths);
        let _ = reaper.join();
        self.lock = None;
        r
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.detached {
            if let Err(e) = self.teardown() {
                eprintln!("fleet-lab: teardown failed: {e:#}");
            }
        }
    }
}

/// The lab's SSH key pair (for Ansible), generated once into the state dir.
pub fn ensure_ssh_key(paths: &Paths) -> Result<String> {
    let key = paths.ssh_key();
    let public = key.with_extension("pub");
    if !public.exists() {
        let _ = std::fs::remove_file(&key);
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "fleet-lab", "-f"])
            .arg(&key)
            .status()?;
        anyhow::ensure!(st.success(), "ssh-keygen failed");
    }
    Ok(std::fs::read_to_string(public)?)
}

/// Tears down a lab whose owner died (see `state::orphaned`) so that the lock it holds
/// is freed, after checking again under the janitor lock that it is still the orphan.
fn reap_orphan(paths: &Paths) -> Result<()> {
    let _janitor = state::janitor(paths)?;
    let Some(st) = state::load(paths) else {
        return Ok(());
    };
    if !state::orphaned(&st) || state::try_lock(paths)?.is_some() {
        return Ok(());
    }
    tracing::warn!(
        owner = st.owner.map(|o| o.pid),
        "the process that started the running lab is gone without tearing it down; tearing it down"
    );
    teardown::teardown_all(paths)
}

/// CLI `down`: ends the lab whoever started it; idempotent.
pub fn down(paths: &Paths) -> Result<()> {
    let _lock = match state::try_lock(paths)? {
        Some(l) => l,
        None => {
            // Lab processes hold the lock; stopping them releases it.
            teardown::teardown_all(paths)?;
            state::lock(paths, Duration::from_secs(60))?
        }
    };
    teardown::teardown_all(paths)
}

/// Hosts of the running lab (from lab.json).
pub fn running_hosts(paths: &Paths) -> Vec<u32> {
    state::load(paths)
        .map(|s| s.loops.keys().copied().collect())
        .unwrap_or_default()
}

/// For test files: `None` (and a message) when `FLEET_LAB=skip`; panics
/// with the reason when the lab cannot run here; otherwise boots the lab.
pub fn test_lab(opts: &LabOptions) -> Option<Lab> {
    if std::env::var("FLEET_LAB").as_deref() == Ok("skip") {
        eprintln!("lab test skipped on purpose (FLEET_LAB=skip)");
        return None;
    }
    if let Err(e) = preconditions() {
        panic!("lab test cannot run: {e:#}. Set FLEET_LAB=skip to skip lab tests on purpose.");
    }
    Some(Lab::up(opts).unwrap_or_else(|e| panic!("lab up failed: {e:#}")))
}
