//! `fleetctl deploy`, `restart`, `reload`, `status`, `logs`: apps on hosts.

use clap::Args;
use fleet_proto::spec::AppName;
use fleet_proto::v1::{
    AppState, DeployRequest, HostAppStatus, HostProgress, LogsRequest, RestartAppRequest,
    StatusRequest,
};
use fleet_proto::values::parse_duration;
use serde_json::json;
use tonic::Streaming;

use crate::client::Conn;
use crate::output::{self, Format};
use crate::overview::{self, Attention};

#[derive(Args)]
pub struct DeployArgs {
    pub app: AppName,
    #[arg(long)]
    pub version: String,
    /// Comma-separated hosts [default: every host]
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// How long each host may take to become healthy.
    #[arg(long, default_value = "60s", value_parser = |v: &str| parse_duration("--healthy-deadline", v))]
    pub healthy_deadline: std::time::Duration,
}

#[derive(Args)]
pub struct RestartArgs {
    pub app: AppName,
    /// Comma-separated hosts [default: every host running the app]
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
}

#[derive(Args)]
pub struct LogsArgs {
    pub app: AppName,
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Keep following new lines.
    #[arg(short, long)]
    pub follow: bool,
    /// Lines of history per host.
    #[arg(short = 'n', long, default_value_t = 100)]
    pub lines: u32,
}

pub fn state_json(s: &AppState) -> serde_json::Value {
    json!({
        "release": s.release,
        "state": s.active_state,
        "sub_state": s.sub_state,
        "healthy": s.healthy,
        "restarts": s.restarts,
        "main_pid": s.main_pid,
        "since": output::time(s.since),
        "crash_loop": s.crash_loop,
        "health_detail": s.health_detail,
        "stopped": s.stopped,
    })
}

/// Prints per-host progress as it arrives; returns each failed host with its reason.
pub(crate) async fn follow(
    conn: &Conn,
    mut stream: Streaming<HostProgress>,
    format: Format,
) -> anyhow::Result<Vec<String>> {
    let mut results = Vec::new();
    let mut failed = Vec::new();
    while let Some(p) = stream.message().await.map_err(|s| conn.status(s))? {
        if p.phase == "failed" {
            failed.push(format!("{}: {}", p.host, p.message));
        }
        match format {
            Format::Table => {
                // The agent's own message already says what runs; the state adds the
                // rest only when it sent none.
                let detail = match (&p.state, p.phase.as_str()) {
                    (Some(s), "done") if p.message.is_empty() => {
                        format!(
                            "release {} healthy={} pid {}",
                            s.release, s.healthy, s.main_pid
                        )
                    }
                    _ => String::new(),
                };
                println!("{:<16} {:<10} {} {}", p.host, p.phase, p.message, detail);
            }
            Format::Json => {
                if matches!(p.phase.as_str(), "done" | "failed" | "skipped" | "pending") {
                    results.push(json!({"host": p.host, "result": p.phase, "message": p.message, "app": p.state.as_ref().map(state_json)}));
                }
            }
        }
    }
    if format == Format::Json {
        output::json(&json!(results));
    }
    Ok(failed)
}

pub async fn deploy(conn: &Conn, args: DeployArgs, format: Format) -> anyhow::Result<()> {
    let deadline = args.healthy_deadline;
    let stream = conn
        .admin()
        .await?
        .deploy(DeployRequest {
            app: args.app.to_string(),
            version: args.version.clone(),
            hosts: args.hosts,
            healthy_deadline_ms: deadline.as_millis() as u64,
        })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    let failed = follow(conn, stream, format).await?;
    if !failed.is_empty() {
        anyhow::bail!(
            "deploy of {} {} failed on {} host(s):\n  {}",
            args.app,
            args.version,
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

pub async fn restart(
    conn: &Conn,
    args: RestartArgs,
    reload: bool,
    format: Format,
) -> anyhow::Result<()> {
    let stream = conn
        .admin()
        .await?
        .restart_app(RestartAppRequest {
            app: args.app.to_string(),
            hosts: args.hosts,
            reload,
        })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    let failed = follow(conn, stream, format).await?;
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} failed on {} host(s):\n  {}",
            if reload { "reload" } else { "restart" },
            args.app,
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

pub async fn status(
    conn: &Conn,
    app: Option<String>,
    all: bool,
    format: Format,
) -> anyhow::Result<()> {
    let overview = app.is_none();
    let app = app.unwrap_or_default();
    let mut admin = conn.admin().await?;
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .status(StatusRequest {
                app: app.clone(),
                page_token,
                limit: 0,
            })
            .await
            .map_err(|s| conn.status(s))?
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if overview {
        return print_overview(entries, all, format);
    }
    match format {
        Format::Json => output::json(&json!(entries
            .iter()
            .map(|e| entry_json(e, None))
            .collect::<Vec<_>>())),
        Format::Table => output::table(
            &ENTRY_HEADER,
            &entries.iter().map(entry_row).collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

fn entry_json(e: &HostAppStatus, attention: Option<&Attention>) -> serde_json::Value {
    let s = e.state.clone().unwrap_or_default();
    let mut v = state_json(&s);
    v["host"] = json!(e.host);
    v["host_state"] = json!(e.host_state);
    v["app"] = json!(s.app);
    if let Some(a) = attention {
        v["attention"] = json!(a.why);
    }
    v
}

fn entry_row(e: &HostAppStatus) -> Vec<String> {
    let s = e.state.clone().unwrap_or_default();
    let healthy = if s.crash_loop {
        "crash-loop".to_owned()
    } else {
        s.healthy.to_string()
    };
    let state = if s.stopped {
        format!("{} (stopped)", s.active_state)
    } else if e.host_state == "up" {
        s.active_state.clone()
    } else {
        format!("{} (host down)", s.active_state)
    };
    vec![
        s.app.clone(),
        e.host.clone(),
        s.release.clone(),
        state,
        healthy,
        s.restarts.to_string(),
        s.main_pid.to_string(),
        output::time_or_dash(s.since),
    ]
}

const ENTRY_HEADER: [&str; 8] = [
    "APP", "HOST", "RELEASE", "STATE", "HEALTHY", "RESTARTS", "PID", "SINCE",
];

/// Every app × host, the ones needing attention first. The table shows one line per app
/// and only the hosts needing attention (`--all`: every host), so it stays readable for
/// a large fleet; JSON has every entry, worst first, with an `attention` reason.
fn print_overview(entries: Vec<HostAppStatus>, all: bool, format: Format) -> anyhow::Result<()> {
    let summaries = overview::summaries(&entries);
    let sorted = overview::by_urgency(entries);
    match format {
        Format::Json => output::json(&json!(sorted
            .iter()
            .map(|(e, a)| entry_json(e, a.as_ref()))
            .collect::<Vec<_>>())),
        Format::Table => {
            if summaries.is_empty() {
                println!("no app reports from any host yet: deploy one with `fleetctl deploy APP --version V`");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = summaries
                .iter()
                .map(|s| {
                    let releases: Vec<String> = s
                        .releases
                        .iter()
                        .take(3)
                        .map(|(r, n)| format!("{r} ×{n}"))
                        .collect();
                    let more = s.releases.len().saturating_sub(3);
                    vec![
                        s.app.clone(),
                        releases.join(", ")
                            + &if more > 0 {
                                format!(", +{more}")
                            } else {
                                String::new()
                            },
                        s.hosts.to_string(),
                        s.healthy.to_string(),
                        s.down.to_string(),
                        s.needs_attention.to_string(),
                        s.restarts.to_string(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "APP",
                    "RELEASES",
                    "HOSTS",
                    "HEALTHY",
                    "DOWN",
                    "ATTENTION",
                    "RESTARTS",
                ],
                &rows,
            );
            let shown: Vec<Vec<String>> = sorted
                .iter()
                .filter(|(_, a)| all || a.is_some())
                .map(|(e, a)| {
                    let mut row = entry_row(e);
                    row.push(a.as_ref().map_or("-".into(), |a| a.why.clone()));
                    row
                })
                .collect();
            println!();
            if shown.is_empty() {
                println!(
                    "every host of every app is up, active, healthy and on its app's usual release"
                );
            } else {
                let mut header = ENTRY_HEADER.to_vec();
                header.push("ATTENTION");
                output::table(&header, &shown);
            }
        }
    }
    Ok(())
}

pub async fn logs(conn: &Conn, args: LogsArgs) -> anyhow::Result<()> {
    let mut stream = conn
        .admin()
        .await?
        .logs(LogsRequest {
            app: args.app.into(),
            hosts: args.hosts,
            lines: args.lines,
            follow: args.follow,
        })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    while let Some(line) = stream.message().await.map_err(|s| conn.status(s))? {
        println!("{}: {}", line.host, line.line);
    }
    Ok(())
}
