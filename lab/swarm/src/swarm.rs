//! The orchestrator's side of the worker processes: spawn them, read their JSON lines into
//! one shared view, wait for conditions on it.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::reconnect::Reconnect;
use crate::sim::Receipt;
use crate::worker::Line;

#[derive(Default, Debug, Clone)]
pub struct WorkerView {
    pub enrolled: Option<(u64, u64, u64)>,
    pub up: usize,
    pub attempts: u64,
    pub wave_sum: u64,
    pub wave_max: u32,
    pub marked: bool,
}

#[derive(Default)]
pub struct View {
    pub workers: Vec<WorkerView>,
    pub receipts: Vec<Receipt>,
    pub failed: Option<String>,
}

impl View {
    pub fn up(&self) -> usize {
        self.workers.iter().map(|w| w.up).sum()
    }

    /// Latency (ms after `t0_ms`) of the first `kind` receipt of each host since `t0_ms`.
    pub fn latencies(&self, kind: &str, t0_ms: u64) -> Vec<f64> {
        let mut first: std::collections::HashMap<u64, u64> = Default::default();
        for r in self
            .receipts
            .iter()
            .filter(|r| r.k == kind && r.ms >= t0_ms)
        {
            let e = first.entry(r.a).or_insert(r.ms);
            *e = (*e).min(r.ms);
        }
        first.values().map(|ms| (ms - t0_ms) as f64).collect()
    }

    pub fn reached(&self, kind: &str, t0_ms: u64) -> usize {
        self.latencies(kind, t0_ms).len()
    }
}

pub struct Swarm {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    pub view: Arc<Mutex<View>>,
}

pub struct Plan<'a> {
    pub exe: &'a Path,
    pub controller: &'a str,
    pub pin: &'a str,
    /// A join token per worker.
    pub tokens: &'a [String],
    pub agents: u64,
    pub procs: u64,
    pub heartbeat: Duration,
    pub reconnect: Reconnect,
    pub one_source: bool,
    pub no_fetch: bool,
    pub enroll_timeout: Duration,
    pub spread: Duration,
    pub traffic: &'a crate::worker::TrafficArgs,
    pub logs: &'a Path,
}

/// Hosts of worker `w` of `procs`: an even split, the first ones one larger.
pub fn share(agents: u64, procs: u64, w: u64) -> (u64, u64) {
    let base = agents / procs;
    let extra = agents % procs;
    let first = w * base + w.min(extra);
    (first, base + u64::from(w < extra))
}

impl Swarm {
    pub fn spawn(p: &Plan) -> Result<Swarm> {
        let view = Arc::new(Mutex::new(View {
            workers: vec![WorkerView::default(); p.procs as usize],
            ..Default::default()
        }));
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for w in 0..p.procs {
            let (first, count) = share(p.agents, p.procs, w);
            let log = p.logs.join(format!("worker-{w}.log"));
            let log =
                std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
            let mut cmd = Command::new(p.exe);
            cmd.arg("worker")
                .args(["--controller", p.controller, "--ca-pin", p.pin])
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args([
                    "--heartbeat",
                    &humantime::format_duration(p.heartbeat).to_string(),
                ])
                .args([
                    "--reconnect",
                    match p.reconnect {
                        Reconnect::Agent => "agent",
                        Reconnect::Immediate => "immediate",
                    },
                ])
                .args([
                    "--enroll-timeout",
                    &humantime::format_duration(p.enroll_timeout).to_string(),
                ])
                .args([
                    "--spread",
                    &humantime::format_duration(p.spread).to_string(),
                ])
                .args(p.traffic.to_args())
                .env("FLEET_JOIN_TOKEN", &p.tokens[w as usize])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log)
                .kill_on_drop(true);
            if p.one_source {
                cmd.arg("--one-source");
            }
            if p.no_fetch {
                cmd.arg("--no-fetch");
            }
            let mut child = cmd.spawn().context("spawn a fleet-swarm worker")?;
            stdins.push(child.stdin.take().context("worker stdin")?);
            let stdout = child.stdout.take().context("worker stdout")?;
            let view = view.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let Ok(line) = serde_json::from_str::<Line>(&l) else {
                        continue;
                    };
                    let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
                    let wv = &mut v.workers[w as usize];
                    match line {
                        Line::Enrolled { count, ms, retries } => {
                            wv.enrolled = Some((count, ms, retries))
                        }
                        Line::Status {
                            up,
                            attempts,
                            wave_sum,
                            wave_max,
                        } => {
                            wv.up = up;
                            wv.attempts = attempts;
                            wv.wave_sum = wave_sum;
                            wv.wave_max = wave_max;
                        }
                        Line::Marked => wv.marked = true,
                        Line::Cmd(r) => v.receipts.push(r),
                        Line::Failed { error } => {
                            v.failed.get_or_insert(format!("worker {w}: {error}"));
                        }
                    }
                }
                let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
                v.failed.get_or_insert(format!(
                    "worker {w} exited (log: worker-{w}.log in the run's directory)"
                ));
            });
            children.push(child);
        }
        Ok(Swarm {
            children,
            stdins,
            view,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|c| c.id()).collect()
    }

    /// Polls the view until `f` holds; fails early if a worker failed.
    pub async fn wait<F: Fn(&View) -> bool>(
        &self,
        what: &str,
        timeout: Duration,
        f: F,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            {
                let v = self.view.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(e) = &v.failed {
                    bail!("{e}");
                }
                if f(&v) {
                    return Ok(start.elapsed());
                }
            }
            if start.elapsed() > timeout {
                bail!("{what}: not within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts a reconnect wave: every worker zeroes its per-host attempt counters.
    pub async fn mark(&mut self) -> Result<()> {
        {
            let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
            for w in &mut v.workers {
                w.marked = false;
            }
        }
        for s in &mut self.stdins {
            s.write_all(b"mark\n").await.context("tell a worker")?;
            s.flush().await?;
        }
        self.wait("workers to mark the wave", Duration::from_secs(10), |v| {
            v.workers.iter().all(|w| w.marked && w.wave_sum == 0)
        })
        .await?;
        Ok(())
    }

    pub fn latencies(&self, kind: &str, t0_ms: u64) -> Vec<f64> {
        self.view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .latencies(kind, t0_ms)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        // Closing stdin ends a worker; SIGKILL (by PID, via kill_on_drop) makes sure.
        self.stdins.clear();
        for c in &mut self.children {
            let _ = c.start_kill();
        }
        let end = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            while Instant::now() < end && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_host_once() {
        for (n, p) in [(500, 2), (5001, 3), (7, 7), (10, 3)] {
            let mut next = 0;
            for w in 0..p {
                let (first, count) = share(n, p, w);
                assert_eq!(first, next);
                next += count;
            }
            assert_eq!(next, n);
        }
        assert_eq!(share(10, 3, 0), (0, 4));
    }
}
