//! `fleet-lab bench-canary`: issue 17's measurement. On a lab of N hosts under load from
//! the outer machine, each run rolls out a healthy release (it must be promoted: a revert
//! is counted as a false one) and then a release answering 5 % of requests with 500 (it
//! must be reverted), and times the sick canary from its first bad request, as the load
//! generator saw it, to the controller's revert decision (its `halted` event) and to the
//! canary being back (`reverted`).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::config::{controller_endpoint, host_addr, Paths};
use crate::fleet::{self, Binaries};
use crate::load::{self, LoadSpec};
use crate::release;

const APP: &str = "canary-bench";
const PORT: u16 = 8100;

pub struct Plan {
    pub runs: u32,
    pub window: String,
    pub min_requests: u64,
    pub min_healthy: String,
}

/// One sick rollout's times (milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Sick {
    pub to_decision_ms: i64,
    pub to_reverted_ms: i64,
    pub reason: String,
}

/// The wall-clock times (Unix ms) of the first `halted` and of the canary's `reverted`
/// in a rollout's JSON event lines.
pub fn revert_times(json_lines: &str, canary: &str) -> Result<(i64, i64, String)> {
    let (mut halted, mut reverted, mut reason) = (None, None, String::new());
    for line in json_lines.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(ev) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let time = ev["time_ms"].as_i64().unwrap_or(0);
        match ev["kind"].as_str().unwrap_or("") {
            "halted" if halted.is_none() => {
                halted = Some(time);
                reason = ev["message"].as_str().unwrap_or("").to_owned();
            }
            "reverted" if ev["host"] == canary && reverted.is_none() => reverted = Some(time),
            _ => {}
        }
    }
    match (halted, reverted) {
        (Some(h), Some(r)) => Ok((h, r, reason)),
        _ => bail!("the rollout's events lack `halted` or the canary's `reverted`"),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `fleetctl rollout` under load; the exit code, the event lines, and the load's first
/// failed request (Unix ms), if any.
fn rollout_under_load(
    paths: &Paths,
    b: &Binaries,
    hosts: &[u32],
    version: &str,
    plan: &Plan,
) -> Result<(i32, String, Option<i64>, load::Report)> {
    let stop = Arc::new(AtomicBool::new(false));
    let spec = LoadSpec {
        targets: hosts
            .iter()
            .map(|&n| format!("{}:{PORT}", host_addr(n)).parse())
            .collect::<Result<_, _>>()?,
        path: "/".into(),
        clients_per_target: 2,
        max_duration: Duration::from_secs(600),
        max_requests: u64::MAX,
        request_timeout: Duration::from_secs(10),
    };
    let started = now_ms();
    let loader = {
        let stop = stop.clone();
        std::thread::spawn(move || load::run(&spec, stop))
    };
    // The baseline needs traffic in its first window too.
    std::thread::sleep(Duration::from_secs(1));
    let out = Command::new(&b.fleetctl)
        .arg("--controller")
        .arg(controller_endpoint())
        .arg("--identity")
        .arg(paths.admin_identity())
        .args(["--output", "json", "rollout", APP, "--version", version])
        .args(["--canary", "1", "--max-parallel", "50%", "--force"])
        .args([
            "--min-healthy",
            &plan.min_healthy,
            "--healthy-deadline",
            "60s",
        ])
        .stdin(Stdio::null())
        .output()
        .context("run fleetctl rollout")?;
    stop.store(true, Ordering::SeqCst);
    let report = loader
        .join()
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))??;
    let first_bad = report
        .failed_at
        .first()
        .map(|d| started + d.as_millis() as i64);
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        first_bad,
        report,
    ))
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the benchmark on a lab that is up with fleet on `hosts`; prints a table.
pub fn run(paths: &Paths, b: &Binaries, hosts: &[u32], plan: &Plan) -> Result<()> {
    if hosts.len() < 2 {
        bail!("bench-canary needs at least 2 hosts: a canary and a baseline");
    }
    let dir = std::env::temp_dir().join(format!("fleet-bench-canary-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r = prepare_and_run(paths, b, hosts, plan, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn prepare_and_run(
    paths: &Paths,
    b: &Binaries,
    hosts: &[u32],
    plan: &Plan,
    dir: &std::path::Path,
) -> Result<()> {
    let analysis = format!(
        "[rollout.analysis]\nwindow = \"{}\"\nmin_requests = {}\n",
        plan.window, plan.min_requests
    );
    let spec = release::write(
        dir,
        "spec.toml",
        release::spec(APP, "gunicorn", PORT, &analysis).as_bytes(),
    )?;
    fleet::fleetctl(paths, b, &["app", "apply", &spec.display().to_string()])?;
    for (v, sick) in [("1.0", false), ("2.0", false), ("9.0", true)] {
        let overrides: &[(&str, &str)] = if sick {
            &[("app.py", release::APP_5_PERCENT_500)]
        } else {
            &[]
        };
        let tar = release::write(
            dir,
            &format!("{v}.tar.gz"),
            &release::sample("wsgi", v, overrides)?,
        )?;
        fleet::fleetctl(
            paths,
            b,
            &[
                "release",
                "upload",
                APP,
                &tar.display().to_string(),
                "--version",
                v,
            ],
        )?;
    }
    fleet::fleetctl(paths, b, &["deploy", APP, "--version", "1.0"])?;
    let canary = crate::config::host_name(hosts[0]);
    let (mut sick, mut false_reverts, mut missed) = (Vec::new(), 0, 0);
    for run in 1..=plan.runs {
        // Healthy releases alternate, so each run rolls a real change out.
        let healthy = if run % 2 == 1 { "2.0" } else { "1.0" };
        let (code, _, _, report) = rollout_under_load(paths, b, hosts, healthy, plan)?;
        if code != 0 {
            false_reverts += 1;
        }
        println!(
            "run {run}: healthy {healthy}: {} (load: {})",
            if code == 0 {
                "promoted"
            } else {
                "REVERTED (false)"
            },
            report.summary()
        );
        let (code, events, first_bad, _) = rollout_under_load(paths, b, hosts, "9.0", plan)?;
        if code != 2 {
            missed += 1;
            println!("run {run}: sick 9.0: NOT reverted (exit {code})");
            continue;
        }
        let (halted, reverted, reason) = revert_times(&events, &canary)?;
        let first_bad = first_bad.context("the sick release answered no request with 500")?;
        let s = Sick {
            to_decision_ms: halted - first_bad,
            to_reverted_ms: reverted - first_bad,
            reason,
        };
        println!(
            "run {run}: sick 9.0: first 500 → revert decision {} ms, → canary back {} ms ({})",
            s.to_decision_ms, s.to_reverted_ms, s.reason
        );
        sick.push(s);
        // Back to a healthy release everywhere for the next run's healthy rollout.
        fleet::fleetctl(paths, b, &["deploy", APP, "--version", healthy])?;
    }
    let mut d: Vec<i64> = sick.iter().map(|s| s.to_decision_ms).collect();
    let mut r: Vec<i64> = sick.iter().map(|s| s.to_reverted_ms).collect();
    d.sort_unstable();
    r.sort_unstable();
    println!();
    println!(
        "| hosts | window | min-healthy | runs | false reverts | sick not reverted | first 500 → decision p50 / max | first 500 → canary back p50 / max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {false_reverts} | {missed} | {} / {} ms | {} / {} ms |",
        hosts.len(),
        plan.window,
        plan.min_healthy,
        plan.runs,
        percentile(&d, 0.5),
        d.last().copied().unwrap_or(0),
        percentile(&r, 0.5),
        r.last().copied().unwrap_or(0),
    );
    if false_reverts > 0 || missed > 0 {
        bail!("{false_reverts} healthy rollouts reverted, {missed} sick ones promoted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revert_times_come_from_the_first_halt_and_the_canarys_revert() {
        let lines = r#"{"time_ms":100,"kind":"switching","host":"host1"}
{"time_ms":900,"kind":"analysis","host":"","message":"canary 5xx ..."}
{"time_ms":1000,"kind":"halted","host":"","message":"canary 5xx 5.0 % > max 1.0 %: reverting"}
{"time_ms":1500,"kind":"reverted","host":"host1"}
{"time_ms":1600,"kind":"halted","host":"","message":"later"}
"#;
        let (h, r, why) = revert_times(lines, "host1").unwrap();
        assert_eq!((h, r), (1000, 1500));
        assert!(why.starts_with("canary 5xx"));
        assert!(revert_times(lines, "host2").is_err());
        assert_eq!(percentile(&[1, 2, 3], 0.5), 2);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
