//! Rollouts running in this process: their record under a lock, the operator's control
//! signal, and the event stream every watcher follows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fleet_proto::v1::{RolloutEvent, RolloutInfo};
use tokio::sync::{broadcast, mpsc, watch};
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
}

/// A rollout the engine is running in this process.
pub struct Live {
    rec: Mutex<Record>,
    events: broadcast::Sender<RolloutEvent>,
    pub(crate) control: watch::Sender<Control>,
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
    pub(crate) fn insert(&self, rec: Record) -> Result<Arc<Live>, Status> {
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

    /// Applies `f`, persists the record, and announces the event to every watcher.
    pub(crate) fn step(
        &self,
        shared: &Shared,
        kind: &str,
        host: &str,
        batch: usize,
        message: &str,
        f: impl FnOnce(&mut Record),
    ) {
        let mut rec = self.rec.lock().expect("record lock");
        f(&mut rec);
        if let Err(e) = shared.store.put_rollout(&rec.id, &*rec) {
            tracing::error!(rollout = %rec.id, error = %e, "cannot persist rollout step");
        }
        tracing::info!(rollout = %rec.id, app = %rec.app, kind, host, batch, state = rec.state.as_str(), message, "rollout");
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
