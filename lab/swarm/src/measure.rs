//! The scenarios after enrollment, each measuring one figure; a failing one is recorded
//! in the report and the next still runs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::controller::Controller;
use crate::limits;
use crate::report;
use crate::scenarios::{RunArgs, POLICY};
use crate::sim::now_ms;
use crate::stats;
use crate::swarm::Swarm;
use crate::worker::host_name;

/// What every scenario needs to know about the run.
pub struct Cx<'a> {
    pub args: &'a RunArgs,
    pub dir: &'a Path,
    pub n: usize,
    /// The controller's PID when the hosts came up.
    pub pid: u32,
    /// The relaying controller's (with --relay).
    pub relay_pid: Option<u32>,
}

pub async fn steady(cx: &Cx<'_>, rss_idle: u64) -> Result<report::Steady> {
    let hz = limits::clock_ticks_per_sec();
    let db = match &cx.args.postgres_data {
        Some(d) => Some(limits::postmaster_pid(d)?),
        None => None,
    };
    let db0 = db.map(limits::tree_cpu_ticks).transpose()?;
    let r0 = cx.relay_pid.map(limits::cpu_ticks).transpose()?;
    let t0 = limits::cpu_ticks(cx.pid)?;
    tokio::time::sleep(cx.args.window).await;
    let t1 = limits::cpu_ticks(cx.pid)?;
    let r1 = cx.relay_pid.map(limits::cpu_ticks).transpose()?;
    let db1 = db.map(limits::tree_cpu_ticks).transpose()?;
    let percent = |ticks: u64| ticks as f64 / hz as f64 / cx.args.window.as_secs_f64() * 100.0;
    let rss = limits::status_kib(cx.pid, "VmRSS")?;
    Ok(report::Steady {
        window_s: cx.args.window.as_secs(),
        rss_idle_kib: rss_idle,
        rss_kib: rss,
        kib_per_session: rss.saturating_sub(rss_idle) as f64 / cx.n as f64,
        cpu_percent: percent(t1 - t0),
        db_cpu_percent: db0.zip(db1).map(|(a, b)| percent(b.saturating_sub(a))),
        relay_cpu_percent: r0.zip(r1).map(|(a, b)| percent(b.saturating_sub(a))),
        relay_rss_kib: cx
            .relay_pid
            .map(|p| limits::status_kib(p, "VmRSS"))
            .transpose()?,
    })
}

/// Admin calls one after another, each a whole fleetctl run (process start, TLS handshake,
/// the RPC) as an operator's script pays it: a read of the audit log's last page and a
/// cordon or uncordon of one host (a store write and an audit row).
pub async fn admin(c: &Controller) -> Result<report::Admin> {
    const CALLS: usize = 20;
    let host = crate::worker::host_name(0);
    let (mut read, mut write) = (Vec::new(), Vec::new());
    for i in 0..CALLS {
        let t = Instant::now();
        c.fleetctl(&["audit", "--limit", "20"]).await?;
        read.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        if i % 2 == 0 {
            c.fleetctl(&["host", "cordon", &host, "--reason", "swarm"])
                .await?;
        } else {
            c.fleetctl(&["host", "uncordon", &host]).await?;
        }
        write.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(report::Admin {
        read: stats::latency(read, CALLS),
        write: stats::latency(write, CALLS),
    })
}

/// `fleetctl firewall apply` to every host.
pub async fn firewall(cx: &Cx<'_>, c: &Controller, swarm: &Swarm) -> Result<report::FanOut> {
    let file = cx.dir.join("policy.toml");
    std::fs::write(&file, POLICY)?;
    let t0 = now_ms();
    let t = Instant::now();
    c.fleetctl(&["firewall", "apply", &file.display().to_string()])
        .await?;
    let fleetctl_ms = t.elapsed().as_millis() as u64;
    swarm
        .wait(
            "every host received the firewall apply",
            cx.args.timeout,
            |v| v.reached("apply_firewall", t0) == cx.n,
        )
        .await
        .ok();
    Ok(report::FanOut {
        command: "fleetctl firewall apply".into(),
        fleetctl_ms,
        received: stats::latency(swarm.latencies("apply_firewall", t0), cx.n),
    })
}

/// `fleetctl deploy` of each app to every host.
pub async fn deploy(cx: &Cx<'_>, c: &Controller, swarm: &Swarm) -> Result<Vec<report::Deploy>> {
    let mut out = Vec::new();
    for i in 1..=cx.args.apps {
        let app = format!("app{i}");
        let t0 = now_ms();
        let t = Instant::now();
        c.fleetctl(&["deploy", &app, "--version", "1.0.0"]).await?;
        let fleetctl_ms = t.elapsed().as_millis() as u64;
        swarm
            .wait("every host activated the deploy", cx.args.timeout, |v| {
                v.reached("activate", t0) == cx.n
            })
            .await
            .ok();
        out.push(report::Deploy {
            app,
            fleetctl_ms,
            stage: Some(swarm.latencies("stage", t0))
                .filter(|l| !l.is_empty())
                .map(|l| stats::latency(l, cx.n)),
            activate: stats::latency(swarm.latencies("activate", t0), cx.n),
        });
    }
    Ok(out)
}

/// A rollout of app1 1.0.1 over min(1000, N) hosts at 10%, against its floor.
pub async fn rollout(cx: &Cx<'_>, c: &Controller) -> Result<report::Rollout> {
    let hosts = cx.n.min(1000);
    let max_parallel: fleet_proto::values::MaxParallel = "10%".parse()?;
    let min_healthy = format!("{}ms", cx.args.min_healthy.as_millis());
    let names: Vec<String> = (0..hosts as u64).map(host_name).collect();
    let list = names.join(",");
    let mut a = vec![
        "rollout",
        "app1",
        "--version",
        "1.0.1",
        "--max-parallel",
        "10%",
        "--min-healthy",
        &min_healthy,
        "--healthy-deadline",
        "2m",
    ];
    let canary = cx.args.canary.to_string();
    a.extend(["--canary", &canary]);
    if hosts < cx.n {
        a.extend(["--hosts", &list]);
    }
    let t = Instant::now();
    c.fleetctl(&a).await?;
    let took = t.elapsed();
    let floor = stats::rollout_floor(hosts, cx.args.canary, max_parallel, cx.args.min_healthy);
    Ok(report::Rollout {
        hosts,
        max_parallel: "10%".into(),
        canary: cx.args.canary,
        min_healthy_ms: cx.args.min_healthy.as_millis() as u64,
        ratio: took.as_millis() as f64 / floor.floor_ms.max(1) as f64,
        floor,
        took_ms: took.as_millis() as u64,
    })
}

/// The analysis scenario's app: short windows and a short bake, so CI can afford it.
pub const ANALYSIS_SPEC: &str = r#"name = "web"
server = "gunicorn"
entry = "app:application"
listen = "0.0.0.0:8100"
workers = 2
health = { path = "/health", timeout = "2s", interval = "500ms", failures = 2 }

[rollout.analysis]
window = "2s"
min_requests = 40
max_error_ratio = 0.02
max_error_increase = 2.0
max_p99_increase = 1.5
bake = "4s"
"#;
pub const BASE: &str = "1.0.0";
pub const HEALTHY: &str = "1.1.0";
/// Answers 5 % of requests with 500 (sim::Traffic).
pub const SICK: &str = "1.2.0-sick";
/// 200 ms slower than the others.
pub const SLOW: &str = "1.3.0-slow";
/// Healthy; rolled out while the controller is killed mid-bake.
pub const RESUMED: &str = "1.4.0";
pub const ANALYSIS_VERSIONS: [&str; 5] = [BASE, HEALTHY, SICK, SLOW, RESUMED];
/// Hosts the analysis scenario rolls out to at most.
const ANALYSIS_HOSTS: usize = 10;

/// Runs one rollout of web with JSON output and reads how it ended.
async fn judged(c: &Controller, version: &str, extra: &[&str]) -> Result<report::Judged> {
    let mut a = vec![
        "--output",
        "json",
        "rollout",
        "web",
        "--version",
        version,
        "--min-healthy",
        "500ms",
        "--healthy-deadline",
        "20s",
    ];
    a.extend_from_slice(extra);
    let t = Instant::now();
    let (exit, stdout, stderr) = c.fleetctl_exit(&a, None).await?;
    let took_ms = t.elapsed().as_millis() as u64;
    let last = stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["rollout"].is_object())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "fleetctl rollout web {version} printed no rollout (exit {exit}): {}",
                stderr.trim()
            )
        })?;
    let r = &last["rollout"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let mut phases = std::collections::BTreeMap::new();
    for h in r["hosts"].as_array().into_iter().flatten() {
        *phases.entry(text(&h["phase"])).or_insert(0) += 1;
    }
    Ok(report::Judged {
        version: version.into(),
        exit,
        state: text(&r["state"]),
        message: text(&r["message"]),
        verdicts: r["verdicts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (text(&v["stage"]), text(&v["verdict"]), text(&v["message"])))
            .collect(),
        phases,
        took_ms,
    })
}

/// `rollout status web` as JSON.
async fn web_status(c: &Controller) -> Result<serde_json::Value> {
    let out = c
        .fleetctl(&["--output", "json", "rollout", "status", "web"])
        .await?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    Ok(v["rollout"].clone())
}

/// A healthy rollout started detached; once it bakes, kill -9 and restart the controller:
/// the resumed rollout must finish its bake (its end is in the record).
async fn resumed_bake(cx: &Cx<'_>, c: &mut Controller, on: &[&str]) -> Result<report::Judged> {
    let mut a = vec![
        "rollout",
        "web",
        "--version",
        RESUMED,
        "--min-healthy",
        "500ms",
        "--healthy-deadline",
        "20s",
        "--canary",
        "1",
        "--max-parallel",
        "50%",
        "--bake",
        "6s",
        "--detach",
    ];
    a.extend_from_slice(on);
    let t = Instant::now();
    c.fleetctl(&a).await?;
    let until = Instant::now() + cx.args.timeout;
    while web_status(c).await?["state"] != "baking" {
        anyhow::ensure!(Instant::now() < until, "web {RESUMED} never baked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.kill9().await?;
    c.start().await?;
    let r = loop {
        let r = web_status(c).await?;
        if r["ended_ms"].as_i64().unwrap_or(0) != 0 {
            break r;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "web {RESUMED} never ended after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    Ok(report::Judged {
        version: RESUMED.into(),
        exit: if r["state"] == "succeeded" { 0 } else { 2 },
        state: text(&r["state"]),
        message: text(&r["message"]),
        verdicts: r["verdicts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (text(&v["stage"]), text(&v["verdict"]), text(&v["message"])))
            .collect(),
        phases: Default::default(),
        took_ms: t.elapsed().as_millis() as u64,
    })
}

/// A rollout baking for a minute: a second one is refused, then `--force` ends the bake
/// (audited as superseded) and the second one runs.
async fn superseded(c: &Controller, on: &[&str]) -> Result<report::Superseded> {
    let common = [
        "--min-healthy",
        "500ms",
        "--healthy-deadline",
        "20s",
        "--canary",
        "0",
        "--max-parallel",
        "100%",
    ];
    let mut a = vec![
        "rollout",
        "web",
        "--version",
        HEALTHY,
        "--bake",
        "1m",
        "--detach",
    ];
    a.extend_from_slice(&common);
    a.extend_from_slice(on);
    c.fleetctl(&a).await?;
    let until = Instant::now() + Duration::from_secs(60);
    while web_status(c).await?["state"] != "baking" {
        anyhow::ensure!(Instant::now() < until, "web {HEALTHY} never baked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut second = vec!["rollout", "web", "--version", RESUMED, "--no-analysis"];
    second.extend_from_slice(&common);
    second.extend_from_slice(on);
    let (refused_exit, _, refused) = c.fleetctl_exit(&second, None).await?;
    second.push("--force");
    let (forced_exit, _, _) = c.fleetctl_exit(&second, None).await?;
    let audit = c.fleetctl(&["--output", "json", "audit"]).await?;
    Ok(report::Superseded {
        refused_exit,
        refused: refused.trim().to_owned(),
        forced_exit,
        audited: audit.contains("superseded by a newer rollout"),
    })
}

/// On up to 10 hosts running web 1.0.0 (deployed without analysis): a healthy release is
/// promoted and baked, then a sick one and a slow one are each reverted by the canary's
/// analysis, then a healthy one's bake survives a kill -9 of the controller. Verdicts are
/// reported, not asserted: the CI test asserts them.
pub async fn analysis(cx: &Cx<'_>, c: &mut Controller) -> Result<report::Analysis> {
    let hosts = cx.n.min(ANALYSIS_HOSTS);
    let list = (0..hosts as u64)
        .map(host_name)
        .collect::<Vec<_>>()
        .join(",");
    let on = ["--hosts", list.as_str()];
    let base = judged(
        c,
        BASE,
        &[
            &on[..],
            &["--no-analysis", "--canary", "0", "--max-parallel", "100%"],
        ]
        .concat(),
    )
    .await?;
    anyhow::ensure!(
        base.exit == 0,
        "web {BASE} was not deployed: {} ({})",
        base.state,
        base.message
    );
    let batches = [&on[..], &["--canary", "1", "--max-parallel", "50%"]].concat();
    let healthy = judged(c, HEALTHY, &batches).await?;
    let sick = judged(c, SICK, &batches).await?;
    let slow = judged(c, SLOW, &batches).await?;
    let resumed = resumed_bake(cx, c, &on).await?;
    let superseded = superseded(c, &on).await?;
    Ok(report::Analysis {
        hosts,
        healthy,
        sick,
        slow,
        resumed,
        superseded,
    })
}

pub async fn hosts(c: &Controller) -> Result<report::Hosts> {
    let t = Instant::now();
    let table = c.fleetctl(&["hosts"]).await?;
    let table_ms = t.elapsed().as_millis() as u64;
    let t = Instant::now();
    let json = c.fleetctl(&["--output", "json", "hosts"]).await?;
    let json_ms = t.elapsed().as_millis() as u64;
    let listed = serde_json::from_str::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
    Ok(report::Hosts {
        table_ms,
        table_bytes: table.len(),
        json_ms,
        json_bytes: json.len(),
        listed,
    })
}

/// kill -9 of the controller, a restart on the same data dir, every stream back.
pub async fn reconnect(cx: &Cx<'_>, c: &mut Controller, swarm: &mut Swarm) -> Result<report::Wave> {
    swarm.mark().await?;
    let before = limits::tcp_ext()?;
    let t_kill = Instant::now();
    c.kill9().await?;
    swarm
        .wait(
            "every stream noticed the kill",
            Duration::from_secs(60),
            |v| v.up() == 0,
        )
        .await?;
    let trace = cx.dir.join("strace.txt");
    let counting = c.start_counting_syncs(&trace).await?;
    let t_restart = Instant::now();
    swarm
        .wait(
            "every stream back after the restart",
            cx.args.timeout,
            |v| v.up() == cx.n,
        )
        .await?;
    let back_from_kill = t_kill.elapsed();
    let back_from_restart = t_restart.elapsed();
    let syncs = counting
        .then(|| std::fs::read_to_string(&trace).ok())
        .flatten()
        .map(|t| crate::controller::count_syncs(&t));
    let after = limits::tcp_ext()?;
    let delta = |k: &str| {
        after
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(k).copied().unwrap_or(0))
    };
    let (sum, max) = {
        let v = swarm.view.lock().unwrap_or_else(|e| e.into_inner());
        v.workers
            .iter()
            .fold((0, 0), |(s, m), w| (s + w.wave_sum, m.max(w.wave_max)))
    };
    Ok(report::Wave {
        back_from_kill_ms: back_from_kill.as_millis() as u64,
        back_from_restart_ms: back_from_restart.as_millis() as u64,
        attempts_mean: sum as f64 / cx.n as f64,
        attempts_max: max,
        listen_overflows: delta("ListenOverflows"),
        listen_drops: delta("ListenDrops"),
        syncs,
    })
}
