//! A value read from the store at most once per `ttl`, for paths that run once per
//! session or per message: a reconnect wave of 50,000 agents must not be 50,000 store
//! round trips (on PostgreSQL, a count of the hosts is a scan of them) for a figure that
//! changes rarely and may be a few seconds old.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Cached<T> {
    ttl: Duration,
    slot: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Cached<T> {
    pub const fn new(ttl: Duration) -> Self {
        Cached {
            ttl,
            slot: Mutex::new(None),
        }
    }

    /// The kept value while it is fresh, else `read`'s, kept. A failed read keeps the last
    /// value (or `fallback`'s) for another `ttl`, so a store that is down is not asked
    /// again by every session; the error is logged as `what`. One caller reads at a
    /// time; the others wait for its value rather than read too.
    pub fn get<E: std::fmt::Display>(
        &self,
        what: &str,
        read: impl FnOnce() -> Result<T, E>,
        fallback: impl FnOnce() -> T,
    ) -> T {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, v)) = slot.as_ref() {
            if at.elapsed() < self.ttl {
                return v.clone();
            }
        }
        let v = match read() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read {what}; using the last known");
                slot.as_ref().map_or_else(fallback, |(_, v)| v.clone())
            }
        };
        *slot = Some((Instant::now(), v.clone()));
        v
    }

    /// Replaces the kept value (this controller just changed it).
    pub fn set(&self, v: T) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_once_per_ttl_and_keeps_the_last_value_on_failure() {
        let c = Cached::new(Duration::from_secs(60));
        let mut reads = 0;
        let mut read = |v: Result<u32, &str>| {
            c.get(
                "x",
                || {
                    reads += 1;
                    v
                },
                || 0,
            )
        };
        assert_eq!(read(Ok(1)), 1);
        assert_eq!(read(Ok(2)), 1, "fresh: not read again");
        assert_eq!(reads, 1);
        let stale = Cached::new(Duration::ZERO);
        assert_eq!(stale.get("x", || Ok::<_, &str>(5), || 0), 5);
        assert_eq!(stale.get("x", || Err("down"), || 0), 5, "last known kept");
        let empty: Cached<u32> = Cached::new(Duration::ZERO);
        assert_eq!(empty.get("x", || Err("down"), || 7), 7);
        empty.set(9);
        assert_eq!(empty.get("x", || Err("down"), || 7), 9);
    }
}
