//! `fleet-swarm worker`: one process simulating a share of the hosts in one tokio runtime.
//! It talks to the orchestrator through JSON lines on stdout ([`Line`]) and takes commands
//! from stdin (`mark`: start counting a reconnect wave); it exits when stdin closes, so it
//! never outlives the orchestrator.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fleet_proto::peer::CaPin;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use crate::addr;
use crate::reconnect::Reconnect;
use crate::sim::{Agent, Common, Enrollment, Receipt, Traffic};

#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    #[arg(long)]
    pub controller: String,
    #[arg(long)]
    pub ca_pin: String,
    /// Join token; read from FLEET_JOIN_TOKEN so it is not on a command line.
    #[arg(long, env = "FLEET_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Global index of this worker's first host.
    #[arg(long)]
    pub first: u64,
    #[arg(long)]
    pub count: u64,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub heartbeat: Duration,
    #[arg(long, value_enum, default_value = "agent")]
    pub reconnect: Reconnect,
    /// Join every host from one source address (bulk enrollment behind one NAT).
    #[arg(long)]
    pub one_source: bool,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 32)]
    pub join_concurrency: usize,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub enroll_timeout: Duration,
    /// Answer Stage/Activate without downloading the release.
    #[arg(long)]
    pub no_fetch: bool,
    /// Window of the first retry after a lost session (the agent's `reconnect_spread`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub spread: Duration,
    #[command(flatten)]
    pub traffic: TrafficArgs,
}

/// What the simulated apps serve, as QueryRequests counts it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrafficArgs {
    /// Requests per second each simulated app serves (0: none).
    #[arg(long, default_value_t = 50)]
    pub traffic_rps: u32,
    /// Releases that answer 5 % of requests with 500, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub sick_release: Vec<String>,
    /// Releases 200 ms slower than the others, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub slow_release: Vec<String>,
}

impl TrafficArgs {
    /// The same flags for a worker's command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec!["--traffic-rps".to_owned(), self.traffic_rps.to_string()];
        if !self.sick_release.is_empty() {
            a.extend(["--sick-release".to_owned(), self.sick_release.join(",")]);
        }
        if !self.slow_release.is_empty() {
            a.extend(["--slow-release".to_owned(), self.slow_release.join(",")]);
        }
        a
    }
}

/// One line of a worker's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Line {
    Enrolled {
        count: u64,
        ms: u64,
        /// Joins refused by a rate or connection limit, and retried.
        retries: u64,
    },
    Status {
        up: usize,
        attempts: u64,
        wave_sum: u64,
        wave_max: u32,
    },
    Marked,
    Cmd(Receipt),
    Failed {
        error: String,
    },
}

/// The host name of global index `i`.
pub fn host_name(i: u64) -> String {
    format!("swarm-{:05}", i + 1)
}

fn emit(out: &mut impl Write, line: &Line) {
    // The orchestrator is gone if stdout is: stop then.
    let text = serde_json::to_string(line).expect("lines serialize");
    if writeln!(out, "{text}").is_err() {
        std::process::exit(0);
    }
}

pub async fn run(args: WorkerArgs) -> Result<()> {
    crate::limits::raise_nofile();
    let result = simulate(args).await;
    if let Err(e) = &result {
        emit(
            &mut std::io::stdout().lock(),
            &Line::Failed {
                error: format!("{e:#}"),
            },
        );
    }
    result
}

async fn simulate(args: WorkerArgs) -> Result<()> {
    let pin: CaPin = args.ca_pin.parse().context("--ca-pin")?;
    let e = Arc::new(Enrollment {
        controller: args.controller.clone(),
        pin,
        token: args.token.clone(),
    });
    let started = Instant::now();
    let retries = Arc::new(AtomicUsize::new(0));
    let limit = Arc::new(Semaphore::new(args.join_concurrency.max(1)));
    let mut joins = tokio::task::JoinSet::new();
    for i in args.first..args.first + args.count {
        let source = IpAddr::V4(addr::source(i)?);
        let join_source = if args.one_source {
            IpAddr::V4(addr::ONE_SOURCE)
        } else {
            source
        };
        let (e, limit, retries) = (e.clone(), limit.clone(), retries.clone());
        let deadline = started + args.enroll_timeout;
        joins.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            loop {
                match Agent::enroll(i, host_name(i), source, join_source, &e).await {
                    Ok(a) => return Ok(a),
                    // A rate limit or a refused connection (the per-address connection
                    // limits) is waited out, like an operator re-running the join.
                    Err(err)
                        if is_retryable(&err)
                            && Instant::now() + Duration::from_secs(1) < deadline =>
                    {
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(err) => return Err(err),
                }
            }
        });
    }
    let mut agents = Vec::with_capacity(args.count as usize);
    while let Some(r) = joins.join_next().await {
        agents.push(r.context("join task")??);
    }
    agents.sort_by_key(|a| a.index);
    let mut out = std::io::stdout().lock();
    emit(
        &mut out,
        &Line::Enrolled {
            count: agents.len() as u64,
            ms: started.elapsed().as_millis() as u64,
            retries: retries.load(Ordering::Relaxed) as u64,
        },
    );
    drop(out);

    let (receipts, mut receipts_rx) = mpsc::unbounded_channel();
    let common = Arc::new(Common {
        controller: args.controller.clone(),
        heartbeat: args.heartbeat,
        reconnect: args.reconnect,
        fetch: !args.no_fetch,
        spread: args.spread,
        up: AtomicUsize::new(0),
        receipts,
        traffic: Arc::new(Traffic {
            rps: args.traffic.traffic_rps,
            sick: args.traffic.sick_release.clone(),
            slow: args.traffic.slow_release.clone(),
        }),
    });
    for a in &agents {
        tokio::spawn(a.clone().supervise(common.clone()));
    }

    let (mark_tx, mut mark_rx) = mpsc::unbounded_channel();
    // A thread: tokio's stdin is a feature the workspace does not build.
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::stdin().lock().lines() {
            match l {
                Ok(l) if l.trim() == "mark" => {
                    let _ = mark_tx.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // The orchestrator is gone (or done): so are we.
        std::process::exit(0);
    });

    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            r = receipts_rx.recv() => {
                let Some(r) = r else { bail!("receipt channel closed") };
                let mut out = std::io::stdout().lock();
                emit(&mut out, &Line::Cmd(r));
                while let Ok(r) = receipts_rx.try_recv() {
                    emit(&mut out, &Line::Cmd(r));
                }
            }
            Some(()) = mark_rx.recv() => {
                for a in &agents {
                    a.wave_attempts.store(0, Ordering::SeqCst);
                }
                emit(&mut std::io::stdout().lock(), &Line::Marked);
            }
            _ = tick.tick() => {
                let (mut attempts, mut wave_sum, mut wave_max) = (0u64, 0u64, 0u32);
                for a in &agents {
                    attempts += u64::from(a.attempts.load(Ordering::Relaxed));
                    let w = a.wave_attempts.load(Ordering::Relaxed);
                    wave_sum += u64::from(w);
                    wave_max = wave_max.max(w);
                }
                emit(&mut std::io::stdout().lock(), &Line::Status {
                    up: common.up.load(Ordering::SeqCst),
                    attempts,
                    wave_sum,
                    wave_max,
                });
            }
        }
    }
}

/// A join refused for its rate, or one that never got an answer; not a refused token.
fn is_retryable(err: &anyhow::Error) -> bool {
    match err
        .chain()
        .find_map(|c| c.downcast_ref::<crate::sim::JoinRefused>())
    {
        Some(r) => r.0.code() == tonic::Code::ResourceExhausted,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_valid_fleet_names() {
        for i in [0, 9, 99_999, 1_000_000] {
            let n = host_name(i);
            n.parse::<fleet_proto::identity::Name>()
                .unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        assert_eq!(host_name(0), "swarm-00001");
    }

    #[test]
    fn rate_limits_and_lost_connections_are_retried_refusals_are_not() {
        let limited = anyhow::Error::new(crate::sim::JoinRefused(
            tonic::Status::resource_exhausted("too many join attempts"),
        ))
        .context("swarm-00001");
        assert!(is_retryable(&limited));
        let refused = anyhow::Error::new(crate::sim::JoinRefused(
            tonic::Status::permission_denied("token used up"),
        ));
        assert!(!is_retryable(&refused));
        assert!(is_retryable(&anyhow::anyhow!(
            "connect failed: reset by peer"
        )));
    }

    #[test]
    fn lines_round_trip() {
        let l = Line::Cmd(Receipt {
            a: 3,
            k: "stage".into(),
            ms: 17,
        });
        let text = serde_json::to_string(&l).unwrap();
        assert!(matches!(
            serde_json::from_str::<Line>(&text).unwrap(),
            Line::Cmd(r) if r.a == 3 && r.k == "stage"
        ));
    }
}
