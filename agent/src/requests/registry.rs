//! An app's request counts, by release: what every parsed access line adds up to.
//! Cumulative from the agent's start; only the last few releases by activity are kept,
//! so neither a long history of deploys nor forged release names grow the metrics.

use fleet_proto::requests::{bucket_index, DURATION_BUCKETS};
use fleet_proto::v1::ReleaseRequests;

use super::parse::{self, Entry};

/// Releases kept per app: a rollout compares two, and a few more cover a rollback.
pub const MAX_RELEASES: usize = 4;
/// One per bound, then +Inf.
pub const BUCKETS: usize = DURATION_BUCKETS.len() + 1;

#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseCounts {
    pub release: String,
    /// 1xx..5xx
    pub classes: [u64; 5],
    /// Not cumulative: `buckets[i]` counts the responses of bucket `i` only.
    pub buckets: [u64; BUCKETS],
    pub sum_seconds: f64,
    /// When it last counted a request, in `AppCounts::ticks`.
    last_seen: u64,
}

impl ReleaseCounts {
    fn new(release: &str) -> ReleaseCounts {
        ReleaseCounts {
            release: release.to_owned(),
            classes: [0; 5],
            buckets: [0; BUCKETS],
            sum_seconds: 0.0,
            last_seen: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.classes.iter().sum()
    }

    /// The wire form: cumulative buckets, as the controller diffs them.
    pub fn to_proto(&self) -> ReleaseRequests {
        let mut acc = 0;
        let duration_buckets = self
            .buckets
            .iter()
            .map(|n| {
                acc += n;
                acc
            })
            .collect();
        ReleaseRequests {
            release: self.release.clone(),
            status_1xx: self.classes[0],
            status_2xx: self.classes[1],
            status_3xx: self.classes[2],
            status_4xx: self.classes[3],
            status_5xx: self.classes[4],
            duration_buckets,
            duration_sum_seconds: self.sum_seconds,
        }
    }
}

/// What a line did to the counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    Request,
    /// The agent's own health probe (or anyone's request to the health path).
    Health,
    Unparsed,
}

#[derive(Debug, Default)]
pub struct AppCounts {
    /// Path part of the spec's `health.path`; requests to it are not counted.
    health_path: String,
    /// At most `MAX_RELEASES`, in the order they first appeared.
    releases: Vec<ReleaseCounts>,
    pub unparsed: u64,
    ticks: u64,
}

impl AppCounts {
    pub fn new(health_path: &str) -> AppCounts {
        let mut c = AppCounts::default();
        c.set_health_path(health_path);
        c
    }

    pub fn set_health_path(&mut self, health_path: &str) {
        self.health_path = parse::path_of(health_path).to_owned();
    }

    /// One line of the access log, or `None` for one too long to keep.
    pub fn record(&mut self, line: Option<&[u8]>) -> Counted {
        match line.and_then(parse::parse) {
            Some(e) if e.path == self.health_path => Counted::Health,
            Some(e) => {
                self.add(&e);
                Counted::Request
            }
            None => {
                self.unparsed += 1;
                Counted::Unparsed
            }
        }
    }

    fn add(&mut self, e: &Entry<'_>) {
        self.ticks += 1;
        let i = match self.releases.iter().position(|r| r.release == e.release) {
            Some(i) => i,
            None => {
                if self.releases.len() >= MAX_RELEASES {
                    let idle = (0..self.releases.len())
                        .min_by_key(|&i| self.releases[i].last_seen)
                        .unwrap_or(0);
                    self.releases.remove(idle);
                }
                self.releases.push(ReleaseCounts::new(e.release));
                self.releases.len() - 1
            }
        };
        let r = &mut self.releases[i];
        r.last_seen = self.ticks;
        r.classes[usize::from(e.status / 100 - 1)] += 1;
        let seconds = e.seconds();
        r.buckets[bucket_index(seconds)] += 1;
        r.sum_seconds += seconds;
    }

    pub fn releases(&self) -> &[ReleaseCounts] {
        &self.releases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(release: &str, status: u16, micros: u64, target: &str) -> String {
        format!("fleet1 {release} {status} {micros} \"GET {target} HTTP/1.1\" 10.0.0.1 2 [t]")
    }

    fn rec(c: &mut AppCounts, l: &str) -> Counted {
        c.record(Some(l.as_bytes()))
    }

    #[test]
    fn statuses_go_to_their_class_and_times_to_their_bucket() {
        let mut c = AppCounts::new("/healthz");
        for (status, micros) in [
            (200, 500),
            (204, 1_000),
            (301, 1_001),
            (404, 200_000),
            (500, 11_000_000),
            (101, 0),
        ] {
            assert_eq!(
                rec(&mut c, &line("r1", status, micros, "/")),
                Counted::Request
            );
        }
        let r = &c.releases()[0];
        assert_eq!(r.release, "r1");
        assert_eq!(r.classes, [1, 2, 1, 1, 1]);
        assert_eq!(r.count(), 6);
        assert!(
            (r.sum_seconds - 11.202501).abs() < 1e-9,
            "{}",
            r.sum_seconds
        );
        let p = r.to_proto();
        assert_eq!(p.total(), 6);
        assert_eq!(p.duration_buckets.len(), DURATION_BUCKETS.len() + 1);
        // <= 1 ms: 0, 500 us, 1000 us; <= 2 ms adds 1001 us; 0.2 s is in le=0.25; 11 s only in +Inf.
        assert_eq!(p.duration_buckets[0], 3);
        assert_eq!(p.duration_buckets[1], 4);
        let le = |b: f64| DURATION_BUCKETS.iter().position(|&x| x == b).unwrap();
        assert_eq!(p.duration_buckets[le(0.15)], 4);
        assert_eq!(p.duration_buckets[le(0.25)], 5);
        assert_eq!(p.duration_buckets[le(10.0)], 5);
        assert_eq!(*p.duration_buckets.last().unwrap(), 6);
        assert!(p.duration_buckets.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn health_probes_are_not_counted_and_junk_is() {
        let mut c = AppCounts::new("/healthz?probe=1");
        assert_eq!(
            rec(&mut c, &line("r1", 200, 10, "/healthz")),
            Counted::Health
        );
        assert_eq!(
            rec(&mut c, &line("r1", 500, 10, "/healthz?x")),
            Counted::Health
        );
        assert_eq!(
            rec(&mut c, &line("r1", 200, 10, "/healthz/deep")),
            Counted::Request
        );
        assert_eq!(rec(&mut c, "garbage"), Counted::Unparsed);
        assert_eq!(rec(&mut c, &line("r1", 700, 10, "/")), Counted::Unparsed);
        assert_eq!(c.record(None), Counted::Unparsed);
        assert_eq!(c.unparsed, 3);
        assert_eq!(c.releases()[0].count(), 1);
        // The spec's health path can change with a deploy.
        c.set_health_path("/ready");
        assert_eq!(
            rec(&mut c, &line("r2", 200, 10, "/healthz")),
            Counted::Request
        );
        assert_eq!(rec(&mut c, &line("r2", 200, 10, "/ready")), Counted::Health);
    }

    #[test]
    fn only_the_last_releases_by_activity_are_kept() {
        let mut c = AppCounts::new("/h");
        for r in ["r1", "r2", "r3", "r4"] {
            rec(&mut c, &line(r, 200, 10, "/"));
        }
        // r1 is active again: r2 is now the one idle the longest.
        rec(&mut c, &line("r1", 200, 10, "/"));
        rec(&mut c, &line("r5", 200, 10, "/"));
        let names: Vec<&str> = c.releases().iter().map(|r| r.release.as_str()).collect();
        assert_eq!(names, ["r1", "r3", "r4", "r5"]);
        assert_eq!(c.releases()[0].count(), 2);
        for i in 0..100 {
            rec(&mut c, &line(&format!("forged{i}"), 200, 10, "/"));
        }
        assert_eq!(c.releases().len(), MAX_RELEASES);
    }
}
