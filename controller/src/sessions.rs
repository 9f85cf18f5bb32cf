//! Live agent sessions: which hosts are up right now. A host is `up` while its stream is
//! open and its last heartbeat is younger than three heartbeat intervals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleet_proto::v1::ControllerMessage;
use tokio::sync::{mpsc, oneshot};

/// Missed heartbeats after which a host is declared down.
pub const MISSED_HEARTBEATS: u32 = 3;

struct Live {
    id: u64,
    address: String,
    last_heartbeat: Instant,
    interval: Duration,
    close: Option<oneshot::Sender<String>>,
    tx: Outbound,
}

/// Messages to one agent's stream.
pub type Outbound = mpsc::Sender<Result<ControllerMessage, tonic::Status>>;

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    next_id: AtomicU64,
}

/// Handed to the session task: fires with a reason when the controller ends the session.
pub type CloseSignal = oneshot::Receiver<String>;

impl Sessions {
    /// Registers a new session for `host`, closing any older one (an agent that reconnected
    /// before its old stream timed out).
    pub fn register(
        &self,
        host: &str,
        address: String,
        interval: Duration,
        tx: Outbound,
    ) -> (u64, CloseSignal) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (close_tx, rx) = oneshot::channel();
        let old = self.live.lock().expect("sessions lock").insert(
            host.to_owned(),
            Live {
                id,
                address,
                last_heartbeat: Instant::now(),
                interval,
                close: Some(close_tx),
                tx,
            },
        );
        if let Some(mut old) = old {
            if let Some(close) = old.close.take() {
                let _ = close.send("replaced by a newer session from the same host".into());
            }
        }
        (id, rx)
    }

    pub fn heartbeat(&self, host: &str, id: u64) {
        if let Some(live) = self.live.lock().expect("sessions lock").get_mut(host) {
            if live.id == id {
                live.last_heartbeat = Instant::now();
            }
        }
    }

    /// Forgets session `id` of `host` if it is still the current one.
    pub fn end(&self, host: &str, id: u64) -> bool {
        let mut live = self.live.lock().expect("sessions lock");
        if live.get(host).is_some_and(|l| l.id == id) {
            live.remove(host);
            true
        } else {
            false
        }
    }

    /// Ends the host's session now (host removed, controller shutting down).
    pub fn close(&self, host: &str, reason: &str) -> bool {
        let removed = self.live.lock().expect("sessions lock").remove(host);
        match removed {
            Some(mut l) => {
                if let Some(close) = l.close.take() {
                    let _ = close.send(reason.to_owned());
                }
                true
            }
            None => false,
        }
    }

    pub fn close_all(&self, reason: &str) {
        let all: Vec<Live> = self
            .live
            .lock()
            .expect("sessions lock")
            .drain()
            .map(|(_, l)| l)
            .collect();
        for mut l in all {
            if let Some(close) = l.close.take() {
                let _ = close.send(reason.to_owned());
            }
        }
    }

    /// Removes and closes every session whose heartbeats stopped; returns their hosts.
    pub fn reap(&self, now: Instant) -> Vec<String> {
        let mut live = self.live.lock().expect("sessions lock");
        let dead: Vec<String> = live
            .iter()
            .filter(|(_, l)| {
                now.saturating_duration_since(l.last_heartbeat) > l.interval * MISSED_HEARTBEATS
            })
            .map(|(h, _)| h.clone())
            .collect();
        for host in &dead {
            if let Some(mut l) = live.remove(host) {
                if let Some(close) = l.close.take() {
                    let _ = close.send(format!("no heartbeat for {MISSED_HEARTBEATS} intervals"));
                }
            }
        }
        dead
    }

    /// The address of the host's live session, if it is up.
    pub fn up(&self, host: &str) -> Option<String> {
        let live = self.live.lock().expect("sessions lock");
        live.get(host).and_then(|l| {
            (l.last_heartbeat.elapsed() <= l.interval * MISSED_HEARTBEATS)
                .then(|| l.address.clone())
        })
    }

    /// The stream to a host that is up, for sending it commands.
    pub fn outbound(&self, host: &str) -> Option<Outbound> {
        let live = self.live.lock().expect("sessions lock");
        live.get(host).and_then(|l| {
            (l.last_heartbeat.elapsed() <= l.interval * MISSED_HEARTBEATS).then(|| l.tx.clone())
        })
    }

    /// The id of the host's current session, if any: a change in it means the agent
    /// reconnected in between.
    pub fn session_id(&self, host: &str) -> Option<u64> {
        self.live
            .lock()
            .expect("sessions lock")
            .get(host)
            .map(|l| l.id)
    }

    pub fn count(&self) -> usize {
        self.live.lock().expect("sessions lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx() -> Outbound {
        mpsc::channel(1).0
    }

    #[test]
    fn a_silent_host_is_reaped_after_three_intervals() {
        let s = Sessions::default();
        let (id, mut close) = s.register("h", "a".into(), Duration::from_millis(100), tx());
        let t0 = Instant::now();
        assert!(s.reap(t0 + Duration::from_millis(250)).is_empty());
        s.heartbeat("h", id);
        assert_eq!(
            s.reap(Instant::now() + Duration::from_millis(301)),
            vec!["h".to_string()]
        );
        assert!(close.try_recv().unwrap().contains("heartbeat"));
        assert!(s.up("h").is_none());
    }

    #[test]
    fn a_new_session_replaces_and_closes_the_old_one() {
        let s = Sessions::default();
        let (old, mut old_close) = s.register("h", "a".into(), Duration::from_secs(10), tx());
        let (new, _c) = s.register("h", "b".into(), Duration::from_secs(10), tx());
        assert!(old_close.try_recv().is_ok());
        assert!(!s.end("h", old), "the old session must not end the new one");
        assert_eq!(s.up("h").as_deref(), Some("b"));
        assert!(s.end("h", new));
        assert!(s.up("h").is_none());
    }
}
