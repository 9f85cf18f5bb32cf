//! Per-source token buckets for the join call, the one RPC open to anyone: guessing
//! tokens or flooding CSR signing costs an attacker time, not us CPU.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    /// `burst` attempts at once, refilled at `per_minute`.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        RateLimiter {
            burst: burst.max(1) as f64,
            per_second: per_minute.max(1) as f64 / 60.0,
            buckets: HashMap::new(),
        }
    }

    /// Takes one attempt for `ip`; on refusal says how long until the next one is allowed.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.buckets.len() > 10_000 {
            // Bound memory under a spray of source addresses: forget full buckets.
            let (burst, rate) = (self.burst, self.per_second);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((self.burst, now));
        let refilled = (*tokens
            + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
    }
}

/// A fleet-wide bucket on top of the per-source ones: many source addresses (a botnet, or
/// a spoofable network) must not multiply what one is allowed.
pub struct GlobalLimiter {
    inner: RateLimiter,
}

impl GlobalLimiter {
    pub fn new(burst: u32, per_minute: u32) -> Self {
        GlobalLimiter {
            inner: RateLimiter::new(burst, per_minute),
        }
    }

    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        self.inner
            .check(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), now)
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
