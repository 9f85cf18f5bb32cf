//! `fleet-swarm run`: a controller, the workers, then each scenario in turn.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::controller::{bins, Controller};
use crate::limits;
use crate::measure;
use crate::reconnect::Reconnect;
use crate::report::{self, Report};
use crate::swarm::{Plan, Swarm};

/// Hosts one worker process simulates at most by default: two sockets each while joining,
/// far under the 20,000 open files a process may have here.
pub const PER_PROC: u64 = 9_000;
/// The most uses `fleetctl token create --uses` allows.
const MAX_TOKEN_USES: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Enroll,
    Steady,
    Firewall,
    Deploy,
    Rollout,
    Hosts,
    /// Admin RPC round trips one at a time: a read (`audit`) and a write (cordon).
    Admin,
    Reconnect,
    /// Rollouts judged by their (simulated) traffic: a healthy release is promoted and
    /// baked, a sick one reverted by the analysis.
    Analysis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long)]
    pub agents: u64,
    /// Worker processes [default: ceil(agents / 9000)].
    #[arg(long)]
    pub procs: Option<u64>,
    /// Apps deployed to every host (the deploy scenario).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=3))]
    pub apps: u32,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
    /// Also write the JSON document to this file (with the table on stdout).
    #[arg(long, value_name = "FILE")]
    pub json_file: Option<std::path::PathBuf>,
    /// Put the controller's data dir on a device whose flushes take ~2 ms (dm-delay).
    #[arg(long)]
    pub slow_disk: bool,
    /// Scenarios to run, comma-separated [default: all]; enroll always runs.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenarios: Vec<Scenario>,
    #[arg(long, value_enum, default_value = "agent")]
    pub reconnect: Reconnect,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub heartbeat: Duration,
    /// Steady-state measuring window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub window: Duration,
    /// Enroll every host from one source address (hosts behind one NAT); see --bulk-rate.
    #[arg(long)]
    pub one_source: bool,
    /// Enroll with bulk tokens (`fleetctl token create --bulk --bulk-rate R`): limited to R
    /// joins a minute instead of by the per-address and fleet-wide join limits.
    #[arg(long, value_name = "R")]
    pub bulk_rate: Option<u32>,
    /// The agents' `reconnect_spread`: window of the first retry after a lost session.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub spread: Duration,
    /// Rollout: how long each host must stay healthy (the simulated agent waits it out).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub min_healthy: Duration,
    #[arg(long, default_value_t = 0)]
    pub canary: usize,
    /// Bound on enrolling every host (the controller's join limits pace it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15m")]
    pub enroll_timeout: Duration,
    /// A `fleet-controller run --config` file, e.g. to lift the join limits so that the
    /// other scenarios can be measured at sizes the default limits take minutes to enroll.
    #[arg(long, value_name = "FILE")]
    pub controller_config: Option<std::path::PathBuf>,
    /// The data directory of the PostgreSQL server the controller's `[store] url` names
    /// (with --controller-config): steady also counts that server's CPU.
    #[arg(long, value_name = "DIR")]
    pub postgres_data: Option<std::path::PathBuf>,
    /// Agents connect to a second controller on the same store (`init --replica-of`),
    /// which relays every call to the leader (docs/ha.md); steady also counts its CPU and
    /// admin also times fleetctl through it. Needs --controller-config with [store].
    #[arg(long)]
    pub relay: bool,
    /// Bound on each other wait (all up, all reached, all back).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub timeout: Duration,
    /// Answer Stage/Activate without downloading the release through the stream.
    #[arg(long)]
    pub no_fetch: bool,
    /// Keep the run's directory (controller and worker logs) and print its path.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub traffic: crate::worker::TrafficArgs,
}

impl RunArgs {
    fn wants(&self, s: Scenario) -> bool {
        self.scenarios.is_empty() || self.scenarios.contains(&s)
    }
}

/// Harmless: accepts everything; only the confirm-after is short so the apply ends soon.
pub const POLICY: &str = r#"default = "accept"
confirm_timeout = "60s"
confirm_after = "1s"
admin_sources = ["127.0.0.0/8"]

[[allow]]
name = "ssh"
proto = "tcp"
ports = [22]
sources = ["127.0.0.0/8"]
"#;

fn app_spec(i: u32) -> String {
    format!(
        "name = \"app{i}\"\nserver = \"gunicorn\"\nentry = \"app:application\"\n\
         listen = \"0.0.0.0:{}\"\nworkers = 2\n\
         health = {{ path = \"/health\", timeout = \"2s\", interval = \"500ms\", failures = 2 }}\n",
        8000 + i
    )
}

/// A small release tarball (what is inside does not matter to simulated hosts; each app's
/// differs, so each is downloaded).
fn release(app: &str, version: &str) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let files = [
        ("app.py", "def application(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n".to_owned()),
        ("RELEASE", format!("{app} {version}\n")),
    ];
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, path, data.as_bytes())?;
    }
    Ok(tar.into_inner()?.finish()?)
}

pub async fn run(args: RunArgs) -> Result<Report> {
    ensure!(args.agents > 0, "--agents must be at least 1");
    ensure!(
        args.agents <= crate::addr::capacity(),
        "--agents is larger than the loopback addresses available"
    );
    limits::raise_nofile();
    let procs = args
        .procs
        .unwrap_or_else(|| args.agents.div_ceil(PER_PROC))
        .clamp(1, args.agents);
    // Worker 0 has the largest share.
    let (_, most) = crate::swarm::share(args.agents, procs, 0);
    ensure!(
        most <= MAX_TOKEN_USES,
        "{most} hosts in one worker: a join token enrolls at most {MAX_TOKEN_USES}; \
         pass --procs {} or more",
        args.agents.div_ceil(MAX_TOKEN_USES)
    );
    let bins = bins()?;
    let dir = tempfile::Builder::new()
        .prefix("fleet-swarm-")
        .tempdir()
        .context("create the run's temp dir")?;
    let started = Instant::now();
    let mut report = Report {
        agents: args.agents,
        procs,
        apps: args.apps,
        reconnect: format!("{:?}", args.reconnect).to_lowercase(),
        slow_disk: args.slow_disk,
        controller_config: match &args.controller_config {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("read --controller-config {}", p.display()))?,
            ),
            None => None,
        },
        heartbeat_ms: args.heartbeat.as_millis() as u64,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        nofile_hard: limits::nofile_hard(),
        ..Default::default()
    };
    let slow = if args.slow_disk {
        Some(crate::slowdisk::SlowDisk::create(dir.path())?)
    } else {
        None
    };
    let data_parent = slow.as_ref().map_or(dir.path(), |s| s.mount_point());
    let result = scenarios(
        &args,
        &bins,
        dir.path(),
        data_parent,
        procs,
        started,
        &mut report,
    )
    .await;
    if args.keep {
        let kept = dir.keep();
        eprintln!("fleet-swarm: run directory kept at {}", kept.display());
    }
    drop(slow);
    result.map(|()| report)
}

async fn scenarios(
    args: &RunArgs,
    bins: &crate::controller::Bins,
    dir: &Path,
    data_parent: &Path,
    procs: u64,
    started: Instant,
    report: &mut Report,
) -> Result<()> {
    let n = args.agents as usize;
    let mut c = Controller::init(
        bins,
        &data_parent.join("data"),
        &dir.join("controller.log"),
        args.controller_config.as_deref(),
    )
    .await?;
    c.call_timeout = args.timeout;
    c.start().await?;
    let pid = c.pid().context("controller pid")?;
    let relay = if args.relay {
        let mut r =
            Controller::replica_of(&c, &data_parent.join("relay"), &dir.join("relay.log")).await?;
        r.start().await?;
        r.wait_log("relay: calls go to the leader", Duration::from_secs(30))
            .await?;
        Some(r)
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = limits::status_kib(pid, "VmRSS")?;

    // Apps and releases exist before any host, as in a fleet being built up.
    let rel_dir = dir.join("releases");
    std::fs::create_dir_all(&rel_dir)?;
    for i in 1..=args.apps {
        let spec = rel_dir.join(format!("app{i}.toml"));
        std::fs::write(&spec, app_spec(i))?;
        c.fleetctl(&["app", "apply", &spec.display().to_string()])
            .await?;
        for v in ["1.0.0", "1.0.1"] {
            let tarball = rel_dir.join(format!("app{i}-{v}.tar.gz"));
            std::fs::write(&tarball, release(&format!("app{i}"), v)?)?;
            c.fleetctl(&[
                "release",
                "upload",
                &format!("app{i}"),
                "--version",
                v,
                &tarball.display().to_string(),
            ])
            .await?;
        }
    }
    // The analysis scenario's app and releases; its sick and slow releases misbehave in
    // the simulated traffic unless other releases were named.
    let mut traffic = args.traffic.clone();
    if args.wants(Scenario::Analysis) {
        let spec = rel_dir.join("web.toml");
        std::fs::write(&spec, measure::ANALYSIS_SPEC)?;
        c.fleetctl(&["app", "apply", &spec.display().to_string()])
            .await?;
        for v in measure::ANALYSIS_VERSIONS {
            let tarball = rel_dir.join(format!("web-{v}.tar.gz"));
            std::fs::write(&tarball, release("web", v)?)?;
            c.fleetctl(&[
                "release",
                "upload",
                "web",
                "--version",
                v,
                &tarball.display().to_string(),
            ])
            .await?;
        }
        if traffic.sick_release.is_empty() && traffic.slow_release.is_empty() {
            traffic.sick_release.push(measure::SICK.into());
            traffic.slow_release.push(measure::SLOW.into());
        }
    }
    // One bulk token per worker: a token enrolls at most MAX_TOKEN_USES hosts.
    let mut tokens = Vec::new();
    for w in 0..procs {
        let (_, count) = crate::swarm::share(args.agents, procs, w);
        let uses = count.to_string();
        let mut a = vec!["token", "create", "--uses", &uses, "--ttl", "2h"];
        let rate = args.bulk_rate.map(|r| r.to_string());
        if let Some(r) = &rate {
            a.extend(["--bulk", "--bulk-rate", r]);
        }
        let token = c.fleetctl(&a).await?;
        tokens.push(token.trim().to_owned());
    }

    // enroll
    let t_spawn = Instant::now();
    let mut swarm = Swarm::spawn(&Plan {
        exe: &bins.swarm,
        controller: relay.as_ref().map_or(&c.addr, |r| &r.addr),
        pin: &c.pin,
        tokens: &tokens,
        agents: args.agents,
        procs,
        heartbeat: args.heartbeat,
        reconnect: args.reconnect,
        one_source: args.one_source,
        no_fetch: args.no_fetch,
        enroll_timeout: args.enroll_timeout,
        spread: args.spread,
        traffic: &traffic,
        logs: dir,
    })?;
    let joined = swarm
        .wait("every host enrolled", args.enroll_timeout, |v| {
            v.workers.iter().all(|w| w.enrolled.is_some())
        })
        .await?;
    let (joins, retries) = {
        let v = swarm.view.lock().unwrap_or_else(|e| e.into_inner());
        v.workers.iter().fold((0, 0), |(j, r), w| {
            let (c, _, rr) = w.enrolled.unwrap_or_default();
            (j + c, r + rr)
        })
    };
    ensure!(
        joins == args.agents,
        "only {joins} of {} hosts enrolled",
        args.agents
    );
    swarm
        .wait("every stream up", args.timeout, |v| v.up() == n)
        .await?;
    report.enroll = Some(report::Enroll {
        joins,
        one_source: args.one_source,
        join_ms: joined.as_millis() as u64,
        joins_per_s: joins as f64 / joined.as_secs_f64().max(1e-3),
        retries,
        all_up_ms: t_spawn.elapsed().as_millis() as u64,
    });

    let cx = measure::Cx {
        args,
        dir,
        n,
        pid,
        relay_pid: relay.as_ref().and_then(Controller::pid),
    };
    let errors = &mut report.errors;
    if args.wants(Scenario::Steady) {
        report.steady = attempt(errors, "steady", measure::steady(&cx, rss_idle)).await;
    }
    if args.wants(Scenario::Firewall) {
        report.firewall = attempt(errors, "firewall", measure::firewall(&cx, &c, &swarm)).await;
    }
    if args.wants(Scenario::Deploy) {
        report.deploy = attempt(errors, "deploy", measure::deploy(&cx, &c, &swarm))
            .await
            .unwrap_or_default();
    }
    if args.wants(Scenario::Rollout) {
        report.rollout = attempt(errors, "rollout", measure::rollout(&cx, &c)).await;
    }
    if args.wants(Scenario::Admin) {
        report.admin = attempt(errors, "admin", measure::admin(&c)).await;
        if let Some(r) = &relay {
            report.admin_relayed = attempt(errors, "admin (relayed)", measure::admin(r)).await;
        }
    }
    if args.wants(Scenario::Hosts) {
        report.hosts = attempt(errors, "hosts", measure::hosts(&c)).await;
    }
    if args.wants(Scenario::Analysis) {
        report.analysis = attempt(errors, "analysis", measure::analysis(&cx, &mut c)).await;
    }
    if args.wants(Scenario::Reconnect) {
        report.reconnect_wave = attempt(
            errors,
            "reconnect",
            measure::reconnect(&cx, &mut c, &mut swarm),
        )
        .await;
    }

    // What the generator itself cost: orchestrator + workers.
    let hz = limits::clock_ticks_per_sec() as f64;
    let mut pids = swarm.pids();
    pids.push(std::process::id());
    let (mut ticks, mut rss, mut peak) = (0u64, 0u64, 0u64);
    for p in pids {
        ticks += limits::cpu_ticks(p).unwrap_or(0);
        rss += limits::status_kib(p, "VmRSS").unwrap_or(0);
        peak += limits::status_kib(p, "VmHWM").unwrap_or(0);
    }
    let run_s = started.elapsed().as_secs_f64();
    report.generator = Some(report::Generator {
        cpu_s: ticks as f64 / hz,
        cpu_percent_of_run: ticks as f64 / hz / run_s * 100.0,
        rss_kib: rss,
        peak_rss_kib: peak,
        run_s,
    });
    drop(swarm);
    drop(c);
    Ok(())
}

/// Lines of a scenario's error kept in the report (a fan-out error lists every host).
const ERROR_LINES: usize = 8;

fn first_lines(text: &str, n: usize) -> String {
    let total = text.lines().count();
    let mut out: Vec<&str> = text.lines().take(n).collect();
    let more = format!("… ({} more lines)", total.saturating_sub(n));
    if total > n {
        out.push(&more);
    }
    out.join("\n")
}

/// The scenario's figure, or None with its error recorded.
async fn attempt<T>(
    errors: &mut Vec<report::Failure>,
    scenario: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Option<T> {
    match f.await {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(report::Failure {
                scenario: scenario.to_owned(),
                error: first_lines(&format!("{e:#}"), ERROR_LINES),
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_with_a_count() {
        assert_eq!(first_lines("a\nb", 8), "a\nb");
        let long: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        let cut = first_lines(&long.join("\n"), 3);
        assert_eq!(cut, "0\n1\n2\n… (17 more lines)");
    }

    #[test]
    fn the_policy_and_specs_are_valid() {
        fleet_proto::firewall::Policy::parse(POLICY).unwrap();
        for i in 1..=3 {
            fleet_proto::spec::AppSpec::parse(&app_spec(i)).unwrap();
        }
        let web = fleet_proto::spec::AppSpec::parse(measure::ANALYSIS_SPEC).unwrap();
        assert!(web.analysis.unwrap().bake > Duration::ZERO);
        assert_ne!(
            release("app1", "1.0.0").unwrap(),
            release("app2", "1.0.0").unwrap()
        );
    }
}
