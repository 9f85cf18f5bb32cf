//! Reconnect delays: exponential (×2 from 500 ms) up to a cap, with jitter so that agents
//! cut off by the same controller restart do not all come back in the same instant.
//!
//! Jitter is "equal jitter": a delay is drawn uniformly from [ceiling/2, ceiling]. Unlike
//! full jitter it never retries immediately, and it still spreads a herd over half the
//! window.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_millis(500);
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The upper bound of the next delay: `initial × 2^attempt`, capped.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay, drawn with `unit` in [0, 1); advances the exponent.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let delay = jittered(self.ceiling(), unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random())
    }

    /// A delay at the cap (still jittered), for failures that retrying sooner cannot fix,
    /// such as a refused certificate.
    pub fn at_max(&self) -> Duration {
        jittered(self.max, rand::random())
    }

    /// Called once a session was accepted (got its Welcome).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A delay in [ceiling/2, ceiling] chosen by `unit` (clamped to [0, 1]).
pub fn jittered(ceiling: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ceiling.mul_f64(0.5 + 0.5 * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceilings_double_from_500ms_and_stop_at_the_cap() {
        let mut b = Backoff::new(INITIAL, DEFAULT_MAX);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(b.ceiling());
            b.next_with(0.0);
        }
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000, 30000].map(ms)
        );
    }

    #[test]
    fn every_delay_lies_within_half_to_full_ceiling() {
        let mut b = Backoff::new(INITIAL, ms(7_000));
        for _ in 0..200 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside {ceiling:?}"
            );
            assert!(d <= ms(7_000));
        }
        assert!(b.at_max() >= ms(3_500) && b.at_max() <= ms(7_000));
    }

    #[test]
    fn jitter_bounds_and_spread() {
        assert_eq!(jittered(ms(1000), 0.0), ms(500));
        assert_eq!(jittered(ms(1000), 1.0), ms(1000));
        assert_eq!(jittered(ms(1000), 7.0), ms(1000));
        assert_eq!(jittered(ms(1000), f64::NAN), ms(500));
        // A herd of agents must not pick the same delay.
        let mut b = Backoff::new(INITIAL, DEFAULT_MAX);
        b.attempt = 10;
        let draws: std::collections::HashSet<Duration> = (0..100).map(|_| b.at_max()).collect();
        assert!(draws.len() > 50, "only {} distinct delays", draws.len());
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(INITIAL, DEFAULT_MAX);
        for _ in 0..20 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), DEFAULT_MAX);
        b.reset();
        assert_eq!(b.ceiling(), INITIAL);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(INITIAL, DEFAULT_MAX);
        b.attempt = u32::MAX;
        assert_eq!(b.ceiling(), DEFAULT_MAX);
        b.next_with(0.5);
        assert_eq!(b.attempt, u32::MAX);
    }

    #[test]
    fn cap_below_initial_is_raised_to_initial() {
        let b = Backoff::new(INITIAL, ms(100));
        assert_eq!(b.ceiling(), INITIAL);
    }
}
