//! Every figure of a run, printed as one plain table or one JSON document.

use serde::Serialize;

use crate::stats::{Floor, Latency};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub agents: u64,
    pub procs: u64,
    pub apps: u32,
    pub reconnect: String,
    pub slow_disk: bool,
    /// The `--controller-config` file's contents, when one was given.
    pub controller_config: Option<String>,
    pub heartbeat_ms: u64,
    pub cores: usize,
    pub nofile_hard: u64,
    pub enroll: Option<Enroll>,
    pub steady: Option<Steady>,
    pub firewall: Option<FanOut>,
    pub deploy: Vec<Deploy>,
    pub rollout: Option<Rollout>,
    pub hosts: Option<Hosts>,
    pub admin: Option<Admin>,
    /// The same calls through the relaying controller (with --relay).
    pub admin_relayed: Option<Admin>,
    pub reconnect_wave: Option<Wave>,
    pub analysis: Option<Analysis>,
    pub generator: Option<Generator>,
    /// Scenarios that failed (their figures are missing).
    pub errors: Vec<Failure>,
}

#[derive(Debug, Serialize)]
pub struct Failure {
    pub scenario: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct Enroll {
    pub joins: u64,
    pub one_source: bool,
    /// From spawning the workers until every host holds a certificate.
    pub join_ms: u64,
    pub joins_per_s: f64,
    /// Joins refused by a rate or connection limit and retried a second later.
    pub retries: u64,
    /// From spawning the workers until every stream is Welcomed.
    pub all_up_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Steady {
    pub window_s: u64,
    pub rss_idle_kib: u64,
    pub rss_kib: u64,
    /// (RSS with every stream − RSS before any agent) / streams.
    pub kib_per_session: f64,
    /// Of one core, over the window.
    pub cpu_percent: f64,
    /// The PostgreSQL server's, likewise (with --postgres-data).
    pub db_cpu_percent: Option<f64>,
    /// The relaying controller's, likewise (with --relay); every stream passes through it.
    pub relay_cpu_percent: Option<f64>,
    pub relay_rss_kib: Option<u64>,
}

/// fleetctl round trips, one at a time (`measure::admin`).
#[derive(Debug, Serialize)]
pub struct Admin {
    /// `fleetctl audit --limit 20`.
    pub read: Latency,
    /// `fleetctl host cordon|uncordon`.
    pub write: Latency,
}

#[derive(Debug, Serialize)]
pub struct FanOut {
    pub command: String,
    /// Until fleetctl exited.
    pub fleetctl_ms: u64,
    pub received: Latency,
}

#[derive(Debug, Serialize)]
pub struct Deploy {
    pub app: String,
    pub fleetctl_ms: u64,
    /// None when the controller sent no separate Stage (Activate stages a missing release).
    pub stage: Option<Latency>,
    pub activate: Latency,
}

#[derive(Debug, Serialize)]
pub struct Rollout {
    pub hosts: usize,
    pub max_parallel: String,
    pub canary: usize,
    pub min_healthy_ms: u64,
    pub floor: Floor,
    pub took_ms: u64,
    pub ratio: f64,
}

/// Rollouts judged by simulated traffic (the analysis scenario).
#[derive(Debug, Serialize)]
pub struct Analysis {
    pub hosts: usize,
    pub healthy: Judged,
    pub sick: Judged,
    pub slow: Judged,
    /// Killed (-9) and restarted mid-bake.
    pub resumed: Judged,
    pub superseded: Superseded,
}

/// A second rollout during a bake: refused, then forced.
#[derive(Debug, Serialize)]
pub struct Superseded {
    pub refused_exit: i32,
    pub refused: String,
    pub forced_exit: i32,
    /// The ended bake's audit entry says it was superseded.
    pub audited: bool,
}

/// How one judged rollout ended.
#[derive(Debug, Serialize)]
pub struct Judged {
    pub version: String,
    pub exit: i32,
    pub state: String,
    pub message: String,
    /// (stage, verdict, message) per judged batch, then the bake's.
    pub verdicts: Vec<(String, String, String)>,
    /// Host phases at the end: how many hosts were in each.
    pub phases: std::collections::BTreeMap<String, usize>,
    pub took_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Hosts {
    pub table_ms: u64,
    pub table_bytes: usize,
    pub json_ms: u64,
    pub json_bytes: usize,
    pub listed: usize,
}

#[derive(Debug, Serialize)]
pub struct Wave {
    /// kill -9 → every stream Welcomed again.
    pub back_from_kill_ms: u64,
    /// controller started again (listening) → every stream Welcomed again.
    pub back_from_restart_ms: u64,
    pub attempts_mean: f64,
    pub attempts_max: u32,
    pub listen_overflows: u64,
    pub listen_drops: u64,
    /// fsync + fdatasync calls of the restarted controller, from its start until every
    /// stream was back; None without strace.
    pub syncs: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Generator {
    /// Orchestrator and workers, over the whole run.
    pub cpu_s: f64,
    pub cpu_percent_of_run: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub run_s: f64,
}

fn lat(l: &Latency) -> String {
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({}/{} reached)",
        l.p50_ms, l.p99_ms, l.max_ms, l.reached, l.expected
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Report {
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut r: Vec<(String, String)> = vec![(
            "run".into(),
            format!(
                "{} agents in {} worker(s), {} app(s), reconnect {}, heartbeat {} ms{}; {} cores, nofile hard {}",
                self.agents,
                self.procs,
                self.apps,
                self.reconnect,
                self.heartbeat_ms,
                if self.slow_disk { ", slow disk" } else { "" },
                self.cores,
                self.nofile_hard
            ),
        )];
        if let Some(c) = &self.controller_config {
            let lines: Vec<&str> = c.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            r.push(("controller config".into(), lines.join("; ")));
        }
        if let Some(e) = &self.enroll {
            r.push((
                "enroll".into(),
                format!(
                    "{} joins in {:.2} s = {:.0} joins/s{} ({} retried); all streams up after {:.2} s",
                    e.joins,
                    e.join_ms as f64 / 1000.0,
                    e.joins_per_s,
                    if e.one_source { " from one source" } else { ", one source each" },
                    e.retries,
                    e.all_up_ms as f64 / 1000.0
                ),
            ));
        }
        if let Some(s) = &self.steady {
            r.push((
                "controller RSS".into(),
                format!(
                    "{} ({} idle) = {:.1} KiB/session",
                    mib(s.rss_kib),
                    mib(s.rss_idle_kib),
                    s.kib_per_session
                ),
            ));
            r.push((
                "steady CPU".into(),
                format!("{:.2} % of a core over {} s", s.cpu_percent, s.window_s),
            ));
            if let Some(db) = s.db_cpu_percent {
                r.push((
                    "steady PostgreSQL CPU".into(),
                    format!("{db:.2} % of a core over {} s", s.window_s),
                ));
            }
            if let Some(relay) = s.relay_cpu_percent {
                r.push((
                    "steady relay CPU".into(),
                    format!(
                        "{relay:.2} % of a core over {} s, RSS {}",
                        s.window_s,
                        s.relay_rss_kib.map(mib).unwrap_or_default()
                    ),
                ));
            }
        }
        if let Some(f) = &self.firewall {
            r.push((
                "firewall apply".into(),
                format!("{}; fleetctl {} ms", lat(&f.received), f.fleetctl_ms),
            ));
        }
        for d in &self.deploy {
            if let Some(stage) = &d.stage {
                r.push((format!("deploy {} stage", d.app), lat(stage)));
            }
            r.push((
                format!("deploy {} activate", d.app),
                format!("{}; fleetctl {} ms", lat(&d.activate), d.fleetctl_ms),
            ));
        }
        if let Some(ro) = &self.rollout {
            r.push((
                "rollout".into(),
                format!(
                    "{} hosts at {} (canary {}), min-healthy {} ms: {:.2} s vs floor {:.2} s ({} batches) = {:.2}×",
                    ro.hosts,
                    ro.max_parallel,
                    ro.canary,
                    ro.min_healthy_ms,
                    ro.took_ms as f64 / 1000.0,
                    ro.floor.floor_ms as f64 / 1000.0,
                    ro.floor.batches,
                    ro.ratio
                ),
            ));
        }
        if let Some(a) = &self.analysis {
            for (name, j) in [
                ("healthy", &a.healthy),
                ("sick", &a.sick),
                ("slow", &a.slow),
                ("resumed bake", &a.resumed),
            ] {
                r.push((
                    format!("analysis {name}"),
                    format!(
                        "{} on {} hosts: {} (exit {}) in {:.1} s: {}",
                        j.version,
                        a.hosts,
                        j.state,
                        j.exit,
                        j.took_ms as f64 / 1000.0,
                        j.message
                    ),
                ));
            }
        }
        if let Some(h) = &self.hosts {
            r.push((
                "fleetctl hosts".into(),
                format!(
                    "table {} ms ({} bytes), json {} ms ({} bytes), {} hosts listed",
                    h.table_ms, h.table_bytes, h.json_ms, h.json_bytes, h.listed
                ),
            ));
        }
        if let Some(a) = &self.admin {
            let ms = |l: &Latency| {
                format!(
                    "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                    l.p50_ms, l.p99_ms, l.max_ms
                )
            };
            r.push(("fleetctl audit (read)".into(), ms(&a.read)));
            r.push(("fleetctl cordon (write)".into(), ms(&a.write)));
            if let Some(a) = &self.admin_relayed {
                r.push(("fleetctl audit via relay".into(), ms(&a.read)));
                r.push(("fleetctl cordon via relay".into(), ms(&a.write)));
            }
        }
        if let Some(w) = &self.reconnect_wave {
            r.push((
                "kill -9 → all back".into(),
                format!(
                    "{:.2} s from the kill, {:.2} s from the restart; attempts/agent mean {:.2}, max {}",
                    w.back_from_kill_ms as f64 / 1000.0,
                    w.back_from_restart_ms as f64 / 1000.0,
                    w.attempts_mean,
                    w.attempts_max
                ),
            ));
            r.push((
                "listen queue".into(),
                format!(
                    "TcpExtListenOverflows +{}, ListenDrops +{}",
                    w.listen_overflows, w.listen_drops
                ),
            ));
            r.push((
                "store syncs in the wave".into(),
                w.syncs.map_or("not counted (no strace)".into(), |s| {
                    format!("{s} fsync/fdatasync")
                }),
            ));
        }
        if let Some(g) = &self.generator {
            r.push((
                "generator cost".into(),
                format!(
                    "{:.1} CPU-s over {:.0} s ({:.1} % of a core), RSS {} (peak {})",
                    g.cpu_s,
                    g.run_s,
                    g.cpu_percent_of_run,
                    mib(g.rss_kib),
                    mib(g.peak_rss_kib)
                ),
            ));
        }
        for f in &self.errors {
            r.push((format!("FAILED {}", f.scenario), f.error.clone()));
        }
        r
    }

    pub fn table(&self) -> String {
        let rows = self.rows();
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<w$}  {v}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_figure_and_json_every_field() {
        let r = Report {
            agents: 10,
            procs: 1,
            steady: Some(Steady {
                window_s: 5,
                rss_idle_kib: 1024,
                rss_kib: 2048,
                kib_per_session: 102.4,
                cpu_percent: 1.5,
                db_cpu_percent: None,
                relay_cpu_percent: None,
                relay_rss_kib: None,
            }),
            ..Default::default()
        };
        let t = r.table();
        assert!(t.contains("controller RSS"), "{t}");
        assert!(t.contains("102.4 KiB/session"), "{t}");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["steady"]["rss_kib"], 2048);
        assert!(j["firewall"].is_null());
    }
}
