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
}
