//! How an agent reconnects to its controller: exponential delays (×2 from 500 ms) up to a
//! cap, with jitter so that agents cut off by the same controller restart do not all come
//! back in the same instant. Here, beside the wire contract, because the controller's
//! advertised window is part of it and the lab's swarm simulator must reconnect exactly as
//! the agent does.
//!
//! The first retry after a lost session is drawn with full jitter from [0, spread]
//! (default 5 s): every agent of a fleet loses its stream at the same moment when the
//! controller restarts, and a narrow window would bring 50,000 handshakes into the same
//! second. Later retries (the controller was not back yet) use "equal jitter", uniformly
//! from [ceiling/2, ceiling]: they never retry immediately, and they keep the spread the
//! first draw made since each agent counts from its own attempt.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_millis(500);
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);
/// Window of the first retry after a lost session.
pub const DEFAULT_SPREAD: Duration = Duration::from_secs(5);
/// The widest first-retry window a controller can ask for.
pub const MAX_ADVERTISED_SPREAD: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    spread: Duration,
    /// The next delay is the spread one: a session was just lost.
    spread_next: bool,
    /// A wider window for that draw, as the controller asked when it shut down.
    advertised: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            spread: Duration::ZERO,
            spread_next: false,
            advertised: Duration::ZERO,
        }
    }

    /// Draws the first retry after [`Backoff::session_lost`] from [0, spread] (capped at
    /// the maximum delay).
    pub fn with_spread(mut self, spread: Duration) -> Self {
        self.spread = spread.min(self.max);
        self
    }

    /// The upper bound of the next delay: `initial × 2^attempt`, capped.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay, drawn with `unit` in [0, 1); advances the exponent, except for the
    /// spread draw after a lost session, which leaves the exponential sequence at its
    /// start.
    pub fn next_with(&mut self, unit: f64) -> Duration {
        if std::mem::take(&mut self.spread_next) {
            let window = self.spread.max(std::mem::take(&mut self.advertised));
            return window.mul_f64(unit_interval(unit));
        }
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

    /// Starts the sequence over, e.g. for a reconnect that is wanted at once.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.spread_next = false;
    }

    /// Called when a session that had been accepted (got its Welcome) ends: the next
    /// delay is the spread one, then the sequence starts over.
    pub fn session_lost(&mut self) {
        self.attempt = 0;
        self.spread_next = true;
    }

    /// `session_lost`, with the window the controller advertised when it ended the
    /// session (bounded, so a bad value cannot keep the agent away for long).
    pub fn session_lost_within(&mut self, advertised: Duration) {
        self.session_lost();
        self.advertised = advertised.min(MAX_ADVERTISED_SPREAD);
    }
}

/// The reconnect window a shutting-down controller advertised on the status that ended a
/// session ([`crate::RETRY_AFTER_MS`]).
pub fn retry_spread(s: &tonic::Status) -> Option<Duration> {
    let ms: u64 = s
        .metadata()
        .get(crate::RETRY_AFTER_MS)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
}

fn unit_interval(unit: f64) -> f64 {
    if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// A delay in [ceiling/2, ceiling] chosen by `unit` (clamped to [0, 1]).
pub fn jittered(ceiling: Duration, unit: f64) -> Duration {
    ceiling.mul_f64(0.5 + 0.5 * unit_interval(unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advertised_window_widens_only_the_next_first_retry() {
        let mut b = Backoff::new(ms(500), Duration::from_secs(30)).with_spread(ms(5000));
        b.session_lost_within(Duration::from_secs(40));
        assert_eq!(b.next_with(0.5), Duration::from_secs(20));
        // Used once: the next lost session is back to the agent's own window.
        b.session_lost();
        assert_eq!(b.next_with(1.0), ms(5000));
        // Bounded, whatever the controller says.
        b.session_lost_within(Duration::from_secs(100_000));
        assert_eq!(b.next_with(1.0), MAX_ADVERTISED_SPREAD);
        // Never narrower than the agent's own.
        b.session_lost_within(ms(1));
        assert_eq!(b.next_with(1.0), ms(5000));
    }

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
    fn the_first_retry_after_a_lost_session_spreads_over_the_whole_window() {
        let mut b = Backoff::new(INITIAL, DEFAULT_MAX).with_spread(DEFAULT_SPREAD);
        b.session_lost();
        assert_eq!(
            b.next_with(0.0),
            Duration::ZERO,
            "full jitter starts at zero"
        );
        b.session_lost();
        assert_eq!(b.next_with(1.0), DEFAULT_SPREAD);
        b.session_lost();
        assert_eq!(b.next_with(f64::NAN), Duration::ZERO);
        // Then the exponential sequence from its start: the spread draw did not advance it.
        assert_eq!(b.ceiling(), INITIAL);
        assert_eq!(b.next_with(1.0), INITIAL);
        assert_eq!(b.next_with(1.0), INITIAL * 2);

        // A herd: 10,000 draws fill the window evenly, 10 buckets of 0.5 s each within
        // ±20 % of their share, none outside [0, spread].
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            b.session_lost();
            let d = b.next_delay();
            assert!(d <= DEFAULT_SPREAD, "{d:?}");
            let i = (d.as_secs_f64() / DEFAULT_SPREAD.as_secs_f64() * 10.0) as usize;
            buckets[i.min(9)] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (800..=1200).contains(&n)),
            "uneven spread: {buckets:?}"
        );
    }

    #[test]
    fn spread_is_capped_by_the_maximum_delay_and_reset_cancels_it() {
        let mut b = Backoff::new(INITIAL, ms(2_000)).with_spread(ms(60_000));
        b.session_lost();
        assert_eq!(b.next_with(1.0), ms(2_000));
        b.session_lost();
        b.reset();
        assert_eq!(b.next_with(0.0), INITIAL / 2, "reset: back to equal jitter");
        // No spread configured: the first retry comes at once.
        let mut none = Backoff::new(INITIAL, DEFAULT_MAX);
        none.session_lost();
        assert_eq!(none.next_with(0.7), Duration::ZERO);
        assert_eq!(none.next_with(0.0), INITIAL / 2);
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
