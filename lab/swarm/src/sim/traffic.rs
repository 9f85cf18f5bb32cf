//! Synthetic request counts for QueryRequests: every simulated app serves a steady rate,
//! counted per release as fleet-agent counts its access log (cumulative since the agent
//! started, one epoch per agent process). A release named sick answers 5 % of requests
//! with 500; one named slow takes 200 ms longer; so a rollout's analysis can be driven
//! both ways without real apps.

use std::collections::BTreeMap;

use fleet_proto::requests::{bucket_index, DURATION_BUCKETS};
use fleet_proto::v1::{ReleaseRequests, RequestStats};

/// Healthy releases: 0.1 % 5xx, 20 ms.
const BASE_ERROR_RATIO: f64 = 0.001;
const BASE_SECONDS: f64 = 0.020;
const SICK_ERROR_RATIO: f64 = 0.05;
const SLOW_EXTRA_SECONDS: f64 = 0.200;

/// What the simulated apps of a worker serve.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// Requests per second per host and app; 0: no traffic (counts stay zero).
    pub rps: u32,
    pub sick: Vec<String>,
    pub slow: Vec<String>,
}

/// Milliseconds each release of one app has been serving on one host.
#[derive(Clone, Debug, Default)]
pub struct Served {
    done: BTreeMap<String, u64>,
    /// The release serving now, since when (Unix ms).
    current: Option<(String, u64)>,
}

impl Served {
    /// `release` starts serving at `now_ms` (an activation); the one before stops.
    pub fn switch(&mut self, release: &str, now_ms: u64) {
        if let Some((r, since)) = self.current.take() {
            *self.done.entry(r).or_default() += now_ms.saturating_sub(since);
        }
        self.current = Some((release.to_owned(), now_ms));
    }

    fn serving_ms(&self, now_ms: u64) -> BTreeMap<String, u64> {
        let mut out = self.done.clone();
        if let Some((r, since)) = &self.current {
            *out.entry(r.clone()).or_default() += now_ms.saturating_sub(*since);
        }
        out
    }
}

impl Traffic {
    fn release(&self, release: &str, ms: u64) -> ReleaseRequests {
        let n = ms * u64::from(self.rps) / 1000;
        let ratio = if self.sick.iter().any(|s| s == release) {
            SICK_ERROR_RATIO
        } else {
            BASE_ERROR_RATIO
        };
        let secs = BASE_SECONDS
            + if self.slow.iter().any(|s| s == release) {
                SLOW_EXTRA_SECONDS
            } else {
                0.0
            };
        let errors = (n as f64 * ratio) as u64;
        let at = bucket_index(secs);
        ReleaseRequests {
            release: release.to_owned(),
            status_2xx: n - errors,
            status_5xx: errors,
            duration_buckets: (0..=DURATION_BUCKETS.len())
                .map(|b| if b >= at { n } else { 0 })
                .collect(),
            duration_sum_seconds: n as f64 * secs,
            ..Default::default()
        }
    }

    /// The answer to QueryRequests for an app that served as `served` says.
    pub fn stats(&self, epoch: u64, served: &Served, now_ms: u64) -> RequestStats {
        RequestStats {
            epoch,
            releases: served
                .serving_ms(now_ms)
                .into_iter()
                .map(|(r, ms)| self.release(&r, ms))
                .collect(),
            unparsed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_grow_per_release_and_a_sick_one_errs() {
        let t = Traffic {
            rps: 100,
            sick: vec!["2".into()],
            slow: vec![],
        };
        let mut s = Served::default();
        s.switch("1", 0);
        s.switch("2", 10_000);
        let st = t.stats(7, &s, 12_000);
        assert_eq!(st.epoch, 7);
        let one = &st.releases[0];
        assert_eq!(
            (one.release.as_str(), one.total(), one.status_5xx),
            ("1", 1000, 1)
        );
        let two = &st.releases[1];
        assert_eq!((two.total(), two.status_5xx), (200, 10));
        assert_eq!(*two.duration_buckets.last().unwrap(), 200);
        assert_eq!(two.duration_buckets.len(), DURATION_BUCKETS.len() + 1);
    }
}
