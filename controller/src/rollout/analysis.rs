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
/// `baseline` is `None` when there is nothing to compare with, and `base_name` names it
/// in the reasons ("baseline"; a bake compares the fleet with the "rollout baseline", the
/// previous release as the batches' baseline windows counted it).
pub fn judge_against(
    t: &Analysis,
    who: &str,
    canary: &Side,
    baseline: Option<&Side>,
    base_name: &str,
) -> Judgement {
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
                "{base_name} served only {} requests: absolute threshold only",
                b.counts.requests
            ),
        ),
        Some(b) => (Some(&b.counts), String::new()),
    };
    let ratio = c.error_ratio();
    if ratio > t.max_error_ratio {
        let vs = base
            .map(|b| format!(" vs {base_name} {}", ratio_of(b)))
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
            "{who} 5xx {} vs {base_name} {} = {} > {}: reverting",
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
            "{who} p99 {} vs {base_name} {} = {} > {}: reverting",
            fmt_secs(cp),
            fmt_secs(bp),
            times(slower),
            times(t.max_p99_increase)
        ));
    }
    Judgement {
        verdict: Verdict::Pass,
        message: format!(
            "{who} 5xx {} vs {base_name} {}, p99 {} vs {}: within max {}, {} and {}: promoting",
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
mod tests;
