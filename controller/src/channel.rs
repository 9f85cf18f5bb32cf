//! The agent channel: one long-lived stream per agent. Tracks liveness through heartbeats,
//! renews certificates in-band, and ends the stream when the controller says so (host
//! removed, missed heartbeats, shutdown).

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::identity::Identity;
use fleet_proto::v1::agent_channel_server::AgentChannel;
use fleet_proto::v1::agent_message::Body as Up;
use fleet_proto::v1::controller_message::Body as Down;
use fleet_proto::v1::{
    AgentMessage, ControllerMessage, Hello, HostFacts, RenewRequest, RenewResponse, Welcome,
};
use std::time::Instant;

use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Caller, MAX_QUOTED};
use crate::pki::{parse_csr, PkiError};
use crate::ratelimit::clip;
use crate::sessions::CloseSignal;
use crate::sessions::MISSED_HEARTBEATS;
use crate::shared::{internal, Shared};
use crate::store::{HostRecord, IssuedSerial, RevokedRecord, StoreError};
use crate::timefmt::{now_ms, now_secs};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

pub struct ChannelService(pub Arc<Shared>);

use crate::sessions::Outbound;

fn down(body: Down) -> crate::sessions::Down {
    Ok(Box::new(ControllerMessage { body: Some(body) }))
}

type SessionStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ControllerMessage, Status>> + Send>>;

/// Heartbeat interval as announced by the agent, bounded so a bad value cannot make a host
/// look up forever or flap.
fn interval_of(hello: &Hello) -> Duration {
    match hello.heartbeat_interval_ms {
        0 => DEFAULT_HEARTBEAT,
        ms => Duration::from_millis(u64::from(ms))
            .clamp(Duration::from_millis(200), Duration::from_secs(300)),
    }
}

#[tonic::async_trait]
impl AgentChannel for ChannelService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let shared = self.0.clone();
        let caller = Caller::from_request(&request)?.clone();
        let identity = caller
            .identity
            .clone()
            .ok_or_else(|| Status::unauthenticated("agent identity required"))?;
        let name = identity
            .name()
            .map(|n| n.to_string())
            .ok_or_else(|| Status::permission_denied("agent identity without a host name"))?;
        let known = {
            let n = name.clone();
            shared
                .off_workers(move |s| s.store.host(&n))
                .await
                .map_err(|e| Status::internal(format!("session start failed: {e}")))?
                .map_err(internal)?
        };
        let Some(known) = known else {
            return Err(Status::permission_denied(format!(
                "host {name} is not enrolled (it was removed): re-enroll it with a new token"
            )));
        };
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                body: Some(Up::Hello(h)),
            }))) => h,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10 s")),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a session must be Hello",
                ))
            }
        };
        let address = caller.addr.map(|a| a.ip().to_string()).unwrap_or_default();
        let facts = hello.facts.clone().unwrap_or_default();
        // A reconnect wave brings back every agent within seconds; most report what the
        // store already holds, and those cost no write (see lastseen for the time).
        let mut superseded = Vec::new();
        let mut preview = known.clone();
        let changed = record_hello(&mut preview, &address, &facts);
        if changed || supersedes(&known.serials, caller.serial.as_deref()) {
            let (s, host, serial) = (shared.clone(), name.clone(), caller.serial.clone());
            let (address, facts) = (address.clone(), facts.clone());
            superseded = tokio::task::spawn_blocking(move || {
                s.store.update_host(&host, |h| {
                    record_hello(h, &address, &facts);
                    take_superseded(&mut h.serials, serial.as_deref())
                })
            })
            .await
            .map_err(|e| Status::internal(format!("session start failed: {e}")))?
            .map_err(internal)?
            .unwrap_or_default();
        }
        shared.last_seen.touch(&name, now_ms());
        revoke_superseded(&shared, &identity, &name, superseded).map_err(internal)?;

        let interval = interval_of(&hello);
        let (tx, rx) = mpsc::channel(64);
        let (id, close) = shared
            .sessions
            .register(&name, address.clone(), interval, tx.clone());
        if let Some(via) = &caller.via {
            shared.sessions.set_via(&name, id, via.clone());
        }
        tracing::info!(host = %name, %address, version = ?clip(&facts.agent_version, MAX_QUOTED), ?interval, via = caller.via.as_deref().unwrap_or("-"), "host up");
        shared
            .events
            .publish("host.up", &name, "", format!("from {address}"));
        let _ = tx
            .send(down(Down::Welcome(Welcome {
                controller_version: env!("CARGO_PKG_VERSION").into(),
                server_time: now_secs(),
                // Every enrolled host comes back after a crash, not only those up now.
                reconnect_spread_ms: crate::sessions::return_spread(shared.host_count.get(
                    "the number of hosts",
                    || shared.store.host_count(),
                    || shared.sessions.count(),
                ))
                .as_millis() as u64,
                controllers: crate::controllers::for_welcome(&shared),
            })))
            .await;
        tokio::spawn(crate::firewall::catch_up(shared.clone(), name.clone(), id));
        crate::converge::session_started(&shared, &name, id);
        crate::lifecycle::deliver_removals(&shared, &name);
        tokio::spawn(drive(
            shared, identity, name, id, interval, inbound, tx, close,
        ));
        use tokio_stream::StreamExt;
        let stream = ReceiverStream::new(rx).map(|m| m.map(|b| *b));
        Ok(Response::new(Box::pin(stream) as SessionStream))
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    shared: Arc<Shared>,
    identity: Identity,
    name: String,
    id: u64,
    interval: Duration,
    mut inbound: Streaming<AgentMessage>,
    tx: Outbound,
    mut close: CloseSignal,
) {
    // Per session, so one agent certificate cannot have the controller open blobs
    // without bound.
    let fetches = Arc::new(Semaphore::new(shared.settings.max_fetches_per_session));
    // This session's own timer ends it: no sweep over every session.
    let grace = crate::sessions::grace(interval);
    let silence = tokio::time::sleep(grace);
    tokio::pin!(silence);
    let reason = loop {
        tokio::select! {
            reason = &mut close => {
                let reason = reason.unwrap_or_else(|_| SHUTTING_DOWN.into());
                let mut status = Status::unavailable(reason.clone());
                if reason == SHUTTING_DOWN {
                    let ms = shared.sessions.return_spread().as_millis().to_string();
                    if let Ok(v) = ms.parse() {
                        status.metadata_mut().insert(fleet_proto::RETRY_AFTER_MS, v);
                    }
                }
                let _ = tx.send(Err(status)).await;
                break reason;
            }
            () = &mut silence => {
                tracing::warn!(host = %name, "host missed {MISSED_HEARTBEATS} heartbeats: marking it down");
                let reason = format!("no heartbeat for {MISSED_HEARTBEATS} intervals");
                let _ = tx.send(Err(Status::unavailable(reason.clone()))).await;
                break reason;
            }
            msg = inbound.message() => match msg {
                Ok(Some(AgentMessage { body: Some(body) })) => {
                    if matches!(body, Up::Heartbeat(_)) {
                        silence.as_mut().reset(tokio::time::Instant::now() + grace);
                    }
                    handle(&shared, &identity, &name, id, body, &tx, &fetches).await
                }
                // A newer agent's message kind we do not know: ignore, never fail the stream.
                Ok(Some(AgentMessage { body: None })) => {}
                Ok(None) => break "agent closed the stream".into(),
                Err(e) => break format!("stream error: {}", e.message()),
            }
        }
    };
    if shared.sessions.end(&name, id) {
        shared.commands.host_gone(&name);
    }
    // What the host reported is only known while it is connected; a newer session of the
    // same host keeps (and re-sends) its own.
    if shared
        .sessions
        .session_id(&name)
        .is_none_or(|current| current == id)
    {
        shared.app_states.forget_host(&name);
    }
    shared.last_seen.touch(&name, now_ms());
    // A shutdown ends every session at once: one summary line, not one per host.
    if reason == SHUTTING_DOWN {
        tracing::debug!(host = %name, reason, "host down");
    } else {
        tracing::info!(host = %name, reason, "host down");
        shared.events.publish("host.down", &name, "", reason);
    }
}

/// An app report that differs from the last one, as the event an operator watches for:
/// the worst change it holds (a crash before a health flip before a new release).
fn app_event(
    shared: &Shared,
    host: &str,
    prev: &fleet_proto::v1::AppState,
    now: &fleet_proto::v1::AppState,
) {
    let app = now.app.as_str();
    let (kind, message) = if now.crash_loop && !prev.crash_loop {
        (
            "app.crash",
            format!("crash loop ({} restarts)", now.restarts),
        )
    } else if now.restarts > prev.restarts {
        (
            "app.crash",
            format!(
                "restarted by systemd ({} → {} restarts), {}",
                prev.restarts,
                now.restarts,
                clip(&now.result, MAX_QUOTED)
            ),
        )
    } else if now.healthy != prev.healthy {
        if now.healthy {
            ("app.health", "healthy".to_owned())
        } else {
            (
                "app.health",
                format!("unhealthy: {}", clip(&now.health_detail, MAX_EVENT_TEXT)),
            )
        }
    } else if now.release != prev.release {
        (
            "app.release",
            format!(
                "{} → {}",
                clip(&prev.release, MAX_QUOTED),
                clip(&now.release, MAX_QUOTED)
            ),
        )
    } else {
        (
            "app.state",
            format!(
                "{} ({}), pid {}",
                clip(&now.active_state, MAX_QUOTED),
                clip(&now.sub_state, MAX_QUOTED),
                now.main_pid
            ),
        )
    };
    shared.events.publish(kind, host, app, message);
}

/// The reason every session ends with when the controller stops.
pub const SHUTTING_DOWN: &str = "controller shutting down";

/// Copies what a Hello reports into the host's record; true if anything changed.
fn record_hello(h: &mut HostRecord, address: &str, facts: &HostFacts) -> bool {
    let before = h.clone();
    h.address = address.to_owned();
    h.version = facts.agent_version.clone();
    h.hostname = facts.hostname.clone();
    h.os = facts.os.clone();
    h.kernel = facts.kernel.clone();
    h.cores = facts.cores;
    h.memory_bytes = facts.memory_bytes;
    h.metrics_port = facts.metrics_port;
    h.package_version = facts.package_version.clone();
    *h != before
}

async fn handle(
    shared: &Arc<Shared>,
    identity: &Identity,
    name: &str,
    id: u64,
    body: Up,
    tx: &Outbound,
    fetches: &Arc<Semaphore>,
) {
    match body {
        Up::Heartbeat(_) => shared.sessions.heartbeat(name, id),
        Up::Renew(req) => {
            // Signing and a durable write (a sync on redb, round trips on PostgreSQL):
            // off the async workers.
            let (id, n, r) = (identity.clone(), name.to_owned(), req.clone());
            let resp = match shared.off_workers(move |s| renew(s, &id, &n, &r)).await {
                Ok(r) => r,
                Err(e) => Err(RenewError::Failed(format!("renewal task failed: {e}"))),
            };
            if let Err(e) = &resp {
                tracing::warn!(host = %name, error = %e, "certificate renewal refused");
            }
            let resp = resp.unwrap_or_else(|e| RenewResponse {
                request_id: req.request_id.clone(),
                error: e.to_string(),
                ..Default::default()
            });
            let _ = tx.send(down(Down::Renewed(resp))).await;
        }
        // Debug-formatted: the agent's text is quoted and escaped, so a newline in it
        // cannot forge a log line.
        Up::Event(ev) => tracing::info!(
            host = %name,
            kind = ?clip(&ev.kind, MAX_QUOTED),
            subject = ?clip(&ev.subject, MAX_QUOTED),
            message = ?clip(&ev.message, MAX_EVENT_TEXT),
            "agent event"
        ),
        Up::Result(r) => shared.commands.resolve(name, r),
        Up::Fetch(req) => match fetches.clone().try_acquire_owned() {
            Ok(permit) => {
                // Debug: a deploy makes every host fetch, and one line per host per deploy
                // is 50,000 lines that say nothing the deploy's progress does not.
                tracing::debug!(host = %name, sha256 = ?clip(&req.sha256, MAX_QUOTED), offset = req.offset, "serving release");
                tokio::spawn(crate::releases::serve_fetch(
                    shared.clone(),
                    req,
                    tx.clone(),
                    permit,
                ));
            }
            Err(_) => {
                if let Some(suppressed) = shared.agent_noise_log.admit(Instant::now()) {
                    tracing::warn!(host = %name, suppressed, "release fetch refused: max_fetches_per_session reached");
                }
                crate::releases::refuse_fetch(
                    &req,
                    tx,
                    &format!(
                        "{} release downloads already running on this session (max_fetches_per_session): retry when one ends",
                        shared.settings.max_fetches_per_session
                    ),
                )
                .await;
            }
        },
        Up::AppState(state) => {
            // A host's first report of an app, and each session's first, read the store
            // (is the app known, should the host catch up): off the async workers then,
            // as a round trip to PostgreSQL would stall every session on this worker.
            // Awaited, so this session's reports stay in order.
            let recorded = if crate::converge::would_check(shared, name, id, &state.app)
                || !shared.app_states.knows(name, &state.app)
            {
                let (n, st) = (name.to_owned(), state.clone());
                shared
                    .off_workers(move |s| crate::app_reports::record(s, &n, id, st))
                    .await
                    .unwrap_or(None)
            } else {
                crate::app_reports::record(shared, name, id, state.clone())
            };
            let Some(prev) = recorded else {
                if let Some(suppressed) = shared.agent_noise_log.admit(Instant::now()) {
                    tracing::warn!(host = %name, app = ?clip(&state.app, MAX_QUOTED), suppressed, "ignoring the state of an app the controller does not know");
                }
                return;
            };
            // The first report of a session repeats what the host ran before the
            // reconnect: logged only at debug, so a reconnect wave is not N lines per app.
            let changed = prev.as_ref().map(|p| {
                (
                    p.release.as_str(),
                    p.active_state.as_str(),
                    p.healthy,
                    p.restarts,
                    p.main_pid,
                    p.crash_loop,
                ) != (
                    state.release.as_str(),
                    state.active_state.as_str(),
                    state.healthy,
                    state.restarts,
                    state.main_pid,
                    state.crash_loop,
                )
            });
            macro_rules! app_state {
                ($level:ident) => {
                    tracing::$level!(
                        host = %name,
                        app = %state.app,
                        release = ?clip(&state.release, MAX_QUOTED),
                        active = ?clip(&state.active_state, MAX_QUOTED),
                        healthy = state.healthy,
                        restarts = state.restarts,
                        main_pid = state.main_pid,
                        crash_loop = state.crash_loop,
                        "app state"
                    )
                };
            }
            if let (Some(true), Some(prev)) = (changed, &prev) {
                app_event(shared, name, prev, &state);
            }
            match changed {
                Some(true) => app_state!(info),
                None => app_state!(debug),
                Some(false) => {}
            }
        }
        Up::LogLine(mut line) => {
            line.host = name.to_owned();
            shared.commands.deliver_line(name, line);
        }
        Up::ExecOutput(out) => shared.commands.deliver_exec_output(name, out),
        Up::Firewall(state) => {
            if shared.firewall_states.update(name, state.clone()) {
                tracing::info!(host = %name, state = ?clip(&state.state, MAX_QUOTED), detail = ?clip(&state.detail, MAX_EVENT_TEXT), "firewall state");
                shared.events.publish(
                    "firewall",
                    name,
                    "",
                    format!(
                        "{}: {}",
                        clip(&state.state, MAX_QUOTED),
                        clip(&state.detail, MAX_EVENT_TEXT)
                    ),
                );
            }
        }
        Up::Hello(_) => tracing::warn!(host = %name, "ignoring a second Hello on one session"),
    }
}

/// Longest agent-supplied event text logged.
const MAX_EVENT_TEXT: usize = 4096;

/// Why a renewal was refused; the text goes back to the agent, which logs it.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("host was removed")]
    Removed,
    #[error("{0}")]
    Failed(String),
}

/// The serials issued to a host before `current`, the one its session authenticated with,
/// taken out of `serials` (kept in issue order). A session on a renewed certificate proves
/// the agent saved it, so the older ones have no use left but to a thief.
fn take_superseded(serials: &mut Vec<IssuedSerial>, current: Option<&str>) -> Vec<IssuedSerial> {
    match current.and_then(|c| serials.iter().position(|s| s.serial == c)) {
        Some(at) => serials.drain(..at).collect(),
        None => Vec::new(),
    }
}

/// Whether `take_superseded` would take anything: the session's certificate is not the
/// oldest one on record.
fn supersedes(serials: &[IssuedSerial], current: Option<&str>) -> bool {
    current.is_some_and(|c| {
        serials
            .iter()
            .position(|s| s.serial == c)
            .is_some_and(|at| at > 0)
    })
}

/// Revokes what `take_superseded` took: stored first, then in force. Nothing happens (and
/// nothing is written) on the common session start, where there is nothing to revoke.
fn revoke_superseded(
    shared: &Shared,
    identity: &Identity,
    name: &str,
    superseded: Vec<IssuedSerial>,
) -> Result<(), StoreError> {
    let now = now_secs();
    for old in superseded {
        if old.not_after < now {
            continue;
        }
        shared.store.revoke(&RevokedRecord {
            serial: old.serial.clone(),
            identity: identity.uri(),
            revoked_at: now,
            not_after: old.not_after,
        })?;
        shared.revocations.insert(old.serial.clone());
        tracing::info!(host = %name, serial = %old.serial, "previous certificate revoked: the host connected with its renewed one");
    }
    Ok(())
}

/// Issues a new certificate for the stream's own identity; the CSR only supplies the key.
fn renew(
    shared: &Shared,
    identity: &Identity,
    name: &str,
    req: &RenewRequest,
) -> Result<RenewResponse, RenewError> {
    let csr = parse_csr(&req.csr_pem)?;
    let issued = shared
        .ca
        .issue_client(&csr, identity, shared.settings.agent_cert_lifetime)?;
    let now = now_secs();
    let recorded = shared.store.update_host(name, |h| {
        h.serials.retain(|s| s.not_after >= now);
        h.serials.push(IssuedSerial {
            serial: issued.serial.clone(),
            not_after: issued.not_after,
        });
        h.cert_expires = issued.not_after;
    })?;
    if recorded.is_none() {
        return Err(RenewError::Removed);
    }
    tracing::info!(host = %name, serial = %issued.serial, not_after = issued.not_after, "certificate renewed");
    Ok(RenewResponse {
        request_id: req.request_id.clone(),
        cert_pem: issued.cert_pem,
        ca_pem: shared.ca.cert_pem().to_owned(),
        not_after: issued.not_after,
        error: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(serials: &[&str]) -> Vec<IssuedSerial> {
        serials
            .iter()
            .map(|s| IssuedSerial {
                serial: (*s).into(),
                not_after: 0,
            })
            .collect()
    }

    #[test]
    fn a_session_supersedes_only_what_was_issued_before_its_certificate() {
        let mut s = issued(&["a", "b", "c"]);
        let gone: Vec<_> = take_superseded(&mut s, Some("b"))
            .into_iter()
            .map(|s| s.serial)
            .collect();
        assert_eq!(gone, ["a"]);
        // The newer one stays: the agent may not have saved it yet.
        assert_eq!(s.len(), 2);
        assert!(take_superseded(&mut s, Some("b")).is_empty());
        assert!(take_superseded(&mut s, Some("zz")).is_empty());
        assert!(take_superseded(&mut s, None).is_empty());
        assert_eq!(s.len(), 2);
    }
}
