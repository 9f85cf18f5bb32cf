//! Rollouts running in this process: their record under a lock, the operator's control
//! signal, and the event stream every watcher follows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fleet_proto::v1::{RolloutEvent, RolloutInfo};
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::record::Record;
use crate::shared::Shared;
use crate::timefmt::now_ms;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Run,
    Pause,
    Abort,
    /// A newer rollout of the app (`--force`) ends this one's bake.
    EndBake,
}

/// A rollout the engine is running in this process.
///
/// Steps change the record in memory and are written by one writer task (`persist`),
/// which coalesces them: the hosts of a batch finish within milliseconds of each other,
/// and writing the whole record (it holds every host) once per host step would cost
/// O(hosts) bytes and one fsync per step, O(hosts²) per rollout. The engine waits for the
/// record to be durable before each new phase (`durable`), so a crash loses at most the
/// host steps of the phase in flight, which resume re-runs (activating a host again with
/// the release it already reached changes nothing).
pub struct Live {
    rec: Mutex<Record>,
    events: broadcast::Sender<RolloutEvent>,
    pub(crate) control: watch::Sender<Control>,
    /// Steps taken, bumped under the record lock.
    taken: AtomicU64,
    /// The last step the store holds.
    written: watch::Sender<u64>,
    dirty: Notify,
    /// The fleet-wide event stream (`fleetctl events`), which gets every step too.
    fleet_events: Arc<crate::events::Events>,
}

#[derive(Default)]
pub struct Rollouts(Mutex<HashMap<String, Arc<Live>>>);

impl Rollouts {
    pub(crate) fn get(&self, app: &str) -> Option<Arc<Live>> {
        self.0.lock().expect("rollouts lock").get(app).cloned()
    }

    /// A rollout of `app` runs in this process.
    pub fn active(&self, app: &str) -> bool {
        self.get(app).is_some()
    }

    /// Registers a rollout; refuses a second one for the same app.
    pub(crate) fn insert(
        &self,
        rec: Record,
        fleet_events: Arc<crate::events::Events>,
    ) -> Result<Arc<Live>, Status> {
        let mut map = self.0.lock().expect("rollouts lock");
        if let Some(other) = map.get(&rec.app) {
            let r = other.rec.lock().expect("record lock");
            return Err(Status::failed_precondition(format!(
                "{} already has a rollout {} ({} to {}): see `fleetctl rollout status {}`, or `fleetctl rollout abort {}`",
                r.app, r.id, r.state.as_str(), r.version, r.app, r.app
            )));
        }
        let live = Arc::new(Live {
            rec: Mutex::new(rec.clone()),
            events: broadcast::channel(4096).0,
            control: watch::channel(Control::Run).0,
            taken: AtomicU64::new(0),
            written: watch::channel(0).0,
            dirty: Notify::new(),
            fleet_events,
        });
        map.insert(rec.app.clone(), live.clone());
        Ok(live)
    }

    pub(crate) fn remove(&self, app: &str) {
        self.0.lock().expect("rollouts lock").remove(app);
    }
}

impl Live {
    pub(crate) fn rec(&self) -> Record {
        self.rec.lock().expect("record lock").clone()
    }

    /// Applies `f`, has the writer persist the record, and announces the event to every
    /// watcher.
    pub(crate) fn step(
        &self,
        kind: &str,
        host: &str,
        batch: usize,
        message: &str,
        f: impl FnOnce(&mut Record),
    ) {
        let mut rec = self.rec.lock().expect("record lock");
        f(&mut rec);
        self.taken.fetch_add(1, Ordering::SeqCst);
        self.dirty.notify_one();
        tracing::info!(rollout = %rec.id, app = %rec.app, kind, host, batch, state = rec.state.as_str(), message, "rollout");
        self.fleet_events.publish(
            "rollout",
            host,
            &rec.app,
            format!("{} {kind} (batch {batch}): {message}", rec.version),
        );
        let _ = self.events.send(RolloutEvent {
            time_ms: now_ms(),
            kind: kind.into(),
            host: host.into(),
            batch: batch as u32,
            message: message.into(),
            info: Some(rec.info()),
        });
    }
}

impl Live {
    /// Waits until every step taken so far is in the store.
    pub(crate) async fn durable(&self) {
        let want = self.taken.load(Ordering::SeqCst);
        let mut written = self.written.subscribe();
        let _ = written.wait_for(|w| *w >= want).await;
    }
}

/// The record's one writer: whenever steps were taken, writes the latest record on a
/// blocking thread (the commit fsyncs). Runs until aborted by the engine.
pub(crate) async fn persist(shared: Arc<Shared>, live: Arc<Live>) {
    loop {
        live.dirty.notified().await;
        let (rec, upto) = {
            let rec = live.rec.lock().expect("record lock");
            (rec.clone(), live.taken.load(Ordering::SeqCst))
        };
        let s = shared.clone();
        let id = rec.id.clone();
        match tokio::task::spawn_blocking(move || s.store.put_rollout(&rec.id, &rec)).await {
            Ok(Ok(())) => {
                live.written.send_replace(upto);
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(())) => unreachable!("matched above"),
                };
                tracing::error!(rollout = %id, %error, "cannot persist rollout steps; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                live.dirty.notify_one();
            }
        }
    }
}

pub type EventStream = ReceiverStream<Result<RolloutEvent, Status>>;

/// Streams `live`'s events from a snapshot on; ends after "finished".
pub(crate) fn follow(live: &Arc<Live>) -> EventStream {
    let (tx, rx) = mpsc::channel(256);
    let (snapshot, mut sub) = {
        // Under the record lock: no event can fall between the snapshot and the subscription.
        let rec = live.rec.lock().expect("record lock");
        (rec.info(), live.events.subscribe())
    };
    tokio::spawn(async move {
        let first = RolloutEvent {
            time_ms: now_ms(),
            kind: "snapshot".into(),
            info: Some(snapshot),
            ..Default::default()
        };
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            match sub.recv().await {
                Ok(ev) => {
                    let last = ev.kind == "finished";
                    if tx.send(Ok(ev)).await.is_err() || last {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

pub(crate) fn single(info: RolloutInfo) -> EventStream {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(RolloutEvent {
        time_ms: now_ms(),
        kind: "snapshot".into(),
        info: Some(info),
        ..Default::default()
    }));
    ReceiverStream::new(rx)
}
