//! The agent's firewall: it owns exactly the `inet fleet` nftables table.
//!
//! A change is commit-confirmed. The agent checks the candidate (`nft -c`), saves the live
//! table, arms a transient systemd timer that loads the saved table back, applies the
//! candidate in one transaction and answers; only a ConfirmFirewall for the same apply id
//! stops the timer. The timer belongs to systemd, not to us, so a crashed or killed agent
//! cannot leave the host on unconfirmed rules, and rules that cut the controller off undo
//! themselves.
//!
//! The change waiting for confirmation is also written to the state dir: an agent that
//! restarts has lost the stream that carried the change, so it can never be confirmed; the
//! agent then reverts it at once instead of waiting for the timer (and never re-applies it).
//! After a revert the agent starts a new session right away: a stream that lived under rules
//! that cut it is stuck in TCP retransmission backoff long after the rules are gone.
//!
//! Confirmed rules are kept in the state dir and restored on start, by a oneshot unit
//! ordered after Debian's `nftables.service` (which flushes the whole ruleset when it
//! starts or stops), and by the periodic drift check.

mod change;
mod nft;
mod persist;

use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::files::FileError;
use fleet_proto::firewall::{OnDrift, Policy, DEFAULT_DRIFT_CHECK};
use fleet_proto::v1::{
    agent_message, command, command_result, AgentMessage, Command, CommandResult, Event,
    FirewallState,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify};

use crate::clock::now_ms;
use crate::metrics::Flag;
use crate::outbox::{self, Outbox};
use change::{ChangeError, Pending};
use nft::{listing, load};

pub fn handles(c: &Command) -> bool {
    matches!(
        c.kind,
        Some(command::Kind::ApplyFirewall(_) | command::Kind::ConfirmFirewall(_))
    )
}

#[derive(Clone)]
pub struct Firewall {
    inner: Arc<Inner>,
}

struct Inner {
    drift: Flag,
    dir: PathBuf,
    host: String,
    /// Read for the controller addresses at each check: a Welcome may have changed them.
    agent_state: crate::state::StateDir,
    outbox: Outbox,
    st: Mutex<St>,
    /// One apply at a time: two interleaved applies would each save the other's rules.
    applying: tokio::sync::Mutex<()>,
    /// Signalled when an unconfirmed change was reverted by its deadline.
    reverted: Notify,
}

struct St {
    pending: Option<Pending>,
    /// A revert is being finished: the table is not the confirmed one, and that is no drift.
    reverting: bool,
    state: FirewallState,
    on_drift: OnDrift,
    drift_check: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Through the fsync'ing atomic write: the pending file decides a revert after a crash, so
/// a power cut must leave the old file or the new one, never an empty one.
fn write(path: &Path, text: &str) -> Result<(), FileError> {
    fleet_proto::files::write_atomic(path, text.as_bytes(), 0o644)
}

impl Firewall {
    /// `drift` is raised while the state is `drift` (the `fleet_firewall_drift` metric).
    pub fn new(agent_state: &Path, host: &str, drift: Flag) -> Firewall {
        Firewall {
            inner: Arc::new(Inner {
                drift,
                dir: agent_state.join("firewall"),
                host: host.to_owned(),
                agent_state: crate::state::StateDir::new(agent_state),
                outbox: Outbox::default(),
                applying: tokio::sync::Mutex::new(()),
                reverted: Notify::new(),
                st: Mutex::new(St {
                    pending: None,
                    reverting: false,
                    state: FirewallState {
                        state: "none".into(),
                        ..Default::default()
                    },
                    on_drift: OnDrift::Reapply,
                    drift_check: DEFAULT_DRIFT_CHECK,
                }),
            }),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.inner.dir.join(name)
    }

    pub fn attach(&self, tx: mpsc::Sender<AgentMessage>) -> outbox::Attached {
        self.inner.outbox.attach(tx)
    }

    /// Resolves once an unconfirmed change was reverted by its deadline: the stream that
    /// carried it may have been cut, and a fresh one should be opened right away. A revert
    /// while nobody waits is remembered for the next caller.
    pub async fn reverted(&self) {
        self.inner.reverted.notified().await
    }

    pub fn resync(&self) {
        // A host that never had a fleet firewall has nothing to report; older controllers
        // and the protocol tests see no new message kind then.
        if lock(&self.inner.st).state.state == "none" {
            return;
        }
        let fw = self.clone();
        tokio::spawn(async move {
            // Drift and revert events from while we were cut off, then the state.
            fw.inner.outbox.flush_events().await;
            fw.push().await
        });
    }

    async fn push(&self) {
        let state = lock(&self.inner.st).state.clone();
        self.inner
            .outbox
            .send(agent_message::Body::Firewall(state))
            .await;
    }

    async fn set_state(&self, state: &str, detail: String) {
        {
            let mut st = lock(&self.inner.st);
            st.state.state = state.into();
            st.state.detail = detail;
            st.state.time_ms = now_ms();
        }
        self.inner.drift.set(state == "drift");
        self.push().await;
    }

    async fn event(&self, kind: &str, message: String) {
        self.inner
            .outbox
            .event(Event {
                time_ms: now_ms(),
                kind: kind.into(),
                subject: "firewall".into(),
                message,
                fields: Default::default(),
            })
            .await;
    }

    /// Restores the confirmed table if it is missing or differs, then checks for drift
    /// forever. Called once at start.
    pub fn start(&self) {
        let fw = self.clone();
        tokio::spawn(async move {
            if let Ok(toml) = std::fs::read_to_string(fw.path("policy.toml")) {
                if let Ok(p) = Policy::parse(&toml) {
                    let mut st = lock(&fw.inner.st);
                    st.on_drift = p.on_drift;
                    st.drift_check = p.drift_check;
                    st.state.policy_sha256 = sha(&toml);
                    st.state.state = "confirmed".into();
                    st.state.time_ms = now_ms();
                }
            }
            fw.recover_unconfirmed().await;
            loop {
                fw.check_drift().await;
                // Re-read the period every second: a newly confirmed policy may shorten it,
                // and a long sleep taken under the old period must not hide drift meanwhile.
                let start = tokio::time::Instant::now();
                while start.elapsed() < lock(&fw.inner.st).drift_check {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }

    async fn check_drift(&self) {
        let desired = self.path("desired.nft");
        {
            let st = lock(&self.inner.st);
            if !desired.exists() || st.pending.is_some() || st.reverting {
                return;
            }
        }
        let expected = std::fs::read_to_string(self.path("expected.txt")).unwrap_or_default();
        let live = listing().await;
        if live.as_deref() == Some(expected.as_str()) {
            return;
        }
        let what = if live.is_none() {
            "the fleet table is missing (ruleset flushed?)"
        } else {
            "the fleet table differs from the confirmed policy (edited by hand?)"
        };
        let on_drift = lock(&self.inner.st).on_drift;
        tracing::warn!(?on_drift, "firewall drift: {what}");
        self.event("firewall.drift", what.to_owned()).await;
        match on_drift {
            OnDrift::Report => self.set_state("drift", what.to_owned()).await,
            OnDrift::Reapply => match load(&desired).await {
                Ok(()) => {
                    if let Some(l) = listing().await {
                        let _ = write(&self.path("expected.txt"), &l);
                    }
                    self.set_state("confirmed", format!("re-applied after drift: {what}"))
                        .await;
                }
                Err(e) => {
                    tracing::error!("cannot re-apply the firewall: {e}");
                    self.set_state("drift", format!("{what}; re-apply failed: {e}"))
                        .await;
                }
            },
        }
    }

    pub fn dispatch(&self, c: Command) {
        let fw = self.clone();
        tokio::spawn(async move {
            let outcome = match c.kind {
                Some(command::Kind::ApplyFirewall(a)) => fw.apply(a).await,
                Some(command::Kind::ConfirmFirewall(cf)) => fw.confirm(cf).await,
                _ => Err(ChangeError::NotFirewall),
            };
            let (status, message) = match outcome {
                Ok(m) => (command_result::Status::Ok, m),
                Err(e) => (command_result::Status::Failed, e.to_string()),
            };
            fw.inner
                .outbox
                .send(agent_message::Body::Result(CommandResult {
                    id: c.id,
                    status: status as i32,
                    message,
                    request_stats: None,
                    exit_code: 0,
                }))
                .await;
        });
    }

    /// The addresses of each controller `agent.toml` names now. An unreadable `agent.toml`
    /// gives none, and the lockout check then refuses any policy that needs one.
    fn controller_ips(&self) -> Vec<IpAddr> {
        let mut ips = Vec::new();
        let meta = match self.inner.agent_state.load_meta() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the controller addresses");
                return ips;
            }
        };
        for addr in meta.controller.addrs() {
            // Every record of a name: the agent dials them in turn.
            for ip in addr.to_socket_addrs().into_iter().flatten() {
                if !ips.contains(&ip.ip()) {
                    ips.push(ip.ip());
                }
            }
        }
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::ConfirmFirewall;

    #[test]
    fn only_firewall_commands_are_handled_here() {
        let c = Command {
            id: "1".into(),
            kind: Some(command::Kind::ConfirmFirewall(ConfirmFirewall::default())),
        };
        assert!(handles(&c));
        let c = Command {
            id: "1".into(),
            kind: Some(command::Kind::Ping(Default::default())),
        };
        assert!(!handles(&c));
    }
}
