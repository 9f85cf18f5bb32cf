//! Stopping, starting and removing an app on its hosts.
//!
//! The operator's intent is written to the store before any host is asked, so a host that
//! is down (or restarts its agent, or reboots) is brought to it when it connects again:
//! a stopped app is stopped again if it came up, a started one started, and a removal is
//! sent again until the host confirms it. Deploys, rollouts and convergence leave stopped
//! hosts alone.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::v1::command::Kind;
use fleet_proto::v1::command_result::Status as CmdStatus;
use fleet_proto::v1::{
    AppState, HostProgress, RemoveApp, RemoveAppRequest, SetAppRunningRequest, StartApp, StopApp,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::apps::{app_name, fan_out, hosts_summary, load_app, Progress, DEFAULT_HEALTHY_DEADLINE};
use crate::shared::{internal, Shared};
use crate::store::LifecycleRecord;
use crate::timefmt::now_secs;

/// Stopping waits for the app's graceful timeout on the host; this bounds the answer.
const STOP_TIMEOUT: Duration = Duration::from_secs(300);
const REMOVE_TIMEOUT: Duration = Duration::from_secs(300);

type ProgressStream = ReceiverStream<Result<HostProgress, Status>>;

/// No stop, start or removal while a rollout or a convergence owns the app's hosts.
fn refuse_if_busy(shared: &Shared, app: &str) -> Result<(), Status> {
    if shared.rollouts.active(app) {
        return Err(Status::failed_precondition(format!(
            "a rollout of {app} is running: wait for it, or `fleetctl rollout abort {app}`"
        )));
    }
    if let Some(host) = shared.convergence.busy(app) {
        return Err(Status::failed_precondition(format!(
            "{host} is converging to the desired release of {app}; retry when it is done"
        )));
    }
    Ok(())
}

/// The hosts `requested` names (each must be enrolled), or every host the app is on:
/// reporting it now, deployed to (desired), or stopped.
fn app_hosts(shared: &Shared, app: &str, requested: &[String]) -> Result<Vec<String>, Status> {
    if !requested.is_empty() {
        let mut unknown = Vec::new();
        for h in requested {
            if shared.store.host(h).map_err(internal)?.is_none() {
                unknown.push(h.as_str());
            }
        }
        if !unknown.is_empty() {
            return Err(Status::invalid_argument(format!(
                "unknown host(s): {}: see `fleetctl hosts`",
                unknown.join(", ")
            )));
        }
        let set: BTreeSet<String> = requested.iter().cloned().collect();
        return Ok(set.into_iter().collect());
    }
    let mut set: BTreeSet<String> = shared.app_states.hosts_running(app).into_iter().collect();
    set.extend(shared.store.desired_hosts(app).map_err(internal)?);
    set.extend(shared.store.stopped_hosts(app).map_err(internal)?);
    if set.is_empty() {
        return Err(Status::failed_precondition(format!(
            "{app} is on no host: deploy it first"
        )));
    }
    Ok(set.into_iter().collect())
}

/// Splits hosts into those with a live session and those without, telling the operator
/// that the down ones get the change when they connect.
async fn split_down(shared: &Shared, hosts: Vec<String>, what: &str, tx: &Progress) -> Vec<String> {
    let (up, down): (Vec<String>, Vec<String>) = hosts
        .into_iter()
        .partition(|h| shared.sessions.up(h).is_some());
    for host in down {
        let _ = tx
            .send(Ok(HostProgress {
                host,
                phase: "pending".into(),
                message: format!("host is down: {what} when it connects"),
                state: None,
            }))
            .await;
    }
    up
}

pub fn set_running(
    shared: Arc<Shared>,
    actor: String,
    req: SetAppRunningRequest,
) -> Result<ProgressStream, Status> {
    let app = app_name(&req.app)?;
    load_app(&shared, app.as_str())?;
    refuse_if_busy(&shared, app.as_str())?;
    let hosts = app_hosts(&shared, app.as_str(), &req.hosts)?;
    let rec = LifecycleRecord {
        by: actor.clone(),
        at: now_secs(),
    };
    // The intent first: a host that is down, or drops mid-call, is brought to it later.
    shared
        .store
        .set_stopped(app.as_str(), &hosts, (!req.running).then_some(&rec))
        .map_err(internal)?;
    let (kind, action, what) = if req.running {
        (
            Kind::StartApp(StartApp {
                app: app.to_string(),
                healthy_deadline_ms: DEFAULT_HEALTHY_DEADLINE.as_millis() as u64,
            }),
            "app.start",
            "it starts the app",
        )
    } else {
        (
            Kind::StopApp(StopApp {
                app: app.to_string(),
            }),
            "app.stop",
            "it stops the app",
        )
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let up = split_down(&shared, hosts.clone(), what, &tx).await;
        let pending = hosts.len() - up.len();
        let timeout = if req.running {
            DEFAULT_HEALTHY_DEADLINE + Duration::from_secs(30)
        } else {
            STOP_TIMEOUT
        };
        let counts = fan_out(shared.clone(), app.to_string(), up, kind, timeout, tx).await;
        let _ = shared.audit(
            &actor,
            action,
            app.as_str(),
            &format!("{}: {counts}, {pending} pending", hosts_summary(&hosts)),
        );
    });
    Ok(ReceiverStream::new(rx))
}

pub fn remove(
    shared: Arc<Shared>,
    actor: String,
    req: RemoveAppRequest,
) -> Result<ProgressStream, Status> {
    let app = app_name(&req.app)?;
    load_app(&shared, app.as_str())?;
    if !req.yes {
        return Err(Status::failed_precondition(format!(
            "removing {app} deletes it from every host and its spec, releases and secrets from \
             the controller, and cannot be undone: confirm with --yes"
        )));
    }
    refuse_if_busy(&shared, app.as_str())?;
    let live: BTreeSet<String> = shared
        .app_states
        .hosts_running(app.as_str())
        .into_iter()
        .collect();
    let rec = LifecycleRecord {
        by: actor.clone(),
        at: now_secs(),
    };
    let removed = shared
        .store
        .remove_app(app.as_str(), &live, &rec)
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("no app named {app}")))?;
    for r in &removed.releases {
        match shared.store.blob_in_use(&r.sha256) {
            Ok(false) => shared.blobs.remove(&r.sha256),
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(%app, sha256 = %r.sha256, error = %e, "cannot tell whether a release blob is still in use; kept")
            }
        }
    }
    let hosts: Vec<String> = removed.hosts.into_iter().collect();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let up = split_down(&shared, hosts.clone(), "it removes the app", &tx).await;
        let pending = hosts.len() - up.len();
        let kind = Kind::RemoveApp(RemoveApp {
            app: app.to_string(),
        });
        let counts = fan_out(
            shared.clone(),
            app.to_string(),
            up,
            kind,
            REMOVE_TIMEOUT,
            tx,
        )
        .await;
        for host in &counts.ok {
            removal_confirmed(&shared, host, app.as_str());
        }
        let _ = shared.audit(
            &actor,
            "app.remove",
            app.as_str(),
            &format!(
                "{} releases deleted; {}: {counts}, {pending} pending",
                removed.releases.len(),
                hosts_summary(&hosts)
            ),
        );
    });
    Ok(ReceiverStream::new(rx))
}

fn removal_confirmed(shared: &Shared, host: &str, app: &str) {
    shared.app_states.forget(host, app);
    if let Err(e) = shared.store.removal_done(host, app) {
        tracing::error!(%host, %app, error = %e, "cannot record the removal as done; it will be sent again");
    }
}

/// A new session: removals the host still owes are sent to it again.
pub fn deliver_removals(shared: &Arc<Shared>, host: &str) {
    let (shared, host) = (shared.clone(), host.to_owned());
    tokio::spawn(async move {
        let h = host.clone();
        match shared.off_workers(move |s| s.store.removals_on(&h)).await {
            Ok(Ok(apps)) => send_removals(&shared, &host, apps),
            Ok(Err(e)) => {
                tracing::error!(%host, error = %e, "cannot read the removals owed by this host")
            }
            Err(e) => tracing::error!(%host, error = %e, "reading the removals owed failed"),
        }
    });
}

fn send_removals(shared: &Arc<Shared>, host: &str, apps: Vec<String>) {
    for app in apps {
        let (shared, host) = (shared.clone(), host.to_owned());
        tokio::spawn(async move {
            let kind = Kind::RemoveApp(RemoveApp { app: app.clone() });
            let r = shared
                .commands
                .call(&shared.sessions, &host, kind, REMOVE_TIMEOUT)
                .await;
            match r {
                Ok(r) if r.status == CmdStatus::Ok as i32 => {
                    tracing::info!(%host, %app, "removed the app on reconnect");
                    removal_confirmed(&shared, &host, &app);
                    let _ = shared.audit(
                        "controller",
                        "app.remove",
                        &app,
                        &format!("host {host}: removed when it connected"),
                    );
                }
                Ok(r) => {
                    tracing::warn!(%host, %app, message = %r.message, "removal on reconnect failed; sent again next time")
                }
                Err(e) => {
                    tracing::warn!(%host, %app, error = %e, "removal on reconnect failed; sent again next time")
                }
            }
        });
    }
}

/// The first report of an app on a session: a host whose app runs while it should be
/// stopped (stopped while the host was down) is stopped, and the other way round.
pub fn reconcile(shared: &Arc<Shared>, host: &str, state: &AppState) {
    // A removed app (its removal still owed) is neither stopped nor started.
    match shared.store.app(&state.app) {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            tracing::error!(%host, app = %state.app, error = %e, "cannot read the app");
            return;
        }
    }
    let stopped = match shared.store.is_stopped(&state.app, host) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%host, app = %state.app, error = %e, "cannot read whether the app is stopped");
            return;
        }
    };
    if stopped == state.stopped {
        return;
    }
    let kind = if stopped {
        Kind::StopApp(StopApp {
            app: state.app.clone(),
        })
    } else {
        Kind::StartApp(StartApp {
            app: state.app.clone(),
            healthy_deadline_ms: DEFAULT_HEALTHY_DEADLINE.as_millis() as u64,
        })
    };
    let (shared, host, app) = (shared.clone(), host.to_owned(), state.app.clone());
    tokio::spawn(async move {
        let what = if stopped { "stopping" } else { "starting" };
        tracing::info!(%host, %app, "{what} the app as an operator asked while the host was away");
        let r = shared
            .commands
            .call(&shared.sessions, &host, kind, STOP_TIMEOUT)
            .await;
        match r {
            Ok(r) if r.status == CmdStatus::Ok as i32 => {}
            Ok(r) => {
                tracing::warn!(%host, %app, message = %r.message, "{what} on reconnect failed")
            }
            Err(e) => tracing::warn!(%host, %app, error = %e, "{what} on reconnect failed"),
        }
    });
}
