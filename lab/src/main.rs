//! fleet-lab CLI: a thin layer over the `fleet_lab` library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fleet_lab::config::{controller_endpoint, parse_host, Paths};
use fleet_lab::{fleet, lab, teardown, Fault, Lab, LabOptions};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "fleet-lab",
    about = "Multi-host lab of real systemd hosts for fleet",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot N hosts (host1..hostN), start the controller and enroll agents; serve the
    /// apt repository of the fleet packages to the hosts.
    Up {
        n: u32,
        /// Hosts only: no controller, no agents.
        #[arg(long)]
        no_fleet: bool,
        /// Hosts and the controller, but no agent: install agents yourself (apt, Ansible).
        #[arg(long, conflicts_with = "no_fleet")]
        no_agents: bool,
        /// Agent heartbeat interval (lab drop-in), e.g. 1s.
        #[arg(long)]
        heartbeat: Option<String>,
    },
    /// Print shell exports for fleetctl: eval "$(fleet-lab env)".
    Env,
    /// Print an Ansible inventory (YAML) of the running lab: SSH as root with the lab key.
    Inventory,
    /// Run a command inside a host; its exit code is passed back.
    Exec {
        host: String,
        /// Run in a transient systemd unit (own cgroup) via systemd-run.
        #[arg(long)]
        unit: bool,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Inject a fault: cut|heal|freeze|thaw|power-cut|reboot.
    Fault { kind: String, host: String },
    /// Boot a host that is off (after power-cut).
    Start { host: String },
    /// Copy a file into a host: fleet-lab cp SRC hostN /abs/path
    Cp {
        src: std::path::PathBuf,
        host: String,
        dst: String,
    },
    /// Show the lab's hosts and their state.
    Status,
    /// Build (or rebuild with --force) the base image; prints its path.
    Image {
        #[arg(long)]
        force: bool,
    },
    /// Tear everything down (idempotent).
    Down,
    /// Up 3 hosts with fleet, deploy the sample app, roll a new release out live; the lab
    /// stays up.
    Demo,
    /// Time a rollout against its physical floor (issue 5): boots a lab of N hosts,
    /// deploys the sample app, rolls a new release out, prints the numbers, tears down.
    BenchRollout {
        #[arg(long, default_value_t = 5)]
        hosts: u32,
        #[arg(long, default_value_t = 1)]
        canary: u32,
        #[arg(long, default_value_t = 2)]
        max_parallel: u32,
        #[arg(long, default_value = "2s")]
        min_healthy: String,
    },
    /// Time canary analysis (issue 17): boots N hosts under load; each run rolls out a
    /// healthy release (must be promoted) and one answering 5 % with 500 (must be
    /// reverted), timing the first 500 to the revert decision; tears down.
    BenchCanary {
        #[arg(long, default_value_t = 3)]
        hosts: u32,
        #[arg(long, default_value_t = 5)]
        runs: u32,
        #[arg(long, default_value = "5s")]
        window: String,
        #[arg(long, default_value_t = 20)]
        min_requests: u64,
        #[arg(long, default_value = "3s")]
        min_healthy: String,
    },
    /// Time the fleet.fleet collection installing and enrolling N fresh hosts (and a
    /// no-op re-run); boots its own lab, tears it down.
    BenchAnsible {
        #[arg(long, default_value_t = 10)]
        hosts: u32,
    },
    /// Time `fleetctl agent upgrade` to a newer fleet-agent package across N hosts; boots
    /// its own lab, tears it down.
    BenchAgentUpgrade {
        #[arg(long, default_value_t = 10)]
        hosts: u32,
        #[arg(long, default_value_t = 10)]
        max_parallel: u32,
    },
    /// N simulated agents against a real controller on loopback (issue 16): runs the
    /// `fleet-swarm` binary next to this one with these arguments, e.g.
    /// `fleet-lab swarm run --agents 5000`. No lab hosts are involved.
    #[command(disable_help_flag = true)]
    Swarm {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    fleet_lab::init_logging();
    let cli = Cli::parse();
    let result = run(cli);
    // A signal handler is tearing the lab down (teardown::on_signal) and ends the process
    // with 130 when done. Whatever `run` returned meanwhile (most often "interrupted", from
    // a step that saw the flag) must not end the process first: that would cut the
    // teardown short and report the wrong status.
    if fleet_lab::lab::ABORTING.load(std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("fleet-lab: {e:#}");
            std::process::exit(1);
        }
    }
}

fn up_detached(opts: &LabOptions) -> Result<()> {
    let paths = Paths::from_env();
    teardown::on_signal(&paths)?;
    let t = Instant::now();
    let lab = Lab::up(opts)?;
    eprintln!(
        "fleet-lab: {} hosts up in {:.1}s",
        lab.hosts().len(),
        t.elapsed().as_secs_f64()
    );
    lab.detach()
}

fn env_line(paths: &Paths) -> Result<String> {
    let st = fleet_lab::state::load(paths).context("no lab is up (fleet-lab up N)")?;
    if st.controller.is_none() {
        bail!("the lab has no controller (started with --no-fleet?)");
    }
    let pin = st
        .ca_pin
        .as_deref()
        .context("the lab has a controller but no CA pin in lab.json")?;
    Ok(format!(
        "export FLEET_CONTROLLER={} FLEET_IDENTITY={} FLEET_CA_PIN={pin}",
        controller_endpoint(),
        paths.admin_identity().display()
    ))
}

fn run(cli: Cli) -> Result<i32> {
    let paths = Paths::from_env();
    match cli.cmd {
        Cmd::Swarm { args } => return swarm(&args),
        Cmd::Up {
            n,
            no_fleet,
            no_agents,
            heartbeat,
        } => {
            let mut o = if no_fleet {
                LabOptions::hosts(n)
            } else if no_agents {
                LabOptions::no_agents(n)
            } else {
                LabOptions::fleet(n)
            };
            // A lab by hand can always `apt-get install` the fleet packages.
            o.repo = true;
            o.agent.heartbeat = heartbeat;
            up_detached(&o)?;
        }
        Cmd::Env => println!("{}", env_line(&paths)?),
        Cmd::Inventory => {
            let st = fleet_lab::state::load(&paths).context("no lab is up (fleet-lab up N)")?;
            let facts = fleet_lab::inventory::LabFacts {
                ca_pin: st.ca_pin.clone(),
                keyring: st
                    .packages_dir
                    .as_ref()
                    .map(|d| fleet_lab::packages::Packages { dir: d.clone() }.keyring()),
            };
            let hosts: Vec<u32> = st.loops.keys().copied().collect();
            print!("{}", fleet_lab::inventory::render(&paths, &hosts, &facts));
        }
        Cmd::Exec { host, unit, cmd } => {
            let n = parse_host(&host)?;
            let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
            return fleet_lab::exec::run(n, &argv, unit);
        }
        Cmd::Fault { kind, host } => {
            let f: Fault = kind.parse()?;
            fleet_lab::fault::apply(&paths, parse_host(&host)?, f)?;
        }
        Cmd::Start { host } => {
            let n = parse_host(&host)?;
            fleet_lab::host::start_powered_off(&paths, n)?;
        }
        Cmd::Cp { src, host, dst } => {
            fleet_lab::exec::copy_into(&paths, parse_host(&host)?, &src, &dst)?
        }
        Cmd::Status => {
            for n in lab::running_hosts(&paths) {
                let state = match fleet_lab::host::leader(n) {
                    Some(l) => format!("running (leader pid {l})"),
                    None => "off".into(),
                };
                println!(
                    "{}\t{}\t{}",
                    fleet_lab::host_name(n),
                    fleet_lab::host_addr(n),
                    state
                );
            }
        }
        Cmd::Image { force } => {
            fleet_lab::preconditions()?;
            let _lock = fleet_lab::state::lock(&paths, std::time::Duration::from_secs(60))?;
            if force {
                let secs = fleet_lab::image::build(&paths)?;
                eprintln!("built in {secs:.1}s");
            }
            println!("{}", fleet_lab::image::ensure_base(&paths)?.display());
        }
        Cmd::Down => {
            lab::down(&paths)?;
            eprintln!("fleet-lab: lab is down");
        }
        Cmd::BenchRollout {
            hosts,
            canary,
            max_parallel,
            min_healthy,
        } => {
            teardown::on_signal(&paths)?;
            let lab = Lab::up(&LabOptions::fleet(hosts))?;
            let b = lab.binaries().context("lab has no fleet")?.clone();
            let plan = fleet_lab::bench::Plan {
                canary,
                max_parallel,
                min_healthy,
            };
            let r = fleet_lab::bench::rollout(&paths, &b, lab.hosts(), &plan);
            lab.down()?;
            r?;
        }
        Cmd::BenchCanary {
            hosts,
            runs,
            window,
            min_requests,
            min_healthy,
        } => {
            teardown::on_signal(&paths)?;
            let mut opts = LabOptions::fleet(hosts);
            opts.agent.heartbeat = Some("1s".into());
            let lab = Lab::up(&opts)?;
            let b = lab.binaries().context("lab has no fleet")?.clone();
            let plan = fleet_lab::bench_canary::Plan {
                runs,
                window,
                min_requests,
                min_healthy,
            };
            let r = fleet_lab::bench_canary::run(&paths, &b, lab.hosts(), &plan);
            lab.down()?;
            r?;
        }
        Cmd::BenchAnsible { hosts } => {
            teardown::on_signal(&paths)?;
            fleet_lab::bench_install::ansible(hosts)?;
        }
        Cmd::BenchAgentUpgrade {
            hosts,
            max_parallel,
        } => {
            teardown::on_signal(&paths)?;
            fleet_lab::bench_install::agent_upgrade(hosts, max_parallel)?;
        }
        Cmd::Demo => {
            up_detached(&LabOptions::fleet(3))?;
            let b = fleet::binaries()?;
            println!("$ fleetctl hosts");
            print!("{}", fleet::fleetctl(&paths, &b, &["hosts"])?);
            fleet_lab::demo::deploy_sample(&paths, &b, &[1, 2, 3])?;
            fleet_lab::demo::roll_out_next(&paths, &b, &[1, 2, 3])?;
            let lab_bin = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "fleet-lab".into());
            let ctl = b.fleetctl.display().to_string();
            println!(
                "\nThe lab is up: 3 real-systemd hosts, each running an enrolled fleet-agent and the \
                 sample app `shop` (Gunicorn, port 8000) at release 1.1 after a live rollout, and the \
                 controller on 198.18.0.1. Try:\n  \
                 eval \"$({lab_bin} env)\"\n  {ctl} hosts\n  {ctl} status shop\n  {ctl} logs shop -n 5\n  \
                 {ctl} rollback shop --min-healthy 2s\n  {ctl} rollout status shop\n  \
                 {ctl} restart shop\n  \
                 {lab_bin} exec host1 -- systemctl status fleet-agent\n  {lab_bin} fault cut host2; \
                 sleep 4; {ctl} hosts\nWhen done:\n  {lab_bin} down"
            );
        }
    }
    Ok(0)
}

/// Replaces this process with `fleet-swarm` from the same directory, so that fleet-lab
/// itself needs no gRPC stack.
fn swarm(args: &[String]) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().context("find the fleet-lab executable")?;
    let bin = me.with_file_name("fleet-swarm");
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --workspace --release --locked --bins`",
            bin.display()
        );
    }
    let err = std::process::Command::new(&bin).args(args).exec();
    Err(err).with_context(|| format!("exec {}", bin.display()))
}
