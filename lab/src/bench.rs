//! `fleet-lab bench-rollout`: issue 5's measurement. Boots N hosts, deploys the sample app
//! at 1.0, rolls 1.1 out with `fleetctl rollout --output json`, and sets the command's wall
//! time against the rollout's physical floor: the sum over batches of the slowest host's
//! switch-to-healthy time, which is its restart-to-healthy time plus the min-healthy hold
//! (the agent answers an Activate only after the hold).
//!
//! Times come from the controller's events: `switching` is stamped when the Activate is
//! sent, `healthy` when the agent's answer arrives.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::config::{controller_endpoint, Paths};
use crate::fleet::Binaries;
use crate::{demo, release};

/// What one rollout's events say about where its time went (milliseconds).
#[derive(Debug, Default, PartialEq)]
pub struct Timings {
    pub state: String,
    /// From `started` to `staged`: fetch, unpack and venv on every host at once.
    pub staging_ms: i64,
    /// Per batch: (hosts, the slowest host's switch-to-healthy).
    pub batches: Vec<(Vec<String>, i64)>,
    /// Per host: switch-to-healthy.
    pub hosts: BTreeMap<String, i64>,
    /// From `started` to `finished`, as the controller saw it.
    pub controller_ms: i64,
    /// Between the last `healthy` of each batch and the first `switching` of the next: the
    /// engine's own delay between batches.
    pub gaps_ms: Vec<i64>,
}

impl Timings {
    /// The physical floor: Σ over batches of the slowest switch-to-healthy.
    pub fn floor_ms(&self) -> i64 {
        self.batches.iter().map(|(_, slowest)| slowest).sum()
    }

    /// Reads the JSON lines of `fleetctl rollout --output json`.
    pub fn from_events(json_lines: &str) -> Result<Timings> {
        let mut t = Timings::default();
        let mut switching: BTreeMap<String, i64> = BTreeMap::new();
        let mut batch_of: BTreeMap<String, usize> = BTreeMap::new();
        // Per batch: first switching, last healthy.
        let mut spans: BTreeMap<usize, (i64, i64)> = BTreeMap::new();
        let (mut started, mut staged, mut finished) = (None, None, None);
        for line in json_lines.lines().filter(|l| !l.trim().is_empty()) {
            let ev: Value =
                serde_json::from_str(line).with_context(|| format!("event line {line:?}"))?;
            let time = ev["time_ms"].as_i64().context("event without time_ms")?;
            let host = ev["host"].as_str().unwrap_or("").to_owned();
            if let Some(state) = ev["rollout"]["state"].as_str() {
                t.state = state.to_owned();
            }
            match ev["kind"].as_str().unwrap_or("") {
                "started" => started = Some(time),
                "staged" => staged = Some(time),
                "finished" => finished = Some(time),
                "switching" => {
                    let b = ev["batch"].as_u64().unwrap_or(0) as usize;
                    switching.insert(host.clone(), time);
                    batch_of.insert(host, b);
                    spans.entry(b).or_insert((time, time));
                }
                "healthy" => {
                    let from = switching
                        .get(&host)
                        .with_context(|| format!("{host} turned healthy without switching"))?;
                    t.hosts.insert(host.clone(), time - from);
                    let span = spans.entry(batch_of[&host]).or_insert((time, time));
                    span.1 = span.1.max(time);
                }
                _ => {}
            }
        }
        let (Some(started), Some(staged), Some(finished)) = (started, staged, finished) else {
            bail!("the events lack started, staged or finished:\n{json_lines}");
        };
        t.staging_ms = staged - started;
        let spans: Vec<(i64, i64)> = spans.into_values().collect();
        t.gaps_ms = spans.windows(2).map(|w| w[1].0 - w[0].1).collect();
        t.controller_ms = finished - started;
        for (host, took) in &t.hosts {
            let b = batch_of[host];
            if t.batches.len() <= b {
                t.batches.resize(b + 1, (Vec::new(), 0));
            }
            t.batches[b].0.push(host.clone());
            t.batches[b].1 = t.batches[b].1.max(*took);
        }
        Ok(t)
    }
}

pub struct Plan {
    pub canary: u32,
    pub max_parallel: u32,
    pub min_healthy: String,
}

/// Deploys 1.0 on `hosts`, rolls 1.1 out and prints wall time, floor and their ratio.
pub fn rollout(paths: &Paths, b: &Binaries, hosts: &[u32], plan: &Plan) -> Result<()> {
    demo::deploy_sample(paths, b, hosts)?;
    let dir = std::env::temp_dir().join(format!("fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tar = release::write(
        &dir,
        "shop-1.1.tar.gz",
        &release::sample("wsgi", "1.1", &[])?,
    )?;
    crate::fleet::fleetctl(
        paths,
        b,
        &[
            "release",
            "upload",
            demo::APP,
            &tar.display().to_string(),
            "--version",
            "1.1",
        ],
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    let (canary, parallel) = (plan.canary.to_string(), plan.max_parallel.to_string());
    let args = [
        "rollout",
        demo::APP,
        "--version",
        "1.1",
        "--canary",
        &canary,
        "--max-parallel",
        &parallel,
        "--min-healthy",
        &plan.min_healthy,
        "--output",
        "json",
    ];
    println!("$ fleetctl {}", args.join(" "));
    let t0 = Instant::now();
    let out = Command::new(&b.fleetctl)
        .arg("--controller")
        .arg(controller_endpoint())
        .arg("--identity")
        .arg(paths.admin_identity())
        .args(args)
        .output()
        .context("run fleetctl rollout")?;
    let wall = t0.elapsed();
    let events = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "rollout failed ({}):\n{events}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let t = Timings::from_events(&events)?;
    print!("{}", report(&t, wall, hosts.len(), plan));
    Ok(())
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

pub fn report(t: &Timings, wall: Duration, hosts: usize, plan: &Plan) -> String {
    let mut out = format!(
        "\n{hosts} hosts, canary {}, max-parallel {}, min-healthy {}: rollout {}\n",
        plan.canary, plan.max_parallel, plan.min_healthy, t.state
    );
    for (i, (names, slowest)) in t.batches.iter().enumerate() {
        let each: Vec<String> = names
            .iter()
            .map(|h| format!("{h} {:.2}s", secs(t.hosts[h])))
            .collect();
        out += &format!(
            "  batch {}: slowest {:.2}s  ({})\n",
            i + 1,
            secs(*slowest),
            each.join(", ")
        );
    }
    let floor = t.floor_ms();
    let wall_ms = wall.as_millis() as i64;
    let gaps: Vec<String> = t.gaps_ms.iter().map(|g| format!("{g}")).collect();
    out += &format!(
        "  gaps between batches (ms): {}\n  staging (all hosts at once): {:.2}s\n  controller start-to-finish: {:.2}s\n  \
         wall time of `fleetctl rollout`: {:.2}s\n  floor (sum of slowest per batch): {:.2}s\n  \
         ratio wall/floor: {:.3}\n  ratio (wall - staging)/floor: {:.3}\n",
        gaps.join(", "),
        secs(t.staging_ms),
        secs(t.controller_ms),
        secs(wall_ms),
        secs(floor),
        wall_ms as f64 / floor.max(1) as f64,
        (wall_ms - t.staging_ms) as f64 / floor.max(1) as f64,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(time: i64, kind: &str, host: &str, batch: u32) -> String {
        serde_json::json!({
            "time_ms": time, "kind": kind, "host": host, "batch": batch, "message": "",
            "rollout": {"state": if kind == "finished" { "succeeded" } else { "running" }},
        })
        .to_string()
    }

    #[test]
    fn floor_sums_the_slowest_host_of_each_batch() {
        let lines = [
            ev(1000, "snapshot", "", 0),
            ev(1000, "started", "", 0),
            ev(1800, "staged", "", 0),
            ev(1810, "switching", "h1", 0),
            ev(4310, "healthy", "h1", 0),
            ev(4320, "switching", "h2", 1),
            ev(4321, "switching", "h3", 1),
            ev(6900, "healthy", "h3", 1),
            ev(7120, "healthy", "h2", 1),
            ev(7150, "succeeded", "", 0),
            ev(7160, "finished", "", 0),
        ]
        .join("\n");
        let t = Timings::from_events(&lines).unwrap();
        assert_eq!(t.state, "succeeded");
        assert_eq!(t.staging_ms, 800);
        assert_eq!(t.controller_ms, 6160);
        assert_eq!(t.hosts["h3"], 2579);
        assert_eq!(
            t.batches,
            vec![
                (vec!["h1".to_string()], 2500),
                (vec!["h2".into(), "h3".into()], 2800)
            ]
        );
        assert_eq!(t.floor_ms(), 5300);
        assert_eq!(t.gaps_ms, vec![10]);
        let plan = Plan {
            canary: 1,
            max_parallel: 2,
            min_healthy: "2s".into(),
        };
        let r = report(&t, Duration::from_millis(6360), 3, &plan);
        assert!(r.contains("ratio wall/floor: 1.200"), "{r}");
        assert!(r.contains("ratio (wall - staging)/floor: 1.049"), "{r}");
        assert!(r.contains("gaps between batches (ms): 10\n"), "{r}");
    }

    #[test]
    fn events_without_an_end_are_refused() {
        let lines = [ev(1, "started", "", 0), ev(2, "staged", "", 0)].join("\n");
        assert!(Timings::from_events(&lines).is_err());
        let healthy_first = [ev(1, "healthy", "h1", 0)].join("\n");
        assert!(Timings::from_events(&healthy_first).is_err());
    }
}
