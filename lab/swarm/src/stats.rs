//! Figures from raw samples: latency percentiles and the rollout's floor.

use std::time::Duration;

use fleet_proto::values::MaxParallel;
use serde::Serialize;

/// Latencies of one fan-out, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Agents that received the command.
    pub reached: usize,
    /// Agents that should have.
    pub expected: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentile `p` (0 < p <= 100) of sorted `v`; 0 for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn latency(mut samples_ms: Vec<f64>, expected: usize) -> Latency {
    samples_ms.sort_by(f64::total_cmp);
    Latency {
        reached: samples_ms.len(),
        expected,
        p50_ms: percentile(&samples_ms, 50.0),
        p99_ms: percentile(&samples_ms, 99.0),
        max_ms: samples_ms.last().copied().unwrap_or(0.0),
    }
}

/// The shortest a rollout can take: its batches run one after another, and no host of a
/// batch can finish before it has stayed healthy for `min_healthy` (the agent answers
/// Activate only then). Staging, the switch itself and the controller's bookkeeping are
/// counted as zero, so the floor is a lower bound the real time is compared with.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Floor {
    pub batches: usize,
    pub floor_ms: u64,
}

pub fn rollout_floor(
    hosts: usize,
    canary: usize,
    max_parallel: MaxParallel,
    min_healthy: Duration,
) -> Floor {
    let canary = canary.min(hosts);
    let rest = hosts - canary;
    let size = max_parallel.hosts(hosts).max(1);
    let batches = usize::from(canary > 0) + rest.div_ceil(size);
    Floor {
        batches,
        floor_ms: (min_healthy.as_millis() as u64).saturating_mul(batches as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[1.0, 2.0], 0.1), 1.0);
    }

    #[test]
    fn latency_sorts_and_counts() {
        let l = latency(vec![30.0, 10.0, 20.0], 4);
        assert_eq!(l.reached, 3);
        assert_eq!(l.expected, 4);
        assert_eq!(l.p50_ms, 20.0);
        assert_eq!(l.max_ms, 30.0);
    }

    #[test]
    fn floor_counts_canary_and_rounded_up_batches() {
        let s = Duration::from_secs(1);
        let pct = |p: u8| format!("{p}%").parse::<MaxParallel>().unwrap();
        // 1000 hosts at 10%: batches of 100, no canary: 10 batches.
        assert_eq!(
            rollout_floor(1000, 0, pct(10), s),
            Floor {
                batches: 10,
                floor_ms: 10_000
            }
        );
        // One canary, then 999 hosts in batches of 100 (10% of 1000, rounded up): 1 + 10.
        assert_eq!(rollout_floor(1000, 1, pct(10), s).batches, 11);
        // 15 hosts at 10%: batches of 2 (1.5 rounded up) → 8.
        assert_eq!(rollout_floor(15, 0, pct(10), s).batches, 8);
        assert_eq!(rollout_floor(0, 1, pct(10), s).batches, 0);
        assert_eq!(
            rollout_floor(3, 5, MaxParallel::ONE, s).batches,
            1,
            "a canary larger than the fleet is one batch"
        );
    }
}
