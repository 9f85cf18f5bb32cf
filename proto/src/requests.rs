//! Request metrics shared by the agent, which counts an app's requests from its access
//! log, and the controller, which judges a rollout's canary against its baseline from
//! two such counts (`QueryRequests` / `RequestStats`). Both must bucket response times
//! the same way, so the bounds live here.

use crate::v1::ReleaseRequests;

/// Upper bounds, in seconds, of the response-time histogram (`le` of
/// `fleet_app_http_request_duration_seconds`), then +Inf. Steps of 1.5–2× from 1 ms to
/// 10 s: a p99 interpolated inside one bucket is off by at most that step, which
/// `max_p99_increase` must exceed to be meaningful (`spec::finest_bucket_step`).
pub const DURATION_BUCKETS: [f64; 20] = [
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.04, 0.06, 0.1, 0.15, 0.25, 0.4, 0.6,
    1.0, 1.5, 2.5, 5.0, 10.0,
];

/// Index of the first bucket whose bound is at least `seconds` (the +Inf bucket,
/// `DURATION_BUCKETS.len()`, for anything slower or not a number).
pub fn bucket_index(seconds: f64) -> usize {
    DURATION_BUCKETS
        .iter()
        .position(|&b| seconds <= b)
        .unwrap_or(DURATION_BUCKETS.len())
}

impl ReleaseRequests {
    /// Every response counted, whatever its status.
    pub fn total(&self) -> u64 {
        self.status_1xx + self.status_2xx + self.status_3xx + self.status_4xx + self.status_5xx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_ascend_and_each_time_has_one_bucket() {
        assert!(DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(bucket_index(0.0), 0);
        assert_eq!(bucket_index(0.001), 0);
        assert_eq!(bucket_index(0.0011), 1);
        assert_eq!(bucket_index(10.0), DURATION_BUCKETS.len() - 1);
        assert_eq!(bucket_index(10.5), DURATION_BUCKETS.len());
        assert_eq!(bucket_index(f64::NAN), DURATION_BUCKETS.len());
    }

    #[test]
    fn total_counts_every_class() {
        let r = ReleaseRequests {
            status_1xx: 1,
            status_2xx: 2,
            status_3xx: 3,
            status_4xx: 4,
            status_5xx: 5,
            ..Default::default()
        };
        assert_eq!(r.total(), 15);
    }
}
