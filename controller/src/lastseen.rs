//! When each host was last connected. Sessions start and end in waves (a controller
//! restart brings every agent back within seconds), so the time is kept in memory and
//! written to the store in one transaction per `FLUSH_EVERY`, not one fsync'd commit per
//! session: 50,000 reconnects cost a handful of commits. A crash loses at most one
//! interval of "last seen" times, which only matter for hosts that are down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::shared::Shared;
use crate::store::{Store, StoreError};

pub const FLUSH_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct LastSeen {
    /// Host -> milliseconds since the epoch, not yet in the store.
    pending: Mutex<HashMap<String, i64>>,
}

impl LastSeen {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn touch(&self, host: &str, at_ms: i64) {
        let mut p = self.lock();
        let e = p.entry(host.to_owned()).or_insert(at_ms);
        *e = (*e).max(at_ms);
    }

    /// The time not yet written, if any; newer than the store's.
    pub fn get(&self, host: &str) -> Option<i64> {
        self.lock().get(host).copied()
    }

    /// The host was removed: nothing of it is written back.
    pub fn forget(&self, host: &str) {
        self.lock().remove(host);
    }

    /// Writes every pending time in one transaction. On failure the times stay pending
    /// (merged with any newer ones) for the next flush.
    pub fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let batch = std::mem::take(&mut *self.lock());
        if batch.is_empty() {
            return Ok(0);
        }
        match store.record_last_seen(&batch) {
            Ok(n) => Ok(n),
            Err(e) => {
                let mut p = self.lock();
                for (host, at) in batch {
                    let e = p.entry(host).or_insert(at);
                    *e = (*e).max(at);
                }
                Err(e)
            }
        }
    }
}

/// Flushes on a timer, on a blocking thread (the commit fsyncs).
pub async fn keep_flushing(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || s.last_seen.flush(&s.store)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot record when hosts were last seen; retrying")
            }
            Err(e) => tracing::warn!(error = %e, "last-seen flush task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_time_and_forgets_removed_hosts() {
        let l = LastSeen::default();
        l.touch("a", 10);
        l.touch("a", 5);
        assert_eq!(l.get("a"), Some(10));
        l.touch("b", 1);
        l.forget("b");
        assert_eq!(l.get("b"), None);
    }
}
