//! `fleetctl rollout`, `rollout status|pause|resume|abort`, `rollback`: live progress of a
//! rolling update (a line per host step; on a terminal, live overall and batch bars under
//! them), a summary, and an exit code that says how it ended. With `--output json` every
//! event is one JSON line on stdout.

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, Subcommand};
use fleet_proto::spec::AppName;
use fleet_proto::v1::{
    ControlRolloutRequest, RolloutEvent, RolloutInfo, RolloutRequest, WatchRolloutRequest,
};
use fleet_proto::values::{parse_duration, MaxParallel};
use serde_json::json;
use tonic::Streaming;

use crate::analysis::AnalysisOpts;
use crate::client::Conn;
use crate::output::Format;
use crate::progress::Bars;

/// The process exit code a finished rollout maps to (0 rolled out, 2 reverted, 1 other).
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RolloutCmd {
    #[command(subcommand)]
    pub sub: Option<RolloutSub>,
    #[command(flatten)]
    pub start: StartArgs,
}

#[derive(Args)]
pub struct StartArgs {
    pub app: Option<AppName>,
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub opts: Opts,
}

#[derive(Args, Clone)]
pub struct Opts {
    /// Hosts updated alone first.
    #[arg(long, default_value_t = 1)]
    pub canary: u32,
    /// Batch size after the canary: N hosts or P% of them.
    #[arg(long, default_value = "1")]
    pub max_parallel: MaxParallel,
    /// How long each host must stay healthy, without a crash, to count as done.
    #[arg(long, default_value = "10s", value_parser = |v: &str| parse_duration("--min-healthy", v))]
    pub min_healthy: Duration,
    /// How long each host may take to become (and stay) healthy.
    #[arg(long, default_value = "2m", value_parser = |v: &str| parse_duration("--healthy-deadline", v))]
    pub healthy_deadline: Duration,
    /// On failure, halt but leave switched hosts on the new release.
    #[arg(long)]
    pub no_auto_revert: bool,
    /// Skip hosts that are down (they converge when back) instead of failing.
    #[arg(long)]
    pub skip_down: bool,
    /// Comma-separated hosts [default: every host]
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Start it and return at once (`rollout status APP --watch` re-attaches).
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub analysis: AnalysisOpts,
    /// If the app's previous rollout is still baking, end its bake (recorded as
    /// superseded) instead of refusing to start.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand)]
pub enum RolloutSub {
    /// The app's current or last rollout.
    Status {
        app: AppName,
        /// Follow it live until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Finish the running batch, then wait.
    Pause { app: AppName },
    /// Continue a paused rollout.
    Resume { app: AppName },
    /// Stop now and revert the switched hosts.
    Abort { app: AppName },
}

pub async fn run(conn: &Conn, cmd: RolloutCmd, format: Format) -> anyhow::Result<()> {
    match cmd.sub {
        Some(RolloutSub::Status { app, watch }) => {
            let stream = conn
                .admin()
                .await?
                .watch_rollout(WatchRolloutRequest {
                    app: app.into(),
                    follow: watch,
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            show(conn, stream, format, watch).await
        }
        Some(RolloutSub::Pause { app }) => control(conn, app, "pause", format).await,
        Some(RolloutSub::Resume { app }) => control(conn, app, "resume", format).await,
        Some(RolloutSub::Abort { app }) => control(conn, app, "abort", format).await,
        None => {
            let app = cmd
                .start
                .app
                .ok_or_else(|| anyhow::anyhow!("usage: fleetctl rollout APP --version V"))?;
            let version = cmd
                .start
                .version
                .ok_or_else(|| anyhow::anyhow!("--version is required"))?;
            start(conn, app, Some(version), cmd.start.opts, format).await
        }
    }
}

pub async fn start(
    conn: &Conn,
    app: AppName,
    version: Option<String>,
    o: Opts,
    format: Format,
) -> anyhow::Result<()> {
    let req = RolloutRequest {
        app: app.into(),
        rollback: version.is_none(),
        version: version.unwrap_or_default(),
        canary: o.canary,
        max_parallel: o.max_parallel.to_string(),
        min_healthy_ms: o.min_healthy.as_millis() as u64,
        healthy_deadline_ms: o.healthy_deadline.as_millis() as u64,
        no_auto_revert: o.no_auto_revert,
        skip_down: o.skip_down,
        hosts: o.hosts.clone(),
        analysis: Some(o.analysis.to_wire()),
        force: o.force,
    };
    let mut stream = conn
        .admin()
        .await?
        .start_rollout(req)
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    if o.detach {
        // The snapshot proves the controller accepted and recorded it.
        let first = stream.message().await.map_err(|s| conn.status(s))?;
        if let Some(info) = first.and_then(|e| e.info) {
            match format {
                Format::Json => println!("{}", json!({"kind": "detached", "rollout": info_json(&info)})),
                Format::Table => println!(
                    "rollout {} of {} to {} started; follow it with `fleetctl rollout status {} --watch`",
                    info.id, info.app, info.version, info.app
                ),
            }
        }
        return Ok(());
    }
    show(conn, stream, format, true).await
}

async fn control(conn: &Conn, app: AppName, action: &str, format: Format) -> anyhow::Result<()> {
    let info = conn
        .admin()
        .await?
        .control_rollout(ControlRolloutRequest {
            app: app.into(),
            action: action.into(),
        })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    match format {
        Format::Json => crate::output::json(&info_json(&info)),
        Format::Table => println!(
            "{action} requested for rollout {} ({}, batch {}/{})",
            info.id,
            info.state,
            (info.current_batch as usize + 1).min(info.batches.len()),
            info.batches.len()
        ),
    }
    Ok(())
}

pub fn info_json(i: &RolloutInfo) -> serde_json::Value {
    let (analysis, verdicts) = crate::analysis::json(i);
    json!({
        "id": i.id,
        "app": i.app,
        "version": i.version,
        "state": i.state,
        "message": i.message,
        "current_batch": i.current_batch,
        "batches": i.batches.iter().map(|b| b.hosts.clone()).collect::<Vec<_>>(),
        "hosts": i.hosts.iter().map(|h| json!({
            "host": h.host, "batch": h.batch, "phase": h.phase, "previous": h.previous, "message": h.message,
        })).collect::<Vec<_>>(),
        "started_ms": i.started_ms,
        "ended_ms": i.ended_ms,
        "canary": i.canary,
        "auto_revert": i.auto_revert,
        "skip_down": i.skip_down,
        "min_healthy_ms": i.min_healthy_ms,
        "healthy_deadline_ms": i.healthy_deadline_ms,
        "actor": i.actor,
        "analysis": analysis,
        "verdicts": verdicts,
        "bake_until_ms": i.bake_until_ms,
    })
}

fn exit_of(state: &str) -> u8 {
    // A release reverted by its analysis (in a batch or in the bake) is "reverted" too.
    match state {
        "succeeded" => 0,
        "reverted" => 2,
        _ => 1,
    }
}

fn bar(done: usize, total: usize) -> String {
    const W: usize = 20;
    let fill = (done * W).checked_div(total).unwrap_or(W);
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(fill),
        ".".repeat(W - fill)
    )
}

/// Names batches as the controller's messages do ("canary: host1", "batch 2: host2, host3"):
/// the canary counts as the first batch.
pub(crate) fn batch_label(info: &RolloutInfo, b: u32) -> String {
    if b == 0 && info.canary > 0 {
        "canary".into()
    } else {
        format!("batch {}", b + 1)
    }
}

/// The plain lines an event prints (what scripts and CI read). `text_bars` adds a `[###..]`
/// line after each healthy host, for output that has no live bars.
fn table_lines(ev: &RolloutEvent, t0: i64, text_bars: bool) -> Vec<String> {
    let Some(info) = &ev.info else {
        return Vec::new();
    };
    let at = format!("+{:>6.1}s", (ev.time_ms - t0) as f64 / 1000.0);
    let mut out = Vec::new();
    match ev.kind.as_str() {
        "snapshot" => {
            out.push(format!(
                "rollout {} of {} to {}: {}{}",
                info.id,
                info.app,
                info.version,
                info.state,
                if info.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", info.message)
                }
            ));
            for h in &info.hosts {
                out.push(format!(
                    "  {:<10} {:<8} {:<13} {}",
                    h.host,
                    batch_label(info, h.batch),
                    h.phase,
                    h.message
                ));
            }
            out.extend(crate::analysis::lines(info));
        }
        "healthy" | "failed" | "reverted" | "revert_failed" | "skipped" => {
            let total = info.hosts.iter().filter(|h| h.batch == ev.batch).count();
            let done = info
                .hosts
                .iter()
                .filter(|h| h.batch == ev.batch && h.phase == "healthy")
                .count();
            let overall = info.hosts.iter().filter(|h| h.phase == "healthy").count();
            out.push(format!(
                "{at} {:<10} {:<13} {}",
                ev.host,
                ev.kind,
                first_line(&ev.message)
            ));
            if ev.kind == "healthy" && text_bars {
                out.push(format!(
                    "{at}   {:<8} {}   overall {}",
                    batch_label(info, ev.batch),
                    bar(done, total),
                    bar(overall, info.hosts.len())
                ));
            }
        }
        "finished" => {}
        _ if !ev.host.is_empty() => out.push(format!(
            "{at} {:<10} {:<13} {}",
            ev.host,
            ev.kind,
            first_line(&ev.message)
        )),
        _ => out.push(format!("{at} {:<24} {}", ev.kind, first_line(&ev.message))),
    }
    out
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn summary(info: &RolloutInfo) -> String {
    let secs = Duration::from_millis((info.ended_ms.max(info.started_ms) - info.started_ms) as u64);
    let count = |p: &str| info.hosts.iter().filter(|h| h.phase == p).count();
    format!(
        "{}: {} to {} {} in {:.1}s: {} updated, {} reverted, {} skipped, {} failed, {} untouched{}",
        info.id,
        info.app,
        info.version,
        info.state,
        secs.as_secs_f64(),
        count("healthy") + count("converged"),
        count("reverted"),
        count("skipped"),
        count("failed") + count("revert_failed"),
        count("pending") + count("staged"),
        if info.message.is_empty() {
            String::new()
        } else {
            format!("\n{}", info.message)
        }
    )
}

/// Prints events until the stream ends; with `until_end`, maps the end state to the exit
/// code.
async fn show(
    conn: &Conn,
    mut stream: Streaming<RolloutEvent>,
    format: Format,
    until_end: bool,
) -> anyhow::Result<()> {
    let mut last: Option<RolloutInfo> = None;
    let mut finished = false;
    let mut t0 = 0;
    // Live bars only for a person watching: piped output stays line by line.
    let mut bars =
        (format == Format::Table && until_end && std::io::stdout().is_terminal()).then(Bars::new);
    while let Some(ev) = stream.message().await.map_err(|s| conn.status(s))? {
        if t0 == 0 {
            t0 = ev.info.as_ref().map(|i| i.started_ms).unwrap_or(ev.time_ms);
        }
        match format {
            Format::Json => println!(
                "{}",
                json!({
                    "time_ms": ev.time_ms,
                    "kind": ev.kind,
                    "host": ev.host,
                    "batch": ev.batch,
                    "message": ev.message,
                    "rollout": ev.info.as_ref().map(info_json),
                })
            ),
            Format::Table => match bars.as_mut() {
                Some(bars) => bars.show(&ev, table_lines(&ev, t0, false)),
                None => table_lines(&ev, t0, true)
                    .iter()
                    .for_each(|l| println!("{l}")),
            },
        }
        finished |= ev.kind == "finished";
        if ev.info.is_some() {
            last = ev.info;
        }
    }
    if let Some(bars) = bars {
        bars.clear();
    }
    let Some(info) = last else {
        anyhow::bail!("the controller sent no rollout");
    };
    let ended = finished || info.ended_ms != 0;
    if format == Format::Table && ended {
        println!("{}", summary(&info));
    }
    // A one-off `rollout status` reports; only a watched (or started) rollout turns its
    // outcome into the exit code, so scripts can poll status without tripping on it.
    if !until_end {
        return Ok(());
    }
    if !ended {
        anyhow::bail!("lost the controller before the rollout ended: `fleetctl rollout status {} --watch` re-attaches", info.app);
    }
    match exit_of(&info.state) {
        0 => Ok(()),
        code => Err(Exit(code).into()),
    }
}
