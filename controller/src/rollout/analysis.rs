//! Judging a batch by its real traffic, as pure arithmetic: the counts of one window from
//! two cumulative `RequestStats` answers of a host, summed over hosts, the 5xx ratio, the
//! p99 interpolated inside the duration buckets, and the verdict with a one-line reason
//! that carries the numbers. `judge` (the async side) asks the hosts; this decides.

use fleet_proto::requests::DURATION_BUCKETS;
use fleet_proto::spec::Analysis;
use fleet_proto::v1::{AnalysisSide, ReleaseRequests, RequestStats};

/// The histogram has one cumulative count per bound, then +Inf.
const SLOTS: usize = DURATION_BUCKETS.len() + 1;

/// A baseline with no 5xx at all would make any canary error an infinite increase; the
/// relative check compares with at least this ratio (0.1 %).
pub const BASELINE_RATIO_FLOOR: f64 = 0.001;
/// Fewer 5xx than this in a window are never an "increase": 1 error against a baseline's
/// 0.1 % is a tenfold ratio and no evidence (the absolute maximum still applies).
pub const MIN_ERRORS_FOR_INCREASE: u64 = 5;
/// Latencies this small are not compared as ratios: 1 ms against 2 ms is "2×" but no
/// regression anyone notices, and it sits inside the first buckets.
pub const P99_FLOOR_SECONDS: f64 = 0.010;

/// Requests of one release over one window, on one host or summed over several.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    /// Cumulative per bound of `DURATION_BUCKETS`, then +Inf (= requests).
    pub buckets: Vec<u64>,
}

/// Why a host's window cannot be judged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CannotJudge {
    #[error("its counters restarted (agent restart) during the window")]
    EpochChanged,
    #[error("its counters went backwards within one epoch")]
    Backwards,
    #[error("its duration histogram is malformed ({0})")]
    Histogram(&'static str),
    #[error("{0}")]
    Query(String),
}

fn checked(r: &ReleaseRequests) -> Result<(), CannotJudge> {
    if r.duration_buckets.len() != SLOTS {
        return Err(CannotJudge::Histogram("wrong number of buckets"));
    }
    if r.duration_buckets.windows(2).any(|w| w[0] > w[1]) {
        return Err(CannotJudge::Histogram("not cumulative"));
    }
    if r.duration_buckets[SLOTS - 1] != r.total() {
        return Err(CannotJudge::Histogram("+Inf is not the total"));
    }
    Ok(())
}

/// The counts of `release` between two answers of the same host. A release missing from
/// `before` had served nothing yet (it just started).
pub fn window(
    before: &RequestStats,
    after: &RequestStats,
    release: &str,
) -> Result<Counts, CannotJudge> {
    if before.epoch != after.epoch {
        return Err(CannotJudge::EpochChanged);
    }
    let find = |s: &RequestStats| s.releases.iter().find(|r| r.release == release).cloned();
    let zero = ReleaseRequests {
        duration_buckets: vec![0; SLOTS],
        ..Default::default()
    };
    let a = match (find(before), find(after)) {
        (_, Some(a)) => a,
        (None, None) => return Ok(Counts::empty()),
        (Some(_), None) => return Err(CannotJudge::Backwards),
    };
    let b = find(before).unwrap_or(zero);
    checked(&a)?;
    checked(&b)?;
    if a.total() < b.total() || a.status_5xx < b.status_5xx {
        return Err(CannotJudge::Backwards);
    }
    let mut buckets = Vec::with_capacity(SLOTS);
    for (x, y) in a.duration_buckets.iter().zip(&b.duration_buckets) {
        buckets.push(x.checked_sub(*y).ok_or(CannotJudge::Backwards)?);
    }
    Ok(Counts {
        requests: a.total() - b.total(),
        errors: a.status_5xx - b.status_5xx,
        buckets,
    })
}

impl Counts {
    pub fn empty() -> Counts {
        Counts {
            buckets: vec![0; SLOTS],
            ..Default::default()
        }
    }

    pub fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize(o.buckets.len(), 0);
        }
        for (s, x) in self.buckets.iter_mut().zip(&o.buckets) {
            *s += x;
        }
    }

    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The `q` quantile by linear interpolation inside its bucket; `None` without requests.
    /// In the +Inf bucket it is the last bound (the histogram knows no more than "slower").
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = *self.buckets.last()?;
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let i = self.buckets.iter().position(|&c| c as f64 >= rank)?;
        if i >= DURATION_BUCKETS.len() {
            return Some(DURATION_BUCKETS[DURATION_BUCKETS.len() - 1]);
        }
        let lower = if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
        let below = if i == 0 { 0 } else { self.buckets[i - 1] };
        let inside = (self.buckets[i] - below) as f64;
        let frac = if inside > 0.0 {
            (rank - below as f64) / inside
        } else {
            1.0
        };
        Some(lower + (DURATION_BUCKETS[i] - lower) * frac)
    }

    pub fn p99(&self) -> Option<f64> {
        self.quantile(0.99)
    }
}

/// One side of a judged window.
#[derive(Clone, Debug, PartialEq)]
pub struct Side {
    pub hosts: usize,
    pub counts: Counts,
}

impl Side {
    pub fn to_wire(&self) -> AnalysisSide {
        AnalysisSide {
            hosts: self.hosts as u32,
            requests: self.counts.requests,
            errors: self.counts.errors,
            p99_seconds: self.counts.p99().unwrap_or(0.0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Too little traffic on the canary: look at another window.
    Wait,
    /// The window could not be measured (failed query, restarted agent, old agent).
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Wait => "wait",
            Verdict::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub message: String,
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p != 0.0 && p < 0.1 {
        format!("{p:.2} %")
    } else {
        format!("{p:.1} %")
    }
}

fn ratio_of(c: &Counts) -> String {
    format!("{} ({}/{})", pct(c.error_ratio()), c.errors, c.requests)
}

pub fn fmt_secs(s: f64) -> String {
    if s >= DURATION_BUCKETS[DURATION_BUCKETS.len() - 1] {
        format!("> {} s", DURATION_BUCKETS[DURATION_BUCKETS.len() - 1])
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.0} ms", s * 1000.0)
    }
}

fn times(x: f64) -> String {
    format!("{}×", (x * 100.0).round() / 100.0)
}

/// The verdict on one window. `who` names the judged side ("canary", "batch 3", "fleet");
/// `baseline` is `None` when no host is left on the previous release.
pub fn judge(t: &Analysis, who: &str, canary: &Side, baseline: Option<&Side>) -> Judgement {
    let c = &canary.counts;
    let window = humantime::format_duration(t.window);
    if c.requests < t.min_requests {
        return Judgement {
            verdict: Verdict::Wait,
            message: format!(
                "{who} served {} requests in {window} on {} hosts, needs {}: waiting for more traffic",
                c.requests, canary.hosts, t.min_requests
            ),
        };
    }
    let fail = |message: String| Judgement {
        verdict: Verdict::Fail,
        message,
    };
    // A baseline is only a comparison when it saw enough traffic itself.
    let (base, note) = match baseline {
        None => (None, "no baseline left: absolute threshold only".to_owned()),
        Some(b) if b.counts.requests < t.min_requests => (
            None,
            format!(
                "baseline served only {} requests: absolute threshold only",
                b.counts.requests
            ),
        ),
        Some(b) => (Some(&b.counts), String::new()),
    };
    let ratio = c.error_ratio();
    if ratio > t.max_error_ratio {
        let vs = base
            .map(|b| format!(" vs baseline {}", ratio_of(b)))
            .unwrap_or_default();
        return fail(format!(
            "{who} 5xx {}{vs} > max {}: reverting",
            ratio_of(c),
            pct(t.max_error_ratio)
        ));
    }
    let Some(b) = base else {
        return Judgement {
            verdict: Verdict::Pass,
            message: format!(
                "{who} 5xx {} ≤ max {}, p99 {} ({note}): promoting",
                ratio_of(c),
                pct(t.max_error_ratio),
                c.p99().map(fmt_secs).unwrap_or_default()
            ),
        };
    };
    let increase = ratio / b.error_ratio().max(BASELINE_RATIO_FLOOR);
    if increase > t.max_error_increase && c.errors >= MIN_ERRORS_FOR_INCREASE {
        return fail(format!(
            "{who} 5xx {} vs baseline {} = {} > {}: reverting",
            ratio_of(c),
            ratio_of(b),
            times(increase),
            times(t.max_error_increase)
        ));
    }
    let (cp, bp) = (c.p99().unwrap_or(0.0), b.p99().unwrap_or(0.0));
    let slower = cp / bp.max(P99_FLOOR_SECONDS);
    if slower > t.max_p99_increase {
        return fail(format!(
            "{who} p99 {} vs baseline {} = {} > {}: reverting",
            fmt_secs(cp),
            fmt_secs(bp),
            times(slower),
            times(t.max_p99_increase)
        ));
    }
    Judgement {
        verdict: Verdict::Pass,
        message: format!(
            "{who} 5xx {} vs baseline {}, p99 {} vs {}: within max {}, {} and {}: promoting",
            ratio_of(c),
            ratio_of(b),
            fmt_secs(cp),
            fmt_secs(bp),
            pct(t.max_error_ratio),
            times(t.max_error_increase),
            times(t.max_p99_increase)
        ),
    }
}

/// Up to `n` of `items`, spread evenly over the list (not only its head: hosts are in
/// name order, which often follows racks or zones).
pub fn spread<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    if items.len() <= n {
        return items.to_vec();
    }
    (0..n).map(|i| items[i * items.len() / n].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `n` requests of which `errors` 5xx, all taking `secs`.
    fn rel(release: &str, n: u64, errors: u64, secs: f64) -> ReleaseRequests {
        let i = fleet_proto::requests::bucket_index(secs);
        ReleaseRequests {
            release: release.into(),
            status_2xx: n - errors,
            status_5xx: errors,
            duration_buckets: (0..SLOTS).map(|b| if b >= i { n } else { 0 }).collect(),
            duration_sum_seconds: n as f64 * secs,
            ..Default::default()
        }
    }

    fn stats(epoch: u64, releases: Vec<ReleaseRequests>) -> RequestStats {
        RequestStats {
            epoch,
            releases,
            unparsed: 0,
        }
    }

    fn side(n: u64, errors: u64, secs: f64) -> Side {
        let s = stats(1, vec![rel("r", n, errors, secs)]);
        Side {
            hosts: 1,
            counts: window(&stats(1, vec![]), &s, "r").unwrap(),
        }
    }

    fn t() -> Analysis {
        Analysis {
            window: Duration::from_secs(60),
            ..Analysis::default()
        }
    }

    #[test]
    fn a_window_is_the_difference_of_two_answers() {
        let before = stats(7, vec![rel("2.0", 100, 1, 0.02), rel("1.0", 50, 0, 0.02)]);
        let after = stats(7, vec![rel("2.0", 300, 11, 0.02), rel("1.0", 50, 0, 0.02)]);
        let w = window(&before, &after, "2.0").unwrap();
        assert_eq!((w.requests, w.errors), (200, 10));
        assert_eq!(*w.buckets.last().unwrap(), 200);
        assert_eq!(window(&before, &after, "1.0").unwrap().requests, 0);
        // A release that just started is absent before: it had served nothing.
        assert_eq!(
            window(&stats(7, vec![]), &after, "2.0").unwrap().requests,
            300
        );
        assert_eq!(window(&before, &after, "3.0").unwrap(), Counts::empty());
    }

    #[test]
    fn windows_that_mean_nothing_cannot_be_judged() {
        let a = stats(1, vec![rel("r", 10, 0, 0.01)]);
        let b = stats(2, vec![rel("r", 20, 0, 0.01)]);
        assert_eq!(window(&a, &b, "r"), Err(CannotJudge::EpochChanged));
        let back = stats(1, vec![rel("r", 5, 0, 0.01)]);
        assert_eq!(window(&a, &back, "r"), Err(CannotJudge::Backwards));
        assert_eq!(
            window(&a, &stats(1, vec![]), "r"),
            Err(CannotJudge::Backwards)
        );
        let mut bad = rel("r", 20, 0, 0.01);
        bad.duration_buckets.pop();
        assert!(matches!(
            window(&a, &stats(1, vec![bad]), "r"),
            Err(CannotJudge::Histogram(_))
        ));
        let mut bad = rel("r", 20, 0, 0.01);
        bad.duration_buckets[0] = 30;
        assert!(matches!(
            window(&a, &stats(1, vec![bad]), "r"),
            Err(CannotJudge::Histogram(_))
        ));
        let mut bad = rel("r", 20, 0, 0.01);
        *bad.duration_buckets.last_mut().unwrap() = 19;
        assert!(matches!(
            window(&a, &stats(1, vec![bad]), "r"),
            Err(CannotJudge::Histogram(_))
        ));
    }

    #[test]
    fn p99_is_interpolated_inside_its_bucket() {
        // 100 requests: 50 at ≤ 10 ms, 50 in (150 ms, 250 ms]. Rank 99 is 49/50 into it.
        let mut c = Counts::empty();
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            c.buckets[i] = if *b >= 0.25 {
                100
            } else if *b >= 0.01 {
                50
            } else {
                0
            };
        }
        c.buckets[SLOTS - 1] = 100;
        c.requests = 100;
        let p99 = c.p99().unwrap();
        assert!((p99 - (0.15 + 0.1 * 49.0 / 50.0)).abs() < 1e-9, "{p99}");
        let p50 = c.quantile(0.5).unwrap();
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        // Everything in the first bucket interpolates from zero.
        let fast = side(100, 0, 0.0005).counts;
        assert!((fast.p99().unwrap() - 0.00099).abs() < 1e-9);
        // Slower than the last bound: the histogram only knows "over 10 s".
        assert_eq!(side(100, 0, 30.0).counts.p99(), Some(10.0));
        assert_eq!(Counts::empty().p99(), None);
    }

    #[test]
    fn hosts_add_up() {
        let mut sum = side(100, 1, 0.02).counts;
        sum.add(&side(300, 5, 0.02).counts);
        assert_eq!((sum.requests, sum.errors), (400, 6));
        assert_eq!(*sum.buckets.last().unwrap(), 400);
        let mut from_empty = Counts::default();
        from_empty.add(&sum);
        assert_eq!(from_empty, sum);
    }

    #[test]
    fn a_sick_canary_fails_on_the_absolute_ratio_with_the_numbers() {
        let j = judge(
            &t(),
            "canary",
            &side(2000, 96, 0.02),
            Some(&side(3000, 3, 0.02)),
        );
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.message,
            "canary 5xx 4.8 % (96/2000) vs baseline 0.1 % (3/3000) > max 1.0 %: reverting"
        );
    }

    #[test]
    fn a_canary_under_the_absolute_max_fails_on_the_increase() {
        let j = judge(
            &t(),
            "canary",
            &side(2000, 16, 0.02),
            Some(&side(3000, 3, 0.02)),
        );
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.message,
            "canary 5xx 0.8 % (16/2000) vs baseline 0.1 % (3/3000) = 8× > 2×: reverting"
        );
        // A clean baseline counts as 0.1 %: one error in 2000 is no "infinite" increase.
        let j = judge(
            &t(),
            "canary",
            &side(2000, 1, 0.02),
            Some(&side(3000, 0, 0.02)),
        );
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.message);
        // Nor are a few errors in a small window: 4 in 400 is 10× the baseline's 0.1 %.
        let j = judge(
            &t(),
            "canary",
            &side(400, 4, 0.02),
            Some(&side(3000, 3, 0.02)),
        );
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.message);
        let j = judge(
            &t(),
            "canary",
            &side(500, 5, 0.02),
            Some(&side(3000, 3, 0.02)),
        );
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.message);
    }

    #[test]
    fn a_slow_canary_fails_on_p99() {
        let j = judge(
            &t(),
            "batch 2",
            &side(2000, 0, 0.41),
            Some(&side(3000, 0, 0.18)),
        );
        assert_eq!(j.verdict, Verdict::Fail);
        // Both interpolate to 99 % of their bucket: (0.4, 0.6] and (0.15, 0.25].
        assert_eq!(
            j.message,
            "batch 2 p99 598 ms vs baseline 249 ms = 2.4× > 1.5×: reverting"
        );
        // Tiny latencies are not compared as ratios.
        let j = judge(
            &t(),
            "canary",
            &side(2000, 0, 0.004),
            Some(&side(3000, 0, 0.001)),
        );
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.message);
    }

    #[test]
    fn a_healthy_canary_passes_and_says_against_what() {
        let j = judge(
            &t(),
            "canary",
            &side(2000, 2, 0.02),
            Some(&side(3000, 3, 0.02)),
        );
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(
            j.message,
            "canary 5xx 0.1 % (2/2000) vs baseline 0.1 % (3/3000), p99 25 ms vs 25 ms: \
             within max 1.0 %, 2× and 1.5×: promoting"
        );
    }

    #[test]
    fn too_little_traffic_waits_and_never_passes() {
        let j = judge(
            &t(),
            "canary",
            &side(150, 0, 0.02),
            Some(&side(3000, 3, 0.02)),
        );
        assert_eq!(j.verdict, Verdict::Wait);
        assert_eq!(
            j.message,
            "canary served 150 requests in 1m on 1 hosts, needs 200: waiting for more traffic"
        );
    }

    #[test]
    fn without_a_baseline_only_the_absolute_threshold_applies() {
        // Slow and with errors, but under the absolute max: nothing to compare with.
        let j = judge(&t(), "fleet", &side(2000, 10, 0.5), None);
        assert_eq!(j.verdict, Verdict::Pass);
        assert!(j.message.contains("no baseline left"), "{}", j.message);
        let j = judge(&t(), "fleet", &side(2000, 40, 0.02), None);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.message,
            "fleet 5xx 2.0 % (40/2000) > max 1.0 %: reverting"
        );
        // A baseline with too little traffic is no baseline.
        let j = judge(
            &t(),
            "canary",
            &side(2000, 10, 0.5),
            Some(&side(20, 0, 0.02)),
        );
        assert_eq!(j.verdict, Verdict::Pass);
        assert!(
            j.message.contains("baseline served only 20"),
            "{}",
            j.message
        );
    }

    #[test]
    fn samples_spread_over_the_list() {
        let all: Vec<u32> = (0..100).collect();
        assert_eq!(spread(&all, 4), [0, 25, 50, 75]);
        assert_eq!(spread(&all[..3], 50), [0, 1, 2]);
        assert!(spread::<u32>(&[], 5).is_empty());
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(pct(0.048), "4.8 %");
        assert_eq!(pct(0.0), "0.0 %");
        assert_eq!(pct(0.0004), "0.04 %");
        assert_eq!(fmt_secs(0.412), "412 ms");
        assert_eq!(fmt_secs(1.5), "1.50 s");
        assert_eq!(fmt_secs(10.0), "> 10 s");
        assert_eq!(times(2.2857), "2.29×");
    }
}
