//! One long-lived stream to the controller, held forever (`daemon::run` builds what it
//! needs and calls `Agent::supervise`).
//!
//! Each attempt reloads the credentials from disk (so `join --force` and renewals take
//! effect without a restart), connects over mTLS, opens `AgentChannel.Session`, sends
//! `Hello` first and a `Heartbeat` every interval, answers every `Command` with exactly one
//! `CommandResult`, and renews the certificate over the same stream at 2/3 of its lifetime.
//! When the stream ends, the agent waits a jittered, growing delay and starts over; it
//! never exits on its own, because under systemd `Restart=always` an exit would only turn
//! into a tighter loop.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::time::Duration;

use fleet_proto::identity::Identity;
use fleet_proto::peer::CaPin;
use fleet_proto::transport::{
    alert_reason, certs_from_pem, classify, connect, identity_client_config, ConnectError, Failure,
};
use fleet_proto::v1::agent_channel_client::AgentChannelClient;
use fleet_proto::v1::{
    agent_message, command, command_result, controller_message, AgentMessage, Command,
    CommandResult, ControllerMessage, Heartbeat, Hello, RenewRequest, RenewResponse, Welcome,
};
use rcgen::KeyPair;
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::apps::{self, Apps};
use crate::backoff::{self, Backoff};
use crate::clock::now_unix;
use crate::config::Settings;
use crate::fetch::Fetcher;
use crate::firewall::{self, Firewall};
use crate::logging::error_chain;
use crate::metrics::Connected;
use crate::renew::{check_issued, csr_pem};
use crate::state::{Credentials, StateDir, StateError};
use crate::{facts, notify};
use fleet_proto::renewal::{renew_delay, retry_delay};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on opening the stream (response headers), so a hung controller cannot park us.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// A controller that accepted the stream but never says Welcome is treated as broken.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages queued towards the controller; heartbeats are dropped, not queued, beyond it.
const OUTBOX: usize = 64;
/// Warn when the controller's clock differs from ours by more than this.
const MAX_SKEW_SECS: i64 = 30;
/// What this agent understands beyond the base protocol (see `Hello.capabilities`).
pub const CAPABILITIES: &[&str] = &["renew"];

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("{0}")]
    State(#[from] StateError),
    #[error("cannot use the local certificate or key: {0}")]
    Tls(String),
    #[error("controller unreachable at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("certificate refused by controller: {reason}")]
    Refused { reason: String },
    #[error("controller's certificate not accepted: {0}")]
    Untrusted(String),
    #[error("stream to the controller failed: {0}")]
    Failed(String),
    #[error("controller closed the stream")]
    Closed,
    #[error("controller did not open the stream within {}s", OPEN_TIMEOUT.as_secs())]
    OpenTimeout,
    #[error("controller did not send Welcome within {}s", WELCOME_TIMEOUT.as_secs())]
    NoWelcome,
    #[error("an unconfirmed firewall change was reverted; starting a fresh session")]
    FirewallReverted,
}

impl SessionEnd {
    /// Failures that retrying sooner cannot fix: they need an operator, so they are
    /// logged as errors and retried at the slowest pace.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            SessionEnd::State(_)
                | SessionEnd::Tls(_)
                | SessionEnd::Refused { .. }
                | SessionEnd::Untrusted(_)
        )
    }

    /// Classifies a transport or gRPC error in operator terms.
    pub fn from_error(addr: &str, err: &(dyn StdError + 'static)) -> Self {
        match classify(err) {
            Failure::Unreachable(detail) => SessionEnd::Unreachable {
                addr: addr.to_owned(),
                detail,
            },
            Failure::CertificateRefused(alert) => SessionEnd::Refused {
                reason: alert_reason(alert).to_owned(),
            },
            Failure::ControllerUntrusted(detail) => SessionEnd::Untrusted(detail),
            Failure::Other => match err.downcast_ref::<tonic::Status>() {
                // The controller refusing our identity at the application level (e.g. the
                // host was removed while connected) is the same operator problem as a TLS
                // alert.
                Some(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated) => {
                    SessionEnd::Refused {
                        reason: s.message().to_owned(),
                    }
                }
                Some(s) => SessionEnd::Failed(status_text(s)),
                None => SessionEnd::Failed(error_chain(err)),
            },
        }
    }
}

/// What outlives every session, built by `daemon::run`.
pub struct Agent {
    pub state: StateDir,
    pub settings: Settings,
    pub fetcher: Fetcher,
    pub apps: Apps,
    pub firewall: Firewall,
    /// The bound /metrics port (0: off), told to the controller in Hello.
    pub metrics_port: u16,
    pub connected: Connected,
}

impl Agent {
    /// One session after another, forever.
    pub async fn supervise(&self) -> Infallible {
        let mut backoff = Backoff::new(backoff::INITIAL, self.settings.max_backoff);
        loop {
            let mut welcomed = false;
            // A reverted firewall change ends the session too: the rules that were just
            // removed may have cut this stream, and TCP would take tens of seconds of
            // retransmission backoff to notice that they are gone.
            let end = tokio::select! {
                r = self.session(&mut welcomed) => match r {
                    Ok(never) => match never {},
                    Err(end) => end,
                },
                _ = self.firewall.reverted() => SessionEnd::FirewallReverted,
            };
            self.connected.set(false);
            if welcomed || matches!(end, SessionEnd::FirewallReverted) {
                backoff.reset();
            }
            // A session the controller had accepted and then ended is retried soon even if
            // it ended with a refusal: the next handshake says precisely what is wrong.
            let delay = if matches!(end, SessionEnd::FirewallReverted) {
                Duration::ZERO
            } else if end.needs_operator() && !welcomed {
                backoff.at_max()
            } else {
                backoff.next_delay()
            };
            let retry = humantime::format_duration(round_ms(delay));
            match &end {
                SessionEnd::Refused { .. } => tracing::error!(
                    "{end} — re-enroll with a new token: {}; retrying in {retry}",
                    self.rejoin_hint()
                ),
                e if e.needs_operator() => tracing::error!("{end}; retrying in {retry}"),
                _ => tracing::warn!("{end}; retrying in {retry}"),
            }
            notify::status(&format!("disconnected: {end}; retrying in {retry}"));
            tokio::select! {
                _ = sleep(delay) => {}
                _ = self.firewall.reverted() => {
                    tracing::info!("firewall change reverted: reconnecting now");
                    backoff.reset();
                }
            }
        }
    }

    /// The exact command to re-enroll, filled in with what the state dir knows.
    fn rejoin_hint(&self) -> String {
        let controller = self
            .state
            .load_meta()
            .map(|m| m.controller)
            .unwrap_or_else(|_| "ADDR:PORT".into());
        let pin = std::fs::read_to_string(self.state.path().join(crate::state::CA_FILE))
            .ok()
            .and_then(|pem| certs_from_pem(&pem, "the CA file").ok())
            .map(|certs| CaPin::of_der(&certs[0]).to_string())
            .unwrap_or_else(|| "sha256:HEX".into());
        let dir = self.state.path().display().to_string();
        let state_dir = if dir == crate::state::DEFAULT_STATE_DIR {
            String::new()
        } else {
            format!(" --state-dir {dir}")
        };
        format!(
            "fleet-agent join --force --controller {controller} --token TOKEN --ca-pin {pin}{state_dir}"
        )
    }

    async fn session(&self, welcomed: &mut bool) -> Result<Infallible, SessionEnd> {
        let creds = self.state.load()?;
        let addr = creds.meta.controller.clone();
        let tls = identity_client_config(&creds.ca_pem, &creds.cert_pem, &creds.key_pem)
            .map_err(|e| SessionEnd::Tls(e.to_string()))?;
        let key = KeyPair::from_pem(&creds.key_pem).map_err(|e| SessionEnd::Tls(e.to_string()))?;
        let ca_der = certs_from_pem(&creds.ca_pem, "the CA file")
            .map_err(|e| SessionEnd::Tls(e.to_string()))?
            .remove(0)
            .to_vec();

        tracing::debug!(controller = %addr, "connecting");
        let channel = connect(&addr, tls, CONNECT_TIMEOUT)
            .await
            .map_err(|e| match e {
                ConnectError::Address(a) => SessionEnd::Tls(a.to_string()),
                ConnectError::Transport(t) => match SessionEnd::from_error(&addr, &t) {
                    // Before any byte was exchanged, an unclassified failure (DNS, reset)
                    // still means "could not reach it".
                    SessionEnd::Failed(detail) => SessionEnd::Unreachable {
                        addr: addr.clone(),
                        detail,
                    },
                    other => other,
                },
            })?;

        let (tx, rx) = mpsc::channel(OUTBOX);
        let hello = Hello {
            facts: Some(facts::collect(self.metrics_port)),
            heartbeat_interval_ms: u32::try_from(self.settings.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        };
        // Queued before the call starts, so it is the first message on the stream.
        tx.try_send(message(agent_message::Body::Hello(hello)))
            .map_err(|_| SessionEnd::Closed)?;
        let mut client = AgentChannelClient::new(channel);
        let response = tokio::time::timeout(OPEN_TIMEOUT, client.session(ReceiverStream::new(rx)))
            .await
            .map_err(|_| SessionEnd::OpenTimeout)?
            .map_err(|status| SessionEnd::from_error(&addr, &status))?;
        notify::status(&format!("connected to {addr}, waiting for Welcome"));
        // Release downloads go out through this stream until it ends (guard dropped).
        let _fetch_outbox = self.fetcher.attach(tx.clone());
        // App states, events, log lines and app command results likewise.
        let _apps_outbox = self.apps.attach(tx.clone());
        let _firewall_outbox = self.firewall.attach(tx.clone());

        let mut session = Session {
            identity: creds.cert.identity.clone(),
            renewal: Renewal::schedule(&creds),
            creds,
            addr,
            key,
            ca_der,
            tx,
            state: &self.state,
            fetcher: &self.fetcher,
            apps: &self.apps,
            firewall: &self.firewall,
            seq: 0,
            connected: self.connected.clone(),
        };
        session
            .run(
                response.into_inner(),
                self.settings.heartbeat_interval,
                welcomed,
            )
            .await
    }
}

/// `Unavailable: restarting` rather than tonic's long Display, plus any transport cause.
pub fn status_text(s: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", s.code(), s.message());
    if let Some(source) = s.source() {
        text.push_str(": ");
        text.push_str(&error_chain(source));
    }
    text
}

fn message(body: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// When to ask for a new certificate, and the request in flight if any.
struct Renewal {
    next: Instant,
    retry: Duration,
    pending: Option<String>,
}

impl Renewal {
    fn schedule(creds: &Credentials) -> Self {
        Self::for_cert(creds.cert.not_before, creds.cert.not_after)
    }

    fn for_cert(not_before: i64, not_after: i64) -> Self {
        Renewal {
            next: Instant::now() + renew_delay(now_unix(), not_before, not_after),
            retry: retry_delay(not_before, not_after),
            pending: None,
        }
    }
}

struct Session<'a> {
    identity: Identity,
    creds: Credentials,
    addr: String,
    key: KeyPair,
    ca_der: Vec<u8>,
    tx: mpsc::Sender<AgentMessage>,
    state: &'a StateDir,
    fetcher: &'a Fetcher,
    apps: &'a Apps,
    firewall: &'a Firewall,
    renewal: Renewal,
    seq: u64,
    connected: Connected,
}

impl Session<'_> {
    async fn run(
        &mut self,
        mut inbound: tonic::Streaming<ControllerMessage>,
        heartbeat_every: Duration,
        welcomed: &mut bool,
    ) -> Result<Infallible, SessionEnd> {
        // Hello already told the controller we are alive; the first heartbeat follows one
        // interval later.
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_every, heartbeat_every);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let welcome_by = Instant::now() + WELCOME_TIMEOUT;
        loop {
            let renew_at = self.renewal.next;
            tokio::select! {
                _ = heartbeat.tick() => self.heartbeat()?,
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => self.handle(m, welcomed).await?,
                    Ok(None) => return Err(SessionEnd::Closed),
                    Err(status) => return Err(SessionEnd::from_error(&self.addr, &status)),
                },
                _ = sleep_until(welcome_by), if !*welcomed => return Err(SessionEnd::NoWelcome),
                // Renewal waits for Welcome: the controller has then accepted this stream.
                _ = sleep_until(renew_at), if *welcomed => self.request_renewal().await?,
            }
        }
    }

    fn heartbeat(&mut self) -> Result<(), SessionEnd> {
        self.seq += 1;
        let msg = message(agent_message::Body::Heartbeat(Heartbeat { seq: self.seq }));
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            // The controller is not reading; a queued heartbeat would be stale anyway. The
            // HTTP/2 keepalive decides whether the connection is dead.
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    seq = self.seq,
                    "controller is not reading; heartbeat skipped"
                );
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SessionEnd::Closed),
        }
    }

    async fn send(&self, body: agent_message::Body) -> Result<(), SessionEnd> {
        self.tx
            .send(message(body))
            .await
            .map_err(|_| SessionEnd::Closed)
    }

    async fn handle(
        &mut self,
        msg: ControllerMessage,
        welcomed: &mut bool,
    ) -> Result<(), SessionEnd> {
        match msg.body {
            Some(controller_message::Body::Welcome(w)) => {
                if !*welcomed {
                    *welcomed = true;
                    self.welcome(&w);
                    // The controller forgets nothing it was told, but may have missed
                    // changes while we were away: tell it everything again.
                    self.apps.resync();
                    self.firewall.resync();
                }
                Ok(())
            }
            // App commands may run for minutes: they answer from a task of their own.
            Some(controller_message::Body::Command(c)) if apps::handles(&c) => {
                self.apps.dispatch(c);
                Ok(())
            }
            Some(controller_message::Body::Command(c)) if firewall::handles(&c) => {
                self.firewall.dispatch(c);
                Ok(())
            }
            Some(controller_message::Body::Command(c)) => {
                let result = answer(c);
                self.send(agent_message::Body::Result(result)).await
            }
            Some(controller_message::Body::Renewed(r)) => {
                self.renewed(r);
                Ok(())
            }
            Some(controller_message::Body::ReleaseData(d)) => {
                self.fetcher.deliver(d).await;
                Ok(())
            }
            // A message kind added after this agent was built: ignore it, never fail.
            None => {
                tracing::debug!("ignoring a controller message this agent does not know");
                Ok(())
            }
        }
    }

    fn welcome(&self, w: &Welcome) {
        self.connected.set(true);
        tracing::info!(
            controller = %self.addr,
            controller_version = %w.controller_version,
            identity = %self.identity,
            "connected to controller"
        );
        if w.server_time != 0 {
            let skew = w.server_time - now_unix();
            if skew.abs() > MAX_SKEW_SECS {
                tracing::warn!(
                    skew_seconds = skew,
                    "this host's clock differs from the controller's; certificates may look \
                     expired or not yet valid — check NTP"
                );
            }
        }
        notify::status(&format!("connected to {} as {}", self.addr, self.identity));
    }

    async fn request_renewal(&mut self) -> Result<(), SessionEnd> {
        let request_id = hex::encode(rand::random::<[u8; 16]>());
        let name = self.creds.meta.name.clone();
        self.renewal.next = Instant::now() + self.renewal.retry;
        let csr = match csr_pem(&self.key, &name) {
            Ok(csr) => csr,
            Err(e) => {
                tracing::error!(error = %e, "cannot make a renewal request");
                return Ok(());
            }
        };
        tracing::info!(
            expires = %crate::clock::format_time(self.creds.cert.not_after),
            "renewing certificate"
        );
        self.renewal.pending = Some(request_id.clone());
        self.send(agent_message::Body::Renew(RenewRequest {
            request_id,
            csr_pem: csr,
        }))
        .await
    }

    fn renewed(&mut self, r: RenewResponse) {
        if self.renewal.pending.as_deref() != Some(r.request_id.as_str()) {
            tracing::debug!(request_id = %r.request_id, "ignoring an unexpected renewal answer");
            return;
        }
        self.renewal.pending = None;
        let retry = humantime::format_duration(self.renewal.retry);
        self.renewal.next = Instant::now() + self.renewal.retry;
        if !r.error.is_empty() {
            tracing::warn!(
                "certificate renewal refused by controller: {}; retrying in {retry}",
                r.error
            );
            return;
        }
        // Same checks as at join; the CA stays the one pinned at join (ca_pem is not
        // trusted to replace it: CA rotation is a separate, deliberate operation).
        let info = match check_issued(
            &r.cert_pem,
            &self.ca_der,
            &self.key,
            &self.creds.meta.name,
            Some(&self.creds.meta.trust_domain),
        ) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!("renewed certificate rejected: {e}; retrying in {retry}");
                return;
            }
        };
        // Small file, local disk: blocking here for a moment is fine.
        if let Err(e) = self.state.write_cert(&r.cert_pem) {
            tracing::error!("cannot save the renewed certificate: {e}; retrying in {retry}");
            return;
        }
        tracing::info!(
            expires = %crate::clock::format_time(info.not_after),
            "certificate renewed"
        );
        self.renewal = Renewal::for_cert(info.not_before, info.not_after);
        self.creds.cert = info;
        self.creds.cert_pem = r.cert_pem;
    }
}

/// Exactly one result per command. Kinds this agent does not know (a newer controller)
/// are answered UNSUPPORTED, never dropped and never an error.
pub fn answer(c: Command) -> CommandResult {
    let (status, message) = match c.kind {
        Some(command::Kind::Ping(_)) => (command_result::Status::Ok, String::new()),
        // Listed, not wildcarded, so each new kind is a compile error until it is handled
        // here; these never reach here: `apps::handles` routes them to apps.rs and
        // `firewall::handles` to firewall.rs.
        Some(
            command::Kind::Stage(_)
            | command::Kind::Activate(_)
            | command::Kind::Restart(_)
            | command::Kind::TailLogs(_)
            | command::Kind::StopLogs(_)
            | command::Kind::RunPreStart(_)
            | command::Kind::ApplyFirewall(_)
            | command::Kind::ConfirmFirewall(_),
        )
        | None => (
            command_result::Status::Unsupported,
            format!(
                "fleet-agent {} does not support this command",
                env!("CARGO_PKG_VERSION")
            ),
        ),
    };
    CommandResult {
        id: c.id,
        status: status as i32,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::Ping;
    use prost::Message;

    #[test]
    fn ping_is_answered_ok_with_its_id() {
        let r = answer(Command {
            id: "c-1".into(),
            kind: Some(command::Kind::Ping(Ping {})),
        });
        assert_eq!(r.id, "c-1");
        assert_eq!(r.status(), command_result::Status::Ok);
    }

    #[test]
    fn unknown_commands_are_unsupported_not_fatal() {
        // A newer controller's command arrives as an id plus an arm we cannot decode:
        // field 99 is a length-delimited message this build has never heard of.
        let mut bytes = Command {
            id: "c-2".into(),
            kind: None,
        }
        .encode_to_vec();
        bytes.extend_from_slice(&[0x9a, 0x06, 0x00]);
        let decoded = Command::decode(bytes.as_slice()).unwrap();
        assert!(decoded.kind.is_none());
        let r = answer(decoded);
        assert_eq!(r.id, "c-2");
        assert_eq!(r.status(), command_result::Status::Unsupported);
        assert!(r.message.contains("does not support"));
    }

    #[test]
    fn refusals_need_an_operator_and_outages_do_not() {
        let status = tonic::Status::permission_denied("host removed");
        let end = SessionEnd::from_error("c:1", &status);
        assert!(matches!(end, SessionEnd::Refused { ref reason } if reason == "host removed"));
        assert!(end.needs_operator());
        let end = SessionEnd::from_error("c:1", &tonic::Status::unavailable("restarting"));
        assert!(matches!(end, SessionEnd::Failed(_)));
        assert!(!end.needs_operator());
        assert!(!SessionEnd::Closed.needs_operator());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(matches!(
            SessionEnd::from_error("c:1", &io),
            SessionEnd::Unreachable { .. }
        ));
    }

    #[test]
    fn renewal_due_now_when_past_two_thirds() {
        let now = now_unix();
        let r = Renewal::for_cert(now - 700, now + 300);
        assert!(r.next <= Instant::now());
        let r = Renewal::for_cert(now, now + 3_000);
        assert!(r.next > Instant::now() + Duration::from_secs(1_990));
    }
}
