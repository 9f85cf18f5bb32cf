//! Which controller runs the calls, when several share one PostgreSQL store
//! (docs/ha.md): the one that holds the leader lease. The others wait as standbys,
//! relaying the calls they take to it (`relay/`), and take the lease when it expires.
//!
//! The lease row has an epoch and an expiry on the database's clock (`store::pg`). The
//! holder renews it every third of its lifetime and fences the store with its epoch, so
//! every write it makes is checked, inside the write's own transaction, against the row:
//! a controller that lost the lease (paused past its expiry, cut off from the database)
//! writes nothing more. It also sends nothing more: `may_send` turns false on its own
//! monotonic clock before the database's expiry can pass, and commands to agents check it
//! (`Sessions::outbound`). A controller that sees it lost the lease exits, so systemd
//! starts it again as a standby; stopping every task of a running controller in place
//! would be a second, rarely tested way to stop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::pg::LeaseHolder;
use crate::store::{Store, StoreError};

/// Exit status of a controller that lost the lease (EX_TEMPFAIL: try again).
pub const LOST_LEASE_EXIT: i32 = 75;

pub struct Leadership {
    pub holder: LeaseHolder,
    pub epoch: i64,
    ttl: Duration,
    /// When this controller acquired the lease, the zero of `valid_until_ms`.
    base: Instant,
    /// Until when (ms after `base`, on the monotonic clock) this controller may act as
    /// leader: the start of its last successful renewal plus the lifetime, less a margin.
    /// The database's expiry is later still, as the renewal set it after that start.
    valid_until_ms: AtomicU64,
}

impl Leadership {
    /// Whether this controller may still act as the leader (send commands to agents).
    pub fn may_send(&self) -> bool {
        (self.base.elapsed().as_millis() as u64) < self.valid_until_ms.load(Ordering::Relaxed)
    }

    fn extend_from(&self, renewal_start: Instant) {
        let margin = self.ttl / 5;
        let until = renewal_start.saturating_duration_since(self.base) + self.ttl - margin;
        self.valid_until_ms
            .store(until.as_millis() as u64, Ordering::Relaxed);
    }
}

/// This process's name in the lease: the host name and PID, so a restarted controller is
/// a new holder and never mistakes its predecessor's lease for its own.
pub fn holder_name() -> LeaseHolder {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let host = if host.is_empty() {
        "controller".into()
    } else {
        host
    };
    LeaseHolder::new(&format!("{host}-{}", std::process::id()))
        .expect("built from allowed characters")
}

/// Waits, as a standby, until this controller holds the lease; then fences the store
/// with it. Logs who leads meanwhile, once per change.
pub async fn wait_to_lead(
    store: Arc<Store>,
    holder: LeaseHolder,
    ttl: Duration,
) -> Result<Arc<Leadership>, StoreError> {
    let mut last_seen: Option<(String, i64)> = None;
    loop {
        let started = Instant::now();
        let (s, h) = (store.clone(), holder.clone());
        let got = tokio::task::spawn_blocking(move || {
            let epoch = s.acquire_lease(&h, ttl)?;
            let who = match epoch {
                Some(_) => None,
                None => s.lease_holder()?,
            };
            Ok::<_, StoreError>((epoch, who))
        })
        .await
        .expect("lease task");
        match got {
            Ok((Some(epoch), _)) => {
                store.fence(&holder, epoch);
                let leadership = Leadership {
                    holder,
                    epoch,
                    ttl,
                    base: started,
                    valid_until_ms: AtomicU64::new(0),
                };
                leadership.extend_from(started);
                tracing::info!(holder = %leadership.holder, epoch, "this controller holds the leader lease");
                return Ok(Arc::new(leadership));
            }
            Ok((None, Some((who, epoch, _)))) => {
                if last_seen.as_ref() != Some(&(who.clone(), epoch)) {
                    tracing::info!(leader = %who, epoch, "standby: another controller leads");
                    crate::systemd::ready(&format!("standby: {who} leads (epoch {epoch})"));
                    last_seen = Some((who, epoch));
                }
            }
            Ok((None, None)) => {}
            Err(e) => tracing::warn!(error = %e, "standby: cannot read the leader lease"),
        }
        tokio::time::sleep(poll_interval(ttl)).await;
    }
}

/// A standby asks this often: a fifth of the lease's lifetime, at least 200 ms.
fn poll_interval(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(200))
}

/// Renews the lease every third of its lifetime until it is lost, then ends the process.
pub async fn keep(store: Arc<Store>, leadership: Arc<Leadership>) {
    let every = leadership.ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        loop {
            let start = Instant::now();
            let (s, l) = (store.clone(), leadership.clone());
            let renewed =
                tokio::task::spawn_blocking(move || s.renew_lease(&l.holder, l.epoch, l.ttl))
                    .await
                    .expect("lease task");
            match renewed {
                Ok(true) => {
                    leadership.extend_from(start);
                    break;
                }
                Ok(false) => lost(&leadership, "another controller holds it now"),
                Err(e) if leadership.may_send() => {
                    tracing::warn!(error = %e, "cannot renew the leader lease; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => lost(&leadership, &e.to_string()),
            }
        }
    }
}

fn lost(leadership: &Leadership, why: &str) -> ! {
    tracing::error!(
        holder = %leadership.holder,
        epoch = leadership.epoch,
        "lost the leader lease ({why}): exiting, to start again as a standby"
    );
    std::process::exit(LOST_LEASE_EXIT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_ends_on_the_local_clock_before_the_lease_can_expire() {
        let ttl = Duration::from_secs(60);
        let now = Instant::now();
        let leadership = |base: Instant| Leadership {
            holder: LeaseHolder::new("t").unwrap(),
            epoch: 1,
            ttl,
            base,
            valid_until_ms: AtomicU64::new(0),
        };
        let l = leadership(now);
        assert!(!l.may_send(), "not before the first renewal");
        l.extend_from(now);
        assert!(l.may_send());
        // Renewed 50 s ago with a 60 s lifetime: the lease may still be in the database,
        // but a fifth of the lifetime is kept as margin, so this controller stops now.
        let past = now
            .checked_sub(Duration::from_secs(50))
            .expect("the monotonic clock counts from boot");
        let l = leadership(past);
        l.extend_from(past);
        assert!(!l.may_send());
    }

    #[test]
    fn a_holder_name_is_a_valid_lease_name() {
        let h = holder_name();
        assert!(h.as_str().ends_with(&format!("-{}", std::process::id())));
        assert_eq!(
            poll_interval(Duration::from_secs(6)),
            Duration::from_millis(1200)
        );
    }
}
