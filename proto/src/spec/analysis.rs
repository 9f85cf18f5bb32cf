//! The spec's `[rollout.analysis]`: the thresholds a rollout judges each batch's real
//! traffic with (canary against the hosts still on the previous release), and the bake
//! after the last batch. Checked here for `fleetctl app apply`, for fleetctl's per-rollout
//! flags and for the override as it arrives in a RolloutRequest, by the same code.

use std::time::Duration;

use serde::Deserialize;

use super::gates::{check_gates, PromGate, RawGate};
use super::{duration, err, SpecError};
use crate::requests::DURATION_BUCKETS;
use crate::v1;

/// Validated analysis thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Analysis {
    /// Canary and baseline are compared over the same window, one window after another.
    pub window: Duration,
    /// Requests the canary must serve in a window to be judged at all.
    pub min_requests: u64,
    /// Canary 5xx ratio, absolute (0 to 1).
    pub max_error_ratio: f64,
    /// Canary 5xx ratio over the baseline's.
    pub max_error_increase: f64,
    /// Canary p99 over the baseline's.
    pub max_p99_increase: f64,
    /// Judging of the whole fleet after the last batch; zero: none.
    pub bake: Duration,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            window: Duration::from_secs(60),
            min_requests: 200,
            max_error_ratio: 0.01,
            max_error_increase: 2.0,
            max_p99_increase: 1.5,
            bake: Duration::ZERO,
        }
    }
}

const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(3600);
const MAX_BAKE: Duration = Duration::from_secs(24 * 3600);
const MAX_MIN_REQUESTS: u64 = 100_000_000;
const MAX_INCREASE: f64 = 1000.0;

/// The narrowest step between two bounds of the duration histogram. A p99 is interpolated
/// inside one bucket, so an increase no wider than a bucket can come from the bucketing
/// alone: `max_p99_increase` must be above it to mean anything.
pub fn finest_bucket_step() -> f64 {
    DURATION_BUCKETS
        .windows(2)
        .map(|w| w[1] / w[0])
        .fold(f64::INFINITY, f64::min)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    analysis: Option<RawAnalysis>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    window: Option<String>,
    min_requests: Option<u64>,
    max_error_ratio: Option<f64>,
    max_error_increase: Option<f64>,
    max_p99_increase: Option<f64>,
    bake: Option<String>,
    /// PromQL gates on the operator's Prometheus.
    #[serde(default)]
    query: Vec<RawGate>,
}

const F: &str = "rollout.analysis";

/// The thresholds and the PromQL gates of `[rollout.analysis]`.
pub(super) fn check_rollout(
    raw: Option<RawRollout>,
) -> Result<(Option<Analysis>, Vec<PromGate>), SpecError> {
    let Some(raw) = raw.and_then(|r| r.analysis) else {
        return Ok((None, Vec::new()));
    };
    let gates = check_gates(raw.query, &format!("{F}.query"))?;
    let d = Analysis::default();
    let a = Analysis {
        window: duration(
            &format!("{F}.window"),
            raw.window.as_deref(),
            d.window,
            MIN_WINDOW,
            MAX_WINDOW,
        )?,
        min_requests: raw.min_requests.unwrap_or(d.min_requests),
        max_error_ratio: raw.max_error_ratio.unwrap_or(d.max_error_ratio),
        max_error_increase: raw.max_error_increase.unwrap_or(d.max_error_increase),
        max_p99_increase: raw.max_p99_increase.unwrap_or(d.max_p99_increase),
        bake: duration(
            &format!("{F}.bake"),
            raw.bake.as_deref(),
            d.bake,
            Duration::ZERO,
            MAX_BAKE,
        )?,
    };
    Ok((Some(a.check(F)?), gates))
}

impl Analysis {
    /// The bounds every source of thresholds (spec, flags, wire) must keep; `prefix` names
    /// the field as the operator wrote it ("rollout.analysis" or "-").
    fn check(self, prefix: &str) -> Result<Analysis, SpecError> {
        let name = |f: &str| {
            if prefix == "-" {
                let flag = if f == "window" { "analysis_window" } else { f };
                format!("--{}", flag.replace('_', "-"))
            } else {
                format!("{prefix}.{f}")
            }
        };
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&self.window) {
            return Err(err(name("window"), "must be between 1s and 1h"));
        }
        if self.bake > MAX_BAKE {
            return Err(err(name("bake"), "must be at most 24h"));
        }
        if !(1..=MAX_MIN_REQUESTS).contains(&self.min_requests) {
            return Err(err(
                name("min_requests"),
                format!("must be between 1 and {MAX_MIN_REQUESTS} (never judge on no traffic)"),
            ));
        }
        if !(0.0..=1.0).contains(&self.max_error_ratio) {
            return Err(err(
                name("max_error_ratio"),
                "must be between 0 and 1 (0.01 is 1 % of requests answered 5xx)",
            ));
        }
        if !(self.max_error_increase > 1.0 && self.max_error_increase <= MAX_INCREASE) {
            return Err(err(
                name("max_error_increase"),
                format!("must be above 1 and at most {MAX_INCREASE} (canary 5xx ratio over the baseline's; 2.0 is twice)"),
            ));
        }
        let step = finest_bucket_step();
        if !(self.max_p99_increase > step && self.max_p99_increase <= MAX_INCREASE) {
            return Err(err(
                name("max_p99_increase"),
                format!(
                    "must be above {:.2} and at most {MAX_INCREASE}: p99 is interpolated inside \
                     latency buckets at least {step:.2}× wide, so a smaller increase can come from \
                     the bucketing alone",
                    (step * 100.0).ceil() / 100.0
                ),
            ));
        }
        Ok(self)
    }

    /// `self` with a rollout's override applied; `Ok(None)` when it disables analysis.
    /// Starts from the defaults when the spec has no analysis but the override sets a field.
    pub fn with_override(
        spec: Option<Analysis>,
        o: &v1::AnalysisOverride,
    ) -> Result<Option<Analysis>, SpecError> {
        if o.disabled {
            return Ok(None);
        }
        let touched = o.window_ms.is_some()
            || o.min_requests.is_some()
            || o.max_error_ratio.is_some()
            || o.max_error_increase.is_some()
            || o.max_p99_increase.is_some()
            || o.bake_ms.is_some();
        let Some(mut a) = spec.or(touched.then(Analysis::default)) else {
            return Ok(None);
        };
        if let Some(ms) = o.window_ms {
            a.window = Duration::from_millis(ms);
        }
        if let Some(n) = o.min_requests {
            a.min_requests = n;
        }
        if let Some(x) = o.max_error_ratio {
            a.max_error_ratio = x;
        }
        if let Some(x) = o.max_error_increase {
            a.max_error_increase = x;
        }
        if let Some(x) = o.max_p99_increase {
            a.max_p99_increase = x;
        }
        if let Some(ms) = o.bake_ms {
            a.bake = Duration::from_millis(ms);
        }
        a.check("-").map(Some)
    }

    pub fn to_wire(self) -> v1::AnalysisSettings {
        v1::AnalysisSettings {
            window_ms: self.window.as_millis() as u64,
            min_requests: self.min_requests,
            max_error_ratio: self.max_error_ratio,
            max_error_increase: self.max_error_increase,
            max_p99_increase: self.max_p99_increase,
            bake_ms: self.bake.as_millis() as u64,
            // The spec's gates are not thresholds: the caller adds them.
            gates: Vec::new(),
        }
    }
}

/// fleetctl's `--max-error-ratio` and friends, checked as they are typed (the full check
/// runs again with the spec's values on the controller).
pub fn check_flag(flag: &str, value: f64) -> Result<f64, SpecError> {
    let probe = |a: Analysis| a.check("-").map(|_| value);
    let d = Analysis::default();
    match flag {
        "max_error_ratio" => probe(Analysis {
            max_error_ratio: value,
            ..d
        }),
        "max_error_increase" => probe(Analysis {
            max_error_increase: value,
            ..d
        }),
        "max_p99_increase" => probe(Analysis {
            max_p99_increase: value,
            ..d
        }),
        other => Err(err(format!("--{other}"), "not an analysis threshold")),
    }
}

/// fleetctl's `--min-requests`.
pub fn check_min_requests(value: u64) -> Result<u64, SpecError> {
    Analysis {
        min_requests: value,
        ..Analysis::default()
    }
    .check("-")
    .map(|a| a.min_requests)
}

/// fleetctl's `--analysis-window` and `--bake`.
pub fn check_window(flag: &str, value: Duration) -> Result<Duration, SpecError> {
    let d = Analysis::default();
    match flag {
        "window" => Analysis { window: value, ..d }.check("-").map(|a| a.window),
        _ => Analysis { bake: value, ..d }.check("-").map(|a| a.bake),
    }
}
