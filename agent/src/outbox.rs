//! How long-lived agent parts (the app manager, log tails) reach the controller: through
//! whichever session is live. Sessions attach their outbox for their lifetime; between
//! sessions, events are kept (bounded) and states are simply resent after the next
//! Welcome, so nothing waits on a connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::v1::{agent_message, AgentMessage, Event};
use tokio::sync::{mpsc, watch};

/// Events kept while disconnected; older ones are dropped (the state resync still tells
/// the truth about now).
const MAX_PENDING_EVENTS: usize = 64;
/// A controller that does not read for this long loses the message, not the agent's time.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Default)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (session number, its outbox); a watch so tails notice the session ending.
    current: watch::Sender<Option<(u64, mpsc::Sender<AgentMessage>)>>,
    sessions: AtomicU64,
    pending: Mutex<VecDeque<Event>>,
}

/// Keeps a session attached; dropping it detaches it.
#[must_use = "the outbox is detached when this is dropped"]
pub struct Attached {
    inner: Arc<Inner>,
    session: u64,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let session = self.session;
        self.inner.current.send_if_modified(|c| match c {
            Some((s, _)) if *s == session => {
                *c = None;
                true
            }
            _ => false,
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Outbox {
    pub fn attach(&self, tx: mpsc::Sender<AgentMessage>) -> Attached {
        let session = self.inner.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.current.send_replace(Some((session, tx)));
        Attached {
            inner: self.inner.clone(),
            session,
        }
    }

    /// The live session's number, if any.
    pub fn session(&self) -> Option<u64> {
        self.inner.current.borrow().as_ref().map(|(s, _)| *s)
    }

    /// Resolves when the live session is no longer `session`.
    pub async fn session_ended(&self, session: u64) {
        let mut rx = self.inner.current.subscribe();
        // Err: the sender is gone, i.e. the agent is stopping; ending is right then too.
        let _ = rx
            .wait_for(|c| c.as_ref().map(|(s, _)| *s) != Some(session))
            .await;
    }

    /// Sends through the live session; false when there is none or it does not read.
    pub async fn send(&self, body: agent_message::Body) -> bool {
        self.send_to(None, body).await
    }

    /// Like `send`, but only through session `session` (a log tail belongs to the session
    /// that asked for it).
    pub async fn send_to(&self, session: Option<u64>, body: agent_message::Body) -> bool {
        let tx = match self.inner.current.borrow().as_ref() {
            Some((s, tx)) if session.is_none_or(|want| want == *s) => tx.clone(),
            _ => return false,
        };
        let msg = AgentMessage { body: Some(body) };
        matches!(
            tokio::time::timeout(SEND_TIMEOUT, tx.send(msg)).await,
            Ok(Ok(()))
        )
    }

    /// Sends an event now, or keeps it for the next session.
    pub async fn event(&self, ev: Event) {
        if !self.send(agent_message::Body::Event(ev.clone())).await {
            let mut q = lock(&self.inner.pending);
            if q.len() == MAX_PENDING_EVENTS {
                q.pop_front();
            }
            q.push_back(ev);
        }
    }

    /// Sends the events kept while disconnected (called after Welcome).
    pub async fn flush_events(&self) {
        let events: Vec<Event> = lock(&self.inner.pending).drain(..).collect();
        for (i, ev) in events.iter().enumerate() {
            if !self.send(agent_message::Body::Event(ev.clone())).await {
                // Lost the session again: keep the rest, in order.
                let mut q = lock(&self.inner.pending);
                for ev in events[i..].iter().rev() {
                    q.push_front(ev.clone());
                }
                q.truncate(MAX_PENDING_EVENTS);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize) -> Event {
        Event {
            kind: "crash".into(),
            subject: format!("app{n}"),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn events_wait_for_the_next_session_bounded() {
        let out = Outbox::default();
        for n in 0..MAX_PENDING_EVENTS + 3 {
            out.event(ev(n)).await;
        }
        let (tx, mut rx) = mpsc::channel(256);
        let guard = out.attach(tx);
        out.flush_events().await;
        let mut got = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(agent_message::Body::Event(e)) = m.body {
                got.push(e.subject);
            }
        }
        assert_eq!(got.len(), MAX_PENDING_EVENTS);
        assert_eq!(got[0], "app3", "oldest dropped first");
        let s = out.session().unwrap();
        drop(guard);
        assert_eq!(out.session(), None);
        out.session_ended(s).await;
        assert!(
            !out.send_to(Some(s), agent_message::Body::Event(ev(0)))
                .await
        );
    }
}
