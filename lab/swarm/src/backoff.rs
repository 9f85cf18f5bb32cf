//! The real agent's reconnect delays (agent/src/backoff.rs), copied because the swarm must
//! not depend on fleet-agent: exponential ×2 from 500 ms up to 30 s, "equal jitter" (a
//! delay drawn from [ceiling/2, ceiling]), reset once a session got its Welcome. Keep the
//! constants in step with the agent's.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_millis(500);
pub const MAX: Duration = Duration::from_secs(30);

/// How a simulated agent comes back after its stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reconnect {
    /// Like fleet-agent: jittered exponential backoff.
    Agent,
    /// At once, every time: the worst herd a controller can meet.
    Immediate,
}

#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { attempt: 0 }
    }

    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        INITIAL.saturating_mul(factor).min(MAX)
    }

    pub fn next_with(&mut self, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let d = self.ceiling().mul_f64(0.5 + 0.5 * unit);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_schedule_as_the_agent() {
        let mut b = Backoff::new();
        let ceilings: Vec<u64> = (0..8)
            .map(|_| {
                let c = b.ceiling().as_millis() as u64;
                b.next_with(0.0);
                c
            })
            .collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        b.reset();
        let d = b.next_with(0.5);
        assert_eq!(d, Duration::from_millis(375));
    }
}
