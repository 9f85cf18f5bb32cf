//! Per-source token buckets for the join call, the one RPC open to anyone: guessing
//! tokens or flooding CSR signing costs an attacker time, not us CPU.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources (or tokens) tracked at once; beyond this, new keys share one bucket until the
/// older ones are forgotten, so a spray of addresses costs bounded memory and gets no
/// more attempts than one address would.
const MAX_KEYS: usize = 100_000;

/// One token bucket: `tokens` as of `at`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, burst: f64, per_second: f64, now: Instant) -> Result<(), Duration> {
        let refilled = (self.tokens
            + now.saturating_duration_since(self.at).as_secs_f64() * per_second)
            .min(burst);
        self.at = now;
        if refilled >= 1.0 {
            self.tokens = refilled - 1.0;
            Ok(())
        } else {
            self.tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / per_second))
        }
    }
}

/// Token buckets by key, O(1) amortised per check. A bucket untouched for `refill` (the
/// longest any bucket takes to fill up) is full, which is what a missing one means: so
/// instead of scanning for such buckets, the map is split into two generations, and
/// every `refill` the older one is dropped whole and the current one becomes the older.
/// A key found in the older generation moves to the current one; one in neither starts
/// full.
struct Buckets<K> {
    refill: Duration,
    current: HashMap<K, Bucket>,
    previous: HashMap<K, Bucket>,
    rotated_at: Instant,
    /// Shared by the keys that arrive while `current` holds `MAX_KEYS`.
    overflow: Bucket,
    max_keys: usize,
}

impl<K: Hash + Eq> Buckets<K> {
    fn new(refill: Duration, max_keys: usize, now: Instant) -> Self {
        Buckets {
            refill,
            current: HashMap::new(),
            previous: HashMap::new(),
            rotated_at: now,
            overflow: Bucket {
                tokens: 0.0,
                at: now,
            },
            max_keys,
        }
    }

    fn check(&mut self, key: K, burst: f64, per_second: f64, now: Instant) -> Result<(), Duration> {
        let since = now.saturating_duration_since(self.rotated_at);
        if since >= self.refill {
            // Every bucket in `previous` was last touched before the last rotation, at
            // least `refill` ago; after two periods, the same holds for `current`.
            self.previous = if since >= self.refill * 2 {
                self.current.clear();
                HashMap::new()
            } else {
                std::mem::take(&mut self.current)
            };
            self.rotated_at = now;
        }
        if let Some(bucket) = self.current.get_mut(&key) {
            return bucket.take(burst, per_second, now);
        }
        let moved = self.previous.remove(&key);
        if moved.is_none() && self.current.len() >= self.max_keys {
            return self.overflow.take(burst, per_second, now);
        }
        self.current
            .entry(key)
            .or_insert(moved.unwrap_or(Bucket::full(burst, now)))
            .take(burst, per_second, now)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// The join limiter: per source address, and per bulk token for joins presenting one.
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    buckets: Buckets<IpAddr>,
    bulk: BulkLimiter,
}

impl RateLimiter {
    /// `burst` attempts at once, refilled at `per_minute`.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        let burst = burst.max(1) as f64;
        let per_second = per_minute.max(1) as f64 / 60.0;
        RateLimiter {
            burst,
            per_second,
            buckets: Buckets::new(
                Duration::from_secs_f64(burst / per_second),
                MAX_KEYS,
                Instant::now(),
            ),
            bulk: BulkLimiter::default(),
        }
    }

    /// Takes one attempt for `ip`; on refusal says how long until the next one is allowed.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.buckets.check(ip, self.burst, self.per_second, now)
    }

    /// Takes one join for the bulk token with hash `token_hash`, at its own rate.
    pub fn check_bulk(
        &mut self,
        token_hash: &str,
        per_minute: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        self.bulk.check(token_hash, per_minute, now)
    }
}

/// A fleet-wide bucket on top of the per-source ones: many source addresses (a botnet, or
/// a spoofable network) must not multiply what one is allowed.
pub struct GlobalLimiter {
    burst: f64,
    per_second: f64,
    bucket: Bucket,
}

impl GlobalLimiter {
    pub fn new(burst: u32, per_minute: u32) -> Self {
        let burst = burst.max(1) as f64;
        GlobalLimiter {
            burst,
            per_second: per_minute.max(1) as f64 / 60.0,
            bucket: Bucket::full(burst, Instant::now()),
        }
    }

    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        self.bucket.take(self.burst, self.per_second, now)
    }
}

/// Highest join rate a bulk token may be given, per minute (10,000 a second: far above
/// what CSR signing allows, so the token's own use count is then the only bound).
pub const MAX_BULK_PER_MINUTE: u32 = 600_000;

/// Buckets of the bulk join tokens (`fleetctl token create --bulk`), keyed by token hash:
/// a join presenting a valid bulk token is limited by that token's own rate instead of its
/// source address's and the fleet-wide one, so a thousand hosts behind one NAT can enroll
/// at once. Each token allows a second's worth of joins at once.
struct BulkLimiter {
    buckets: Buckets<String>,
}

impl Default for BulkLimiter {
    fn default() -> Self {
        BulkLimiter {
            // A second's worth at a rate of at least one a minute refills within 60 s.
            buckets: Buckets::new(Duration::from_secs(60), MAX_KEYS, Instant::now()),
        }
    }
}

impl BulkLimiter {
    pub fn check(
        &mut self,
        token_hash: &str,
        per_minute: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        let per_minute = per_minute.clamp(1, MAX_BULK_PER_MINUTE);
        let burst = per_minute.div_ceil(60) as f64;
        self.buckets
            .check(token_hash.to_owned(), burst, per_minute as f64 / 60.0, now)
    }
}

/// Lets at most `per_window` log lines of one kind through per window and counts the rest,
/// so that a flood of refused calls costs a few lines a second, not one per call.
pub struct LogThrottle {
    per_window: u32,
    window: Duration,
    state: std::sync::Mutex<(Instant, u32, u64)>,
}

impl LogThrottle {
    pub fn new(per_window: u32, window: Duration) -> Self {
        LogThrottle {
            per_window,
            window,
            state: std::sync::Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(n)` when this line may be logged, `n` being how many were suppressed since
    /// the last one that was; `None` when it must be dropped.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().expect("log throttle lock");
        let (start, logged, suppressed) = &mut *st;
        if now.saturating_duration_since(*start) >= self.window {
            *start = now;
            *logged = 0;
        }
        if *logged < self.per_window {
            *logged += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary, with a marker when cut: for
/// caller-supplied strings that reach a log line or an error message.
pub fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &s[..end], s.len()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut rl = RateLimiter::new(3, 60);
        let ip: IpAddr = "198.18.0.11".parse().unwrap();
        let other: IpAddr = "198.18.0.12".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check(ip, t0).is_ok());
        }
        let wait = rl.check(ip, t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        assert!(rl.check(other, t0).is_ok(), "sources are independent");
        assert!(rl.check(ip, t0 + Duration::from_millis(1100)).is_ok());
    }

    #[test]
    fn idle_buckets_are_forgotten_without_a_scan_and_nothing_is_forgotten_early() {
        // 3 at once, one per 10 s: any bucket is full again 30 s after its last use.
        let (burst, rate) = (3.0, 0.1);
        let t0 = Instant::now();
        let mut b: Buckets<u32> = Buckets::new(Duration::from_secs(30), 1000, t0);
        for k in 0..500 {
            b.check(k, burst, rate, t0).unwrap();
        }
        // Key 0 drained just before the rotation ...
        let late = t0 + Duration::from_secs(29);
        for _ in 0..3 {
            b.check(0, burst, rate, late).unwrap();
        }
        assert!(b.check(0, burst, rate, late).is_err());
        // ... keeps its state across it (0.1 tokens), not a fresh burst.
        let t1 = t0 + Duration::from_secs(30);
        assert!(
            b.check(0, burst, rate, t1).is_err(),
            "a drained bucket must survive the rotation"
        );
        assert_eq!(b.len(), 500, "the rest moved to the older generation");
        // Two periods later both generations are dropped whole, without a scan.
        let t2 = t1 + Duration::from_secs(60);
        b.check(7, burst, rate, t2).unwrap();
        assert_eq!(b.len(), 1, "{} buckets kept", b.len());
    }

    #[test]
    fn a_spray_of_sources_shares_one_bucket_beyond_the_cap() {
        let t0 = Instant::now();
        let mut b: Buckets<u32> = Buckets::new(Duration::from_secs(60), 100, t0);
        for k in 0..100 {
            b.check(k, 2.0, 1.0, t0).unwrap();
        }
        // New keys past the cap all draw from the shared overflow bucket (empty at
        // start): none gets a fresh burst of its own.
        let refused = (100..1000)
            .filter(|&k| b.check(k, 2.0, 1.0, t0).is_err())
            .count();
        assert_eq!(refused, 900);
        assert_eq!(b.len(), 100, "memory stays bounded");
        // Known keys still have their own buckets.
        assert!(b.check(5, 2.0, 1.0, t0).is_ok());
    }

    #[test]
    fn per_source_limit_over_many_sources_stays_exact() {
        // 10 at once, 10 a minute (the defaults): the 11th join from one address within
        // the first minute is refused, whatever else happens meanwhile.
        let mut rl = RateLimiter::new(10, 10);
        let t0 = Instant::now();
        let nat: IpAddr = "198.18.0.50".parse().unwrap();
        for i in 0..20_000u32 {
            let other = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(rl.check(other, t0).is_ok());
        }
        for _ in 0..10 {
            assert!(rl.check(nat, t0).is_ok());
        }
        let wait = rl.check(nat, t0 + Duration::from_secs(5)).unwrap_err();
        assert!(wait <= Duration::from_secs(2), "{wait:?}");
        assert!(rl.check(nat, t0 + Duration::from_secs(7)).is_ok());
    }

    #[test]
    fn bulk_tokens_have_their_own_rate() {
        let mut bulk = BulkLimiter::default();
        let t0 = Instant::now();
        // 60,000 a minute: a burst of 1,000, then 1,000 a second.
        for _ in 0..1000 {
            bulk.check("tokenA", 60_000, t0).unwrap();
        }
        assert!(bulk.check("tokenA", 60_000, t0).is_err());
        assert!(
            bulk.check("tokenB", 60, t0).is_ok(),
            "tokens are independent"
        );
        assert!(bulk.check("tokenB", 60, t0).is_err(), "60/min: one at once");
        // 10,000 joins from one address with one bulk token at 60,000/min fit in 10 s.
        let mut admitted = 1000;
        let mut t = t0;
        while admitted < 10_000 {
            t += Duration::from_millis(1);
            if bulk.check("tokenA", 60_000, t).is_ok() {
                admitted += 1;
            }
        }
        assert!(t - t0 <= Duration::from_secs(10), "{:?}", t - t0);
    }

    #[test]
    fn global_limiter_is_one_bucket() {
        let mut g = GlobalLimiter::new(5, 60);
        let t0 = Instant::now();
        for _ in 0..5 {
            g.check(t0).unwrap();
        }
        assert!(g.check(t0).is_err());
        assert!(g.check(t0 + Duration::from_millis(1001)).is_ok());
    }

    #[test]
    fn log_throttle_counts_what_it_drops() {
        let t = LogThrottle::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.admit(t0), Some(0));
        assert_eq!(t.admit(t0), Some(0));
        assert_eq!(t.admit(t0), None);
        assert_eq!(t.admit(t0), None);
        assert_eq!(t.admit(t0 + Duration::from_secs(1)), Some(2));
    }

    #[test]
    fn clip_cuts_at_a_char_boundary() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(100);
        let c = clip(&long, 5);
        assert!(c.starts_with("éé…"), "{c}");
        assert!(c.ends_with("(200 bytes)"), "{c}");
    }
}
