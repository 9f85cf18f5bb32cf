//! Apps, releases and secrets on the controller, and the operations that run them on
//! hosts: deploy, restart/reload, status and logs. Secret values leave the controller
//! only inside Activate commands to the hosts that run the app.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::spec::{AppName, AppSpec, PromGate, Version};
use fleet_proto::v1::command::Kind;
use fleet_proto::v1::command_result::Status as CmdStatus;
use fleet_proto::v1::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::commands::CommandError;
use crate::desired::{self, targets, wanted_secrets};
use crate::prometheus;
use crate::shared::{internal, Shared};
use crate::store::AppRecord;
use crate::timefmt::now_secs;

pub use crate::app_states::AppStates;

pub const DEFAULT_HEALTHY_DEADLINE: Duration = Duration::from_secs(60);
/// Allowance on top of the health deadline for fetching, unpacking and building a venv.
const STAGING_ALLOWANCE: Duration = Duration::from_secs(600);

pub(crate) fn app_name(s: &str) -> Result<AppName, Status> {
    s.parse()
        .map_err(|e: fleet_proto::spec::SpecError| Status::invalid_argument(e.to_string()))
}

pub(crate) fn load_app(shared: &Shared, name: &str) -> Result<(AppRecord, AppSpec), Status> {
    let rec = shared.store.app(name).map_err(internal)?.ok_or_else(|| {
        Status::not_found(format!(
            "no app named {name}: create it with `fleetctl app apply FILE.toml`"
        ))
    })?;
    let spec = AppSpec::parse(&rec.spec_toml)
        .map_err(|e| Status::internal(format!("stored spec of {name} no longer validates: {e}")))?;
    Ok((rec, spec))
}

pub async fn apply(
    shared: &Shared,
    actor: &str,
    spec_toml: &str,
) -> Result<ApplyAppResponse, Status> {
    let spec = AppSpec::parse(spec_toml)
        .map_err(|e| Status::invalid_argument(format!("app spec: {e}")))?;
    let name = spec.name.to_string();
    let old = shared.store.app(&name).map_err(internal)?;
    let old_gates = old
        .as_ref()
        .and_then(|o| AppSpec::parse(&o.spec_toml).ok())
        .map(|o| o.gates)
        .unwrap_or_default();
    check_new_gates(&spec, &old_gates).await?;
    if old.is_none() {
        // A host that was down when the old app of this name was removed would remove
        // the new one when it connects.
        let owed = shared.store.pending_removals(&name).map_err(internal)?;
        if !owed.is_empty() {
            return Err(Status::failed_precondition(format!(
                "an earlier {name} was removed and these hosts have not confirmed its removal yet: {}; bring them back up (or `fleetctl host remove` them) first",
                owed.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let changed = old.as_ref().is_none_or(|o| o.spec_toml != spec_toml);
    if changed {
        shared
            .store
            .put_app(&AppRecord {
                name: name.clone(),
                spec_toml: spec_toml.to_owned(),
                updated_at: now_secs(),
            })
            .map_err(internal)?;
        shared
            .audit(
                actor,
                if old.is_some() {
                    "app.update"
                } else {
                    "app.create"
                },
                &name,
                "",
            )
            .map_err(internal)?;
    }
    Ok(ApplyAppResponse {
        app: name,
        created: old.is_none(),
        changed,
    })
}

/// Asks each gate's Prometheus whether it takes the query, before the spec is stored: a
/// query it cannot parse would otherwise only show at the next rollout, as a canary that
/// can never be judged. Gates unchanged from the stored spec are not asked again, so an
/// unrelated change does not depend on Prometheus being up.
async fn check_new_gates(spec: &AppSpec, old: &[PromGate]) -> Result<(), Status> {
    let window = spec.analysis.map(|a| a.window).unwrap_or_default();
    let mut asks = tokio::task::JoinSet::new();
    for (i, g) in spec.gates.iter().enumerate() {
        if old.contains(g) {
            continue;
        }
        // Any well-formed version does: the query is only parsed and run, not judged.
        let q = g.render(spec.name.as_str(), "apply-check", window);
        let g = g.clone();
        asks.spawn(async move {
            (
                i,
                g.name.clone(),
                prometheus::query(&g.prometheus, &q).await,
            )
        });
    }
    let mut failed = Vec::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok((i, name, Err(e))) = joined {
            failed.push((i, name, e));
        }
    }
    failed.sort_by_key(|(i, _, _)| *i);
    let Some((i, name, e)) = failed.into_iter().next() else {
        return Ok(());
    };
    let field = format!("app spec: rollout.analysis.query[{}] ({name})", i + 1);
    if e.is_bad_query() {
        Err(Status::invalid_argument(format!("{field}: {e}")))
    } else {
        Err(Status::failed_precondition(format!(
            "{field}: {e}; a query is checked against its Prometheus when the spec is applied: start it or fix the URL, then apply again"
        )))
    }
}

pub fn list(shared: &Shared) -> Result<ListAppsResponse, Status> {
    let mut apps = Vec::new();
    for rec in shared.store.apps().map_err(internal)? {
        let releases = shared.store.releases(&rec.name).map_err(internal)?;
        let server = AppSpec::parse(&rec.spec_toml)
            .map(|s| s.server.as_str().to_owned())
            .unwrap_or_default();
        apps.push(AppSummary {
            server,
            releases: releases.len() as u32,
            latest_release: releases
                .last()
                .map(|r| r.version.clone())
                .unwrap_or_default(),
            hosts: shared.app_states.hosts_running(&rec.name).len() as u32,
            app: rec.name,
        });
    }
    apps.sort_by(|a, b| a.app.cmp(&b.app));
    Ok(ListAppsResponse { apps })
}

pub fn get(shared: &Shared, name: &str) -> Result<AppInfo, Status> {
    let (rec, spec) = load_app(shared, name)?;
    let set = shared.store.secrets(name).map_err(internal)?;
    Ok(AppInfo {
        app: rec.name,
        spec_toml: rec.spec_toml,
        releases: shared
            .store
            .releases(name)
            .map_err(internal)?
            .into_iter()
            .map(|r| ReleaseInfo {
                version: r.version,
                sha256: r.sha256,
                size: r.size,
                uploaded_at: r.uploaded_at,
            })
            .collect(),
        secrets_set: set.keys().cloned().collect(),
        secrets_missing: spec
            .secrets
            .iter()
            .filter(|s| !set.contains_key(*s))
            .cloned()
            .collect(),
    })
}

pub(crate) type Progress = mpsc::Sender<Result<HostProgress, Status>>;

pub(crate) fn describe(err: CommandError) -> String {
    match err {
        CommandError::HostDown => "host is down: nothing was changed on it".into(),
        e => e.to_string(),
    }
}

/// Sends at once during a fan-out: a send waits while its host's stream is full, so this
/// bounds how many stuck hosts can hold back the rest. Answers are awaited without a
/// slot (a pending answer is a table entry and a sleeping task).
const FAN_OUT_IN_FLIGHT: usize = 4096;

/// Runs `kind` on every host at once (up to `FAN_OUT_IN_FLIGHT` sends at once), streaming a
/// line per host as it starts and ends. The command goes out before the progress line:
/// a slow reader of the progress stream must not hold back the hosts.
pub(crate) async fn fan_out(
    shared: Arc<Shared>,
    app: String,
    hosts: Vec<String>,
    kind: Kind,
    timeout: Duration,
    tx: Progress,
) -> FanOut {
    let slots = Arc::new(tokio::sync::Semaphore::new(FAN_OUT_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for host in hosts {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (shared, tx, kind, app) = (shared.clone(), tx.clone(), kind.clone(), app.clone());
        tasks.spawn(async move {
            let call = shared.commands.start(&shared.sessions, &host, kind).await;
            // Only the send holds a slot: held through the answer, a fan-out to more
            // hosts than slots went in waves of round trips (and downloads).
            drop(permit);
            let _ = tx
                .send(Ok(HostProgress {
                    host: host.clone(),
                    phase: "activating".into(),
                    ..Default::default()
                }))
                .await;
            let outcome = match call {
                Ok(pending) => pending.wait(&shared.commands, timeout).await,
                Err(e) => Err(e),
            };
            let state = shared.app_states.get(&host, &app);
            let (ok, message) = match outcome {
                Ok(r) if r.status == CmdStatus::Ok as i32 => (true, r.message),
                Ok(r) if r.status == CmdStatus::Unsupported as i32 => (
                    false,
                    format!(
                        "the agent on this host is too old for this command: {}",
                        r.message
                    ),
                ),
                Ok(r) => (false, r.message),
                Err(e) => (false, describe(e)),
            };
            let _ = tx
                .send(Ok(HostProgress {
                    host: host.clone(),
                    phase: if ok { "done" } else { "failed" }.into(),
                    message,
                    state,
                }))
                .await;
            (host, ok)
        });
    }
    let mut out = FanOut::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((host, true)) => out.ok.push(host),
            _ => out.failed += 1,
        }
    }
    out
}

/// How a fan-out went: the hosts it succeeded on, and how many it did not.
#[derive(Default)]
pub(crate) struct FanOut {
    pub ok: Vec<String>,
    pub failed: usize,
}

impl std::fmt::Display for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ok, {} failed", self.ok.len(), self.failed)
    }
}

/// The hosts an audit entry names: all of them when few, else a count and the first ones
/// (an entry per deploy must not grow with the fleet).
pub(crate) fn hosts_summary(hosts: &[String]) -> String {
    const NAMED: usize = 20;
    if hosts.len() <= NAMED {
        return format!("hosts {}", hosts.join(","));
    }
    format!("{} hosts ({},…)", hosts.len(), hosts[..NAMED].join(","))
}

pub fn deploy(
    shared: Arc<Shared>,
    actor: String,
    req: DeployRequest,
) -> Result<ReceiverStream<Result<HostProgress, Status>>, Status> {
    let app = app_name(&req.app)?;
    let (rec, spec) = load_app(&shared, app.as_str())?;
    let version: Version = req
        .version
        .parse()
        .map_err(|e: fleet_proto::spec::SpecError| Status::invalid_argument(e.to_string()))?;
    let release = shared
        .store
        .release(app.as_str(), version.as_str())
        .map_err(internal)?
        .ok_or_else(|| {
            Status::not_found(format!("{app} has no release {version}: upload it with `fleetctl release upload {app} FILE.tar.gz --version {version}`"))
        })?;
    let wanted = wanted_secrets(&shared, app.as_str(), &spec)?;
    let (hosts, cordoned) = desired::targets_and_cordoned(&shared, &req.hosts)?;
    let (hosts, stopped) = desired::without_stopped(&shared, app.as_str(), hosts)?;
    let deadline = match req.healthy_deadline_ms {
        0 => DEFAULT_HEALTHY_DEADLINE,
        ms => Duration::from_millis(ms),
    };
    let kind = desired::activate(
        &rec.spec_toml,
        &desired::Release::of(&release),
        wanted,
        desired::Gate {
            min_healthy_ms: 0,
            healthy_deadline_ms: deadline.as_millis() as u64,
        },
    );
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        // Counted as neither: a cordoned host is left as it is, and said so.
        for (host, reason) in cordoned {
            let message = match reason.as_str() {
                "" => "cordoned: left as it is".to_owned(),
                r => format!("cordoned ({r}): left as it is"),
            };
            let _ = tx
                .send(Ok(HostProgress {
                    host,
                    phase: "skipped".into(),
                    message,
                    state: None,
                }))
                .await;
        }
        for host in stopped {
            let _ = tx
                .send(Ok(HostProgress {
                    host,
                    phase: "skipped".into(),
                    message: format!(
                        "{app} is stopped here: left as it is (`fleetctl app start {app}`)"
                    ),
                    state: None,
                }))
                .await;
        }
        let counts = fan_out(
            shared.clone(),
            app.to_string(),
            hosts.clone(),
            kind,
            deadline + STAGING_ALLOWANCE,
            tx,
        )
        .await;
        let landed: Vec<(String, bool)> = hosts
            .iter()
            .map(|host| {
                let now = shared.app_states.get(host, app.as_str()).map(|s| s.release);
                (host.clone(), now.as_deref() == Some(version.as_str()))
            })
            .collect();
        let s = shared.clone();
        let (a, v) = (app.to_string(), version.to_string());
        let _ =
            tokio::task::spawn_blocking(move || crate::converge::after_deploy(&s, &a, &landed, &v))
                .await;
        let _ = shared.audit(
            &actor,
            "app.deploy",
            &format!("{app}@{version}"),
            &format!("{}: {counts}", hosts_summary(&hosts)),
        );
    });
    Ok(ReceiverStream::new(rx))
}

pub fn restart(
    shared: Arc<Shared>,
    actor: String,
    req: RestartAppRequest,
) -> Result<ReceiverStream<Result<HostProgress, Status>>, Status> {
    let app = app_name(&req.app)?;
    load_app(&shared, app.as_str())?;
    let hosts = if req.hosts.is_empty() {
        let running = shared.app_states.hosts_running(app.as_str());
        if running.is_empty() {
            return Err(Status::failed_precondition(format!(
                "{app} runs on no host: deploy it first"
            )));
        }
        running
    } else {
        targets(&shared, &req.hosts)?
    };
    let kind = Kind::Restart(Restart {
        app: app.to_string(),
        reload: req.reload,
        healthy_deadline_ms: DEFAULT_HEALTHY_DEADLINE.as_millis() as u64,
    });
    let (tx, rx) = mpsc::channel(64);
    let action = if req.reload {
        "app.reload"
    } else {
        "app.restart"
    };
    tokio::spawn(async move {
        let counts = fan_out(
            shared.clone(),
            app.to_string(),
            hosts.clone(),
            kind,
            DEFAULT_HEALTHY_DEADLINE + Duration::from_secs(30),
            tx,
        )
        .await;
        let _ = shared.audit(
            &actor,
            action,
            app.as_str(),
            &format!("{}: {counts}", hosts_summary(&hosts)),
        );
    });
    Ok(ReceiverStream::new(rx))
}

pub fn status(shared: &Shared, req: StatusRequest) -> Result<StatusResponse, Status> {
    let app = req.app.as_str();
    if !app.is_empty() {
        load_app(shared, app)?;
    }
    // The token is "app/host" of the last entry sent: neither name can hold a '/'.
    let after = match req.page_token.split_once('/') {
        None if req.page_token.is_empty() => None,
        None => return Err(crate::paging::bad_token("Status")),
        Some((a, h)) => Some((a.to_owned(), h.to_owned())),
    };
    let limit = crate::paging::limit(req.limit);
    let (rows, more) = shared.app_states.page(app, after, limit);
    let rows = rows.into_iter().map(|(host, state)| HostAppStatus {
        host_state: if shared.sessions.up(&host).is_some() {
            "up"
        } else {
            "down"
        }
        .into(),
        host,
        state: Some(state),
    });
    let (entries, cut) = crate::paging::fill(rows, limit);
    let next_page_token = match (more || cut, entries.last()) {
        (true, Some(last)) => format!(
            "{}/{}",
            last.state.as_ref().map(|s| s.app.as_str()).unwrap_or(""),
            last.host
        ),
        _ => String::new(),
    };
    Ok(StatusResponse {
        entries,
        next_page_token,
    })
}

pub async fn logs(
    shared: Arc<Shared>,
    req: LogsRequest,
) -> Result<ReceiverStream<Result<LogLine, Status>>, Status> {
    let app = app_name(&req.app)?;
    load_app(&shared, app.as_str())?;
    let hosts = if req.hosts.is_empty() {
        shared.app_states.hosts_running(app.as_str())
    } else {
        targets(&shared, &req.hosts)?
    };
    let (lines_tx, mut lines_rx) = mpsc::channel::<LogLine>(1024);
    let mut tails = Vec::new();
    for host in &hosts {
        let kind = Kind::TailLogs(TailLogs {
            app: app.to_string(),
            lines: req.lines.clamp(1, 10_000),
            follow: req.follow,
        });
        match shared
            .commands
            .tail(&shared.sessions, host, kind, lines_tx.clone())
            .await
        {
            Ok(id) => tails.push((host.clone(), id)),
            Err(e) => {
                let _ = lines_tx.try_send(LogLine {
                    host: host.clone(),
                    line: format!("[fleet] no logs from this host: {}", describe(e)),
                    ..Default::default()
                });
            }
        }
    }
    // Only the tails hold senders now: the stream ends when every host is done.
    drop(lines_tx);
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(line) = lines_rx.recv().await {
            if tx.send(Ok(line)).await.is_err() {
                break;
            }
        }
        // The client went away (or all tails ended): stop following on the hosts.
        for (host, id) in tails {
            shared.commands.end_tail(&id);
            if req.follow {
                shared
                    .commands
                    .send_only(
                        &shared.sessions,
                        &host,
                        Kind::StopLogs(StopLogs { tail_id: id }),
                    )
                    .await;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
