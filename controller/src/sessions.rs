//! Live agent sessions: which hosts are up right now. A host is `up` while its stream is
//! open and its last heartbeat is younger than three heartbeat intervals.
//!
//! Nothing here scans every session: each session's own task ends it when its heartbeat
//! deadline passes (a tokio timer, so a wheel, not a sweep), and `up` checks one entry.
//! With 50,000 agents a periodic sweep under this lock would hold it for milliseconds
//! several times a second.

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
    /// The standby relaying this stream (its advertised address), if any.
    via: Option<String>,
    last_heartbeat: Instant,
    interval: Duration,
    close: Option<oneshot::Sender<String>>,
    tx: Outbound,
}

/// One message down an agent's stream. Boxed: a channel allocates its slots 32 at a
/// time, and 168-byte messages inline would cost every session 5 KiB for slots that
/// are nearly always empty (tonic's Status is already one pointer).
pub type Down = Result<Box<ControllerMessage>, tonic::Status>;

/// Messages to one agent's stream.
pub type Outbound = mpsc::Sender<Down>;

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    next_id: AtomicU64,
    /// Set by `close_all`: the window, in ms, agents are asked to spread their return over.
    return_spread_ms: AtomicU64,
    /// On a shared store: the lease this controller serves under (`only_while`).
    leadership: std::sync::OnceLock<std::sync::Arc<crate::leader::Leadership>>,
}

/// Handshakes a controller takes per second in a reconnect wave, conservatively (two
/// cores shared with the wave itself; docs/benchmarks.md, issue 16).
const RECONNECTS_PER_SECOND: u64 = 1_000;
const MIN_RETURN_SPREAD: Duration = Duration::from_secs(5);
const MAX_RETURN_SPREAD: Duration = Duration::from_secs(120);

/// How long `sessions` agents should take to come back so the controller's handshake
/// rate keeps up with them.
pub fn return_spread(sessions: usize) -> Duration {
    Duration::from_millis(sessions as u64 * 1000 / RECONNECTS_PER_SECOND)
        .clamp(MIN_RETURN_SPREAD, MAX_RETURN_SPREAD)
}

/// Handed to the session task: fires with a reason when the controller ends the session.
pub type CloseSignal = oneshot::Receiver<String>;

/// How long a session may go without a heartbeat before it is ended.
pub fn grace(interval: Duration) -> Duration {
    interval * MISSED_HEARTBEATS
}

fn alive(last_heartbeat: Instant, interval: Duration, now: Instant) -> bool {
    now.saturating_duration_since(last_heartbeat) <= grace(interval)
}

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
                via: None,
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

    /// Records which standby relays session `id` of `host` (docs/ha.md).
    pub fn set_via(&self, host: &str, id: u64, via: String) {
        if let Some(live) = self.live.lock().expect("sessions lock").get_mut(host) {
            if live.id == id {
                live.via = Some(via);
            }
        }
    }

    /// The standby relaying `host`'s live session; `None` when it is direct or down.
    pub fn via(&self, host: &str) -> Option<String> {
        let live = self.live.lock().expect("sessions lock");
        live.get(host).and_then(|l| l.via.clone())
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

    /// Ends every session; returns the hosts whose sessions it ended.
    pub fn close_all(&self, reason: &str) -> Vec<String> {
        let all: Vec<(String, Live)> = self.live.lock().expect("sessions lock").drain().collect();
        self.return_spread_ms.store(
            return_spread(all.len()).as_millis() as u64,
            Ordering::Relaxed,
        );
        let mut hosts = Vec::with_capacity(all.len());
        for (host, mut l) in all {
            if let Some(close) = l.close.take() {
                let _ = close.send(reason.to_owned());
            }
            hosts.push(host);
        }
        hosts
    }

    /// The address of the host's live session, if it is up.
    pub fn up(&self, host: &str) -> Option<String> {
        let live = self.live.lock().expect("sessions lock");
        live.get(host).and_then(|l| {
            alive(l.last_heartbeat, l.interval, Instant::now()).then(|| l.address.clone())
        })
    }

    /// From now on, `outbound` gives nothing once `leadership` says this controller may
    /// no longer act as the leader: a controller that lost the lease sends nothing more.
    pub fn only_while(&self, leadership: std::sync::Arc<crate::leader::Leadership>) {
        let _ = self.leadership.set(leadership);
    }

    /// The stream to a host that is up, for sending it commands.
    pub fn outbound(&self, host: &str) -> Option<Outbound> {
        if self.leadership.get().is_some_and(|l| !l.may_send()) {
            return None;
        }
        let live = self.live.lock().expect("sessions lock");
        live.get(host)
            .and_then(|l| alive(l.last_heartbeat, l.interval, Instant::now()).then(|| l.tx.clone()))
    }

    /// Queues `msg` on every stream; a stream whose queue is full misses it (the agent is
    /// not reading, and is told again on its next session). Senders are copied out under
    /// the lock and sent to outside it, so sessions come and go meanwhile. For rare,
    /// fleet-wide news only: it touches every session. Returns how many took it.
    pub fn broadcast(&self, msg: impl Fn() -> Down) -> usize {
        if self.leadership.get().is_some_and(|l| !l.may_send()) {
            return 0;
        }
        let all: Vec<Outbound> = self
            .live
            .lock()
            .expect("sessions lock")
            .values()
            .map(|l| l.tx.clone())
            .collect();
        all.iter().filter(|tx| tx.try_send(msg()).is_ok()).count()
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

    /// The window `close_all` asked agents to spread their return over.
    pub fn return_spread(&self) -> Duration {
        Duration::from_millis(self.return_spread_ms.load(Ordering::Relaxed))
    }

    /// Sessions whose heartbeats are current; one pass, for a metrics scrape.
    pub fn count_up(&self) -> usize {
        let now = Instant::now();
        let live = self.live.lock().expect("sessions lock");
        live.values()
            .filter(|l| alive(l.last_heartbeat, l.interval, now))
            .count()
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
    fn a_host_is_up_for_three_intervals_after_its_last_heartbeat() {
        let t0 = Instant::now();
        let i = Duration::from_millis(100);
        assert!(alive(t0, i, t0 + Duration::from_millis(300)));
        assert!(!alive(t0, i, t0 + Duration::from_millis(301)));
        // A clock read before the heartbeat (another thread) is not "dead".
        assert!(alive(t0 + Duration::from_millis(5), i, t0));
        let s = Sessions::default();
        let (id, _close) = s.register("h", "a".into(), Duration::from_secs(10), tx());
        s.heartbeat("h", id);
        assert_eq!(s.up("h").as_deref(), Some("a"));
    }

    #[test]
    fn a_down_message_slot_is_two_words() {
        // Every session's channel holds 32 of these whether used or not.
        assert!(
            std::mem::size_of::<Down>() <= 16,
            "{}",
            std::mem::size_of::<Down>()
        );
    }

    #[test]
    fn the_return_spread_grows_with_the_fleet_within_bounds() {
        assert_eq!(return_spread(10), MIN_RETURN_SPREAD);
        assert_eq!(return_spread(19_000), Duration::from_secs(19));
        assert_eq!(return_spread(50_000), Duration::from_secs(50));
        assert_eq!(return_spread(10_000_000), MAX_RETURN_SPREAD);
    }

    #[test]
    fn close_all_ends_every_session_and_names_the_hosts() {
        let s = Sessions::default();
        let (_, mut a) = s.register("a", "x".into(), Duration::from_secs(10), tx());
        let (_, mut b) = s.register("b", "y".into(), Duration::from_secs(10), tx());
        let mut hosts = s.close_all("bye");
        hosts.sort();
        assert_eq!(hosts, ["a", "b"]);
        assert_eq!(a.try_recv().unwrap(), "bye");
        assert_eq!(b.try_recv().unwrap(), "bye");
        assert_eq!(s.count(), 0);
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
