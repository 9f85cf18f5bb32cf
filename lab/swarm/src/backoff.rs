//! The real agent's reconnect delays (agent/src/backoff.rs and channel/mod.rs), copied
//! because the swarm must not depend on fleet-agent; keep them in step with the agent's.
//! After a session that had its Welcome is lost, the first retry is drawn with full
//! jitter from [0, spread] (the agent's `reconnect_spread`, 5 s by default), widened to the
//! window a shutting-down controller advertised in its last status (`fleet-retry-spread-ms`,
//! at most 5 min); later retries are exponential ×2 from 500 ms up to 30 s with "equal
//! jitter" (a delay drawn from [ceiling/2, ceiling]).

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_millis(500);
pub const MAX: Duration = Duration::from_secs(30);
pub const MAX_ADVERTISED_SPREAD: Duration = Duration::from_secs(300);

/// How a simulated agent comes back after its stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reconnect {
    /// Like fleet-agent: spread first retry, then jittered exponential backoff.
    Agent,
    /// At once, every time: the worst herd a controller can meet.
    Immediate,
}

#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    spread: Duration,
    spread_next: bool,
    advertised: Duration,
}

fn unit_interval(unit: f64) -> f64 {
    if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

impl Backoff {
    pub fn new(spread: Duration) -> Self {
        Backoff {
            attempt: 0,
            spread: spread.min(MAX),
            spread_next: false,
            advertised: Duration::ZERO,
        }
    }

    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        INITIAL.saturating_mul(factor).min(MAX)
    }

    pub fn next_with(&mut self, unit: f64) -> Duration {
        if std::mem::take(&mut self.spread_next) {
            let window = self.spread.max(std::mem::take(&mut self.advertised));
            return window.mul_f64(unit_interval(unit));
        }
        let d = self.ceiling().mul_f64(0.5 + 0.5 * unit_interval(unit));
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random())
    }

    /// A session that had its Welcome ended: the next delay is the spread one.
    pub fn session_lost(&mut self) {
        self.attempt = 0;
        self.spread_next = true;
    }

    /// [`Self::session_lost`] with the window the controller advertised (bounded).
    pub fn session_lost_within(&mut self, advertised: Duration) {
        self.session_lost();
        self.advertised = advertised.min(MAX_ADVERTISED_SPREAD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's default `reconnect_spread` (the swarm's `--spread` default).
    const DEFAULT_SPREAD: Duration = Duration::from_secs(5);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn same_schedule_as_the_agent() {
        let mut b = Backoff::new(DEFAULT_SPREAD);
        let ceilings: Vec<u64> = (0..8)
            .map(|_| {
                let c = b.ceiling().as_millis() as u64;
                b.next_with(0.0);
                c
            })
            .collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        // A lost session: full jitter over the spread, then the sequence from the start.
        b.session_lost();
        assert_eq!(b.next_with(0.5), ms(2500));
        assert_eq!(b.next_with(0.5), ms(375));
    }

    #[test]
    fn an_advertised_window_widens_only_the_next_first_retry() {
        let mut b = Backoff::new(DEFAULT_SPREAD);
        b.session_lost_within(Duration::from_secs(40));
        assert_eq!(b.next_with(0.5), Duration::from_secs(20));
        b.session_lost();
        assert_eq!(b.next_with(1.0), DEFAULT_SPREAD);
        b.session_lost_within(Duration::from_secs(100_000));
        assert_eq!(b.next_with(1.0), MAX_ADVERTISED_SPREAD);
        b.session_lost_within(ms(1));
        assert_eq!(b.next_with(1.0), DEFAULT_SPREAD);
    }
}
