//! The fleet's live event stream (`fleetctl events -f`): what happens as it happens, from
//! the places that see it (sessions, app and firewall reports, rollouts, the audit log).
//! Published events go to a bounded ring of recent ones and to a broadcast channel; a
//! reader too slow for the channel is told how many it missed instead of holding anyone
//! up. Nothing here touches the disk: the audit log stays the durable record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fleet_proto::v1::{EventsRequest, FleetEvent};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::timefmt::now_ms;

/// Recent events kept for a reader that just arrived.
const RING: usize = 1000;
/// Recent events sent first when the request does not say.
const DEFAULT_LAST: usize = 50;
/// Events a live reader may be behind before it starts missing some.
const CHANNEL: usize = 4096;
/// Longest message kept (agents' texts are quoted into some).
const MAX_MESSAGE: usize = 512;

pub struct Events {
    ring: Mutex<VecDeque<Arc<FleetEvent>>>,
    tx: broadcast::Sender<Arc<FleetEvent>>,
    seq: AtomicU64,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            tx: broadcast::channel(CHANNEL).0,
            seq: AtomicU64::new(0),
        }
    }
}

fn matches(e: &FleetEvent, req: &EventsRequest) -> bool {
    (req.app.is_empty() || e.app == req.app) && (req.host.is_empty() || e.host == req.host)
}

impl Events {
    pub fn publish(&self, kind: &str, host: &str, app: &str, message: impl Into<String>) {
        let mut message: String = message.into();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let mut ring = self.ring.lock().expect("events lock");
        // Numbered under the lock: the ring and the channel see one order.
        let event = Arc::new(FleetEvent {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            time_ms: now_ms(),
            kind: kind.into(),
            host: host.into(),
            app: app.into(),
            message,
        });
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(event.clone());
        // No receiver is not an error: nobody is watching.
        let _ = self.tx.send(event);
    }

    /// The recent events that match, then (with `follow`) each new one.
    pub fn stream(
        &self,
        req: EventsRequest,
    ) -> Result<ReceiverStream<Result<FleetEvent, Status>>, Status> {
        let last = match req.last as usize {
            0 => DEFAULT_LAST,
            n => n.min(RING),
        };
        let (recent, mut live) = {
            let ring = self.ring.lock().expect("events lock");
            let recent: Vec<Arc<FleetEvent>> = ring
                .iter()
                .filter(|e| matches(e, &req))
                .rev()
                .take(last)
                .cloned()
                .collect();
            // Subscribed under the lock: no event falls between the ring and the channel.
            (recent, self.tx.subscribe())
        };
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for e in recent.into_iter().rev() {
                if tx.send(Ok((*e).clone())).await.is_err() {
                    return;
                }
            }
            if !req.follow {
                return;
            }
            loop {
                let e = match live.recv().await {
                    Ok(e) if matches(&e, &req) => (*e).clone(),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => FleetEvent {
                        time_ms: now_ms(),
                        kind: "lost".into(),
                        message: format!("{n} events were missed: this reader fell behind"),
                        ..Default::default()
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn recent_events_first_then_live_ones_filtered() {
        let ev = Events::default();
        ev.publish("host.up", "h1", "", "up");
        ev.publish("app.health", "h2", "shop", "unhealthy");
        ev.publish("audit", "", "shop", "x".repeat(2000));
        let mut s = ev
            .stream(EventsRequest {
                follow: true,
                app: "shop".into(),
                ..Default::default()
            })
            .unwrap();
        let a = s.next().await.unwrap().unwrap();
        assert_eq!((a.kind.as_str(), a.seq), ("app.health", 2));
        let b = s.next().await.unwrap().unwrap();
        assert!(b.message.len() <= MAX_MESSAGE + '…'.len_utf8());
        ev.publish("host.down", "h1", "", "down");
        ev.publish("app.crash", "h2", "shop", "crashed");
        let c = s.next().await.unwrap().unwrap();
        assert_eq!((c.kind.as_str(), c.seq), ("app.crash", 5));
    }

    #[tokio::test]
    async fn the_ring_is_bounded_and_last_counts_back() {
        let ev = Events::default();
        for i in 0..(RING + 10) {
            ev.publish("audit", "", "", format!("{i}"));
        }
        let all: Vec<_> = ev
            .stream(EventsRequest {
                last: 5000,
                ..Default::default()
            })
            .unwrap()
            .collect()
            .await;
        assert_eq!(all.len(), RING);
        assert_eq!(all[0].as_ref().unwrap().message, "10");
        let three: Vec<_> = ev
            .stream(EventsRequest {
                last: 3,
                ..Default::default()
            })
            .unwrap()
            .collect()
            .await;
        let msgs: Vec<String> = three.into_iter().map(|e| e.unwrap().message).collect();
        assert_eq!(msgs, ["1007", "1008", "1009"]);
    }
}
