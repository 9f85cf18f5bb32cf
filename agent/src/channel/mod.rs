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

mod renewal;
mod session;

use std::convert::Infallible;
use std::error::Error as StdError;
use std::time::Duration;

use fleet_proto::peer::CaPin;
use fleet_proto::transport::{
    alert_reason, certs_from_pem, classify, connect, identity_client_config, ConnectError, Failure,
};
use fleet_proto::v1::agent_channel_client::AgentChannelClient;
use fleet_proto::v1::{agent_message, AgentMessage, Hello};
use rcgen::KeyPair;
use tokio::sync::mpsc;
use tokio::time::sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::apps::Apps;
use crate::config::Settings;
use crate::fetch::Fetcher;
use crate::firewall::Firewall;
use crate::logging::error_chain;
use crate::metrics::Connected;
use crate::state::{StateDir, StateError};
use crate::{facts, notify};
use fleet_proto::reconnect::{self as backoff, retry_spread, Backoff};
use renewal::Renewal;
use session::Session;

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
pub const CAPABILITIES: &[&str] = &["renew", "agent-upgrade"];

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
    /// The controller is shutting down and asked its agents to spread their return over
    /// `spread`.
    #[error("controller is restarting: {detail}")]
    Restarting { detail: String, spread: Duration },
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
                Some(s) => match retry_spread(s) {
                    Some(spread) => SessionEnd::Restarting {
                        detail: status_text(s),
                        spread,
                    },
                    None => SessionEnd::Failed(status_text(s)),
                },
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
    pub upgrader: crate::upgrade::Upgrader,
    /// The bound /metrics port (0: off), told to the controller in Hello.
    pub metrics_port: u16,
    pub connected: Connected,
    /// The reconnect window (ms) the controller's last Welcome named (0: none).
    pub spread_hint: std::sync::atomic::AtomicU64,
    /// Which of the controller addresses (`agent.toml` may list several) the next
    /// attempt uses.
    pub next_addr: std::sync::atomic::AtomicUsize,
}

/// How long after losing a controller the others are tried at the failover pace: more
/// than the default leader lease (6 s) plus a standby's start of serving.
const FAILOVER_WINDOW: Duration = Duration::from_secs(12);

/// How soon to try the next address after a stream to one was lost or refused, spread so
/// that a fleet failing over together does not arrive in one burst.
fn failover_delay() -> Duration {
    Duration::from_millis(rand::random_range(20..=1_000))
}

impl Agent {
    /// One session after another, forever.
    pub async fn supervise(&self) -> Infallible {
        let mut backoff = Backoff::new(backoff::INITIAL, self.settings.max_backoff)
            .with_spread(self.settings.reconnect_spread);
        // When a stream to one of several controllers was lost: the next ones are tried
        // at once, round after round, for a while (long enough for a standby to wait out
        // the lost leader's lease and take over, docs/ha.md); only then the usual backoff.
        let mut lost_at: Option<tokio::time::Instant> = None;
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
            if matches!(end, SessionEnd::FirewallReverted) {
                backoff.reset();
            } else if let SessionEnd::Restarting { spread, .. } = &end {
                backoff.session_lost_within(*spread);
            } else if welcomed {
                // Lost without a word (controller killed, network cut): the window the
                // controller named for a fleet of its size, if wider than our own.
                let hint = self.spread_hint.load(std::sync::atomic::Ordering::Relaxed);
                backoff.session_lost_within(Duration::from_millis(hint));
            }
            // A session the controller had accepted and then ended is retried soon even if
            // it ended with a refusal: the next handshake says precisely what is wrong.
            let mut delay = if matches!(end, SessionEnd::FirewallReverted) {
                Duration::ZERO
            } else if end.needs_operator() && !welcomed {
                backoff.at_max()
            } else {
                backoff.next_delay()
            };
            let addrs = self
                .state
                .load_meta()
                .map(|m| m.controller.addrs().len())
                .unwrap_or(1);
            if addrs > 1 && !matches!(end, SessionEnd::FirewallReverted) && !end.needs_operator() {
                self.next_addr
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if welcomed || lost_at.is_none() {
                    lost_at = Some(tokio::time::Instant::now());
                }
                if lost_at.is_some_and(|t| t.elapsed() < FAILOVER_WINDOW) {
                    delay = failover_delay();
                }
            }
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
            .map(|m| m.controller.to_string())
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
        let addr = {
            // Never empty: a `ControllerList` has at least one address.
            let addrs = creds.meta.controller.addrs();
            let i = self.next_addr.load(std::sync::atomic::Ordering::Relaxed);
            addrs[i % addrs.len()].clone()
        };
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
        let _upgrade_outbox = self.upgrader.attach(tx.clone());

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
            upgrader: &self.upgrader,
            seq: 0,
            connected: self.connected.clone(),
            spread_hint: &self.spread_hint,
            next_addr: &self.next_addr,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_delays_stay_in_their_window() {
        for _ in 0..100 {
            let d = failover_delay();
            assert!(d >= Duration::from_millis(20) && d <= Duration::from_secs(1));
        }
    }

    #[test]
    fn refusals_need_an_operator_and_outages_do_not() {
        let status = tonic::Status::permission_denied("host removed");
        let end = SessionEnd::from_error("c:1", &status);
        assert!(matches!(end, SessionEnd::Refused { ref reason } if reason == "host removed"));
        assert!(end.needs_operator());
        let end = SessionEnd::from_error("c:1", &tonic::Status::unavailable("restarting"));
        assert!(matches!(end, SessionEnd::Failed(_)));
        let mut draining = tonic::Status::unavailable("controller shutting down");
        draining
            .metadata_mut()
            .insert(fleet_proto::RETRY_AFTER_MS, "19000".parse().unwrap());
        let end = SessionEnd::from_error("c:1", &draining);
        assert!(
            matches!(end, SessionEnd::Restarting { spread, .. } if spread == Duration::from_secs(19))
        );
        assert!(!end.needs_operator());
        assert!(!end.needs_operator());
        assert!(!SessionEnd::Closed.needs_operator());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(matches!(
            SessionEnd::from_error("c:1", &io),
            SessionEnd::Unreachable { .. }
        ));
    }
}
