//! One session on the stream: heartbeats, the controller's messages routed to their
//! owners (apps, firewall, upgrader, fetcher), and the answer to every other command.

use std::convert::Infallible;
use std::time::Duration;

use fleet_proto::controllers::ControllerList;
use fleet_proto::identity::Identity;
use fleet_proto::v1::{
    agent_message, command, command_result, controller_message, AgentMessage, Command,
    CommandResult, ControllerMessage, Heartbeat, RenewResponse, Welcome,
};
use rcgen::KeyPair;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

use super::renewal::{Cert, Renewal};
use super::{message, SessionEnd, MAX_SKEW_SECS, WELCOME_TIMEOUT};
use crate::apps::{self, Apps};
use crate::clock::now_unix;
use crate::fetch::Fetcher;
use crate::firewall::{self, Firewall};
use crate::metrics::Connected;
use crate::notify;
use crate::state::{Credentials, StateDir};

pub(super) struct Session<'a> {
    pub(super) identity: Identity,
    pub(super) creds: Credentials,
    pub(super) addr: String,
    pub(super) key: KeyPair,
    pub(super) ca_der: Vec<u8>,
    pub(super) tx: mpsc::Sender<AgentMessage>,
    pub(super) state: &'a StateDir,
    pub(super) fetcher: &'a Fetcher,
    pub(super) apps: &'a Apps,
    pub(super) firewall: &'a Firewall,
    pub(super) upgrader: &'a crate::upgrade::Upgrader,
    pub(super) renewal: Renewal,
    pub(super) seq: u64,
    pub(super) connected: Connected,
    /// Where the Welcome's reconnect window is kept for the supervisor.
    pub(super) spread_hint: &'a std::sync::atomic::AtomicU64,
    /// The supervisor's place in the controller list, moved when a Welcome changes it.
    pub(super) next_addr: &'a std::sync::atomic::AtomicUsize,
}

impl Session<'_> {
    pub(super) async fn run(
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
                } else {
                    // A later Welcome on the same stream only brings news of the
                    // controller addresses.
                    self.learn_controllers(&w.controllers);
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
            Some(controller_message::Body::Command(c)) if crate::upgrade::handles(&c) => {
                self.upgrader.dispatch(c);
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

    async fn request_renewal(&mut self) -> Result<(), SessionEnd> {
        match self.renewal.request(&self.creds) {
            Some(req) => self.send(agent_message::Body::Renew(req)).await,
            None => Ok(()),
        }
    }

    fn renewed(&mut self, r: RenewResponse) {
        let cert = Cert {
            key: &mut self.key,
            ca_der: &self.ca_der,
            creds: &mut self.creds,
            state: self.state,
        };
        self.renewal.answered(r, cert);
    }

    fn welcome(&self, w: &Welcome) {
        self.connected.set(true);
        self.spread_hint
            .store(w.reconnect_spread_ms, std::sync::atomic::Ordering::Relaxed);
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
        self.learn_controllers(&w.controllers);
    }

    /// Keeps the fleet's controller addresses a Welcome names in `agent.toml`, so a replica
    /// added or removed reaches this host without a re-enrollment. An empty list (none set,
    /// or an older controller) or an unusable one changes nothing.
    fn learn_controllers(&self, told: &[String]) {
        if told.is_empty() {
            return;
        }
        let told = match ControllerList::new(told) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "the controller's list of controller addresses is not usable; keeping agent.toml's");
                return;
            }
        };
        let keep = ControllerList::learned(&told, &self.addr);
        match self.state.write_controllers(&keep) {
            Ok(false) => {}
            Ok(true) => {
                // The next attempt after a loss goes to the address after this one.
                if let Some(i) = keep
                    .addrs()
                    .iter()
                    .position(|a| a.eq_ignore_ascii_case(&self.addr))
                {
                    self.next_addr
                        .store(i, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::info!(controllers = %keep, "controller addresses updated from the controller");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep the controller addresses the controller sent")
            }
        }
    }
}

/// Exactly one result per command. Kinds this agent does not know (a newer controller)
/// are answered UNSUPPORTED, never dropped and never an error.
fn answer(c: Command) -> CommandResult {
    let (status, message) = match c.kind {
        Some(command::Kind::Ping(_)) => (command_result::Status::Ok, String::new()),
        // Listed, not wildcarded, so each new kind is a compile error until it is handled
        // here; these never reach here: `apps::handles` routes them to `apps/` and
        // `firewall::handles` to `firewall/`.
        Some(
            command::Kind::Stage(_)
            | command::Kind::Activate(_)
            | command::Kind::Restart(_)
            | command::Kind::TailLogs(_)
            | command::Kind::StopLogs(_)
            | command::Kind::RunPreStart(_)
            | command::Kind::ApplyFirewall(_)
            | command::Kind::ConfirmFirewall(_)
            | command::Kind::UpgradeAgent(_)
            | command::Kind::QueryRequests(_)
            | command::Kind::Exec(_)
            | command::Kind::CancelExec(_)
            | command::Kind::StopApp(_)
            | command::Kind::StartApp(_)
            | command::Kind::RemoveApp(_),
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
        request_stats: None,
        exit_code: 0,
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
}
