//! The rollout flags that change the spec's `[rollout.analysis]` for one rollout, checked
//! as they are typed by the spec's own bounds, and how a rollout's verdicts are shown.

use std::time::Duration;

use clap::Args;
use fleet_proto::spec::{check_flag, check_min_requests, check_window, gate_bounds};
use fleet_proto::v1::{AnalysisOverride, AnalysisSide, AnalysisVerdict, RolloutInfo};
use fleet_proto::values::parse_duration;
use serde_json::json;

#[derive(Args, Clone, Debug, Default)]
pub struct AnalysisOpts {
    /// Judge each batch's traffic over windows this long [default: the spec's
    /// rollout.analysis.window, else 60s].
    #[arg(long, value_name = "DURATION", value_parser = window)]
    pub analysis_window: Option<Duration>,
    /// Requests a batch must serve in a window to be judged (fewer: wait, then fail).
    #[arg(long, value_name = "N", value_parser = min_requests)]
    pub min_requests: Option<u64>,
    /// Highest 5xx ratio a batch may show, 0 to 1 (0.01 = 1 %).
    #[arg(long, value_name = "RATIO", value_parser = |v: &str| threshold("max_error_ratio", v))]
    pub max_error_ratio: Option<f64>,
    /// Highest batch 5xx ratio over the baseline's (2.0 = twice).
    #[arg(long, value_name = "X", value_parser = |v: &str| threshold("max_error_increase", v))]
    pub max_error_increase: Option<f64>,
    /// Highest batch p99 over the baseline's (above the histogram's bucket step, 1.34).
    #[arg(long, value_name = "X", value_parser = |v: &str| threshold("max_p99_increase", v))]
    pub max_p99_increase: Option<f64>,
    /// Keep judging the fleet this long after the last batch (0s: no bake).
    #[arg(long, value_name = "DURATION", value_parser = bake)]
    pub bake: Option<Duration>,
    /// Judge nothing beyond the health gate and bake nothing, whatever the spec says.
    #[arg(long, conflicts_with_all = [
        "analysis_window", "min_requests", "max_error_ratio", "max_error_increase",
        "max_p99_increase", "bake",
    ])]
    pub no_analysis: bool,
}

fn window(v: &str) -> Result<Duration, String> {
    let d = parse_duration("--analysis-window", v).map_err(|e| e.to_string())?;
    check_window("window", d).map_err(|e| e.to_string())
}

fn bake(v: &str) -> Result<Duration, String> {
    let d = parse_duration("--bake", v).map_err(|e| e.to_string())?;
    check_window("bake", d).map_err(|e| e.to_string())
}

fn min_requests(v: &str) -> Result<u64, String> {
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|_| format!("--min-requests {v:?}: expected a whole number"))?;
    check_min_requests(n).map_err(|e| e.to_string())
}

fn threshold(flag: &str, v: &str) -> Result<f64, String> {
    let x: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("--{} {v:?}: expected a number", flag.replace('_', "-")))?;
    check_flag(flag, x).map_err(|e| e.to_string())
}

impl AnalysisOpts {
    pub fn to_wire(&self) -> AnalysisOverride {
        AnalysisOverride {
            disabled: self.no_analysis,
            window_ms: self.analysis_window.map(|d| d.as_millis() as u64),
            min_requests: self.min_requests,
            max_error_ratio: self.max_error_ratio,
            max_error_increase: self.max_error_increase,
            max_p99_increase: self.max_p99_increase,
            bake_ms: self.bake.map(|d| d.as_millis() as u64),
        }
    }
}

fn stage(info: &RolloutInfo, batch: u32) -> String {
    if batch as usize >= info.batches.len() {
        "bake".into()
    } else {
        crate::rollout::batch_label(info, batch)
    }
}

/// Lines of `rollout status`: the thresholds, then one line per judged batch.
pub fn lines(info: &RolloutInfo) -> Vec<String> {
    let Some(a) = &info.analysis else {
        return Vec::new();
    };
    let mut out = vec![format!(
        "  analysis: window {}, min {} requests, 5xx ≤ {} % and ≤ {}× baseline, p99 ≤ {}× baseline, bake {}",
        humantime::format_duration(Duration::from_millis(a.window_ms)),
        a.min_requests,
        a.max_error_ratio * 100.0,
        a.max_error_increase,
        a.max_p99_increase,
        humantime::format_duration(Duration::from_millis(a.bake_ms)),
    )];
    for g in &a.gates {
        out.push(format!(
            "  query {}: {} {} (on {})",
            g.name,
            g.query.split_whitespace().collect::<Vec<_>>().join(" "),
            gate_bounds(g.min, g.max),
            g.prometheus
        ));
    }
    for v in &info.verdicts {
        out.push(format!(
            "  {:<10} {:<8} {}",
            stage(info, v.batch),
            v.verdict,
            v.message
        ));
    }
    out
}

fn side_json(s: &Option<AnalysisSide>) -> serde_json::Value {
    match s {
        None => serde_json::Value::Null,
        Some(s) => json!({
            "hosts": s.hosts,
            "requests": s.requests,
            "errors": s.errors,
            "error_ratio": if s.requests == 0 { 0.0 } else { s.errors as f64 / s.requests as f64 },
            "p99_seconds": s.p99_seconds,
        }),
    }
}

fn verdict_json(info: &RolloutInfo, v: &AnalysisVerdict) -> serde_json::Value {
    json!({
        "batch": v.batch,
        "stage": stage(info, v.batch),
        "verdict": v.verdict,
        "message": v.message,
        "canary": side_json(&v.canary),
        "baseline": side_json(&v.baseline),
        "windows": v.windows,
        "time_ms": v.time_ms,
    })
}

/// The analysis fields of `rollout --output json`.
pub fn json(info: &RolloutInfo) -> (serde_json::Value, serde_json::Value) {
    let settings = match &info.analysis {
        None => serde_json::Value::Null,
        Some(a) => json!({
            "window_ms": a.window_ms,
            "min_requests": a.min_requests,
            "max_error_ratio": a.max_error_ratio,
            "max_error_increase": a.max_error_increase,
            "max_p99_increase": a.max_p99_increase,
            "bake_ms": a.bake_ms,
            "gates": a.gates.iter().map(|g| json!({
                "name": g.name,
                "prometheus": g.prometheus,
                "query": g.query,
                "max": g.max,
                "min": g.min,
            })).collect::<Vec<_>>(),
        }),
    };
    let verdicts = info
        .verdicts
        .iter()
        .map(|v| verdict_json(info, v))
        .collect();
    (settings, serde_json::Value::Array(verdicts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::{AnalysisGate, AnalysisSettings, RolloutBatch};

    #[test]
    fn verdicts_show_per_batch_with_the_thresholds() {
        let info = RolloutInfo {
            canary: 1,
            batches: vec![RolloutBatch::default(), RolloutBatch::default()],
            analysis: Some(AnalysisSettings {
                window_ms: 60_000,
                min_requests: 200,
                max_error_ratio: 0.01,
                max_error_increase: 2.0,
                max_p99_increase: 1.5,
                bake_ms: 600_000,
                gates: vec![AnalysisGate {
                    name: "errors".into(),
                    prometheus: "http://p:9090".into(),
                    query: "sum(rate(x[{{window}}]))\n  / 2".into(),
                    max: Some(0.5),
                    min: None,
                }],
            }),
            verdicts: vec![
                AnalysisVerdict {
                    batch: 0,
                    verdict: "pass".into(),
                    message: "canary ok".into(),
                    canary: Some(AnalysisSide {
                        hosts: 1,
                        requests: 2000,
                        errors: 20,
                        p99_seconds: 0.2,
                    }),
                    ..Default::default()
                },
                AnalysisVerdict {
                    batch: 2,
                    verdict: "fail".into(),
                    message: "fleet 5xx 2 %".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let l = lines(&info);
        assert_eq!(
            l[0],
            "  analysis: window 1m, min 200 requests, 5xx ≤ 1 % and ≤ 2× baseline, p99 ≤ 1.5× baseline, bake 10m"
        );
        assert_eq!(
            l[1],
            "  query errors: sum(rate(x[{{window}}])) / 2 ≤ 0.5 (on http://p:9090)"
        );
        assert_eq!(l[2], "  canary     pass     canary ok");
        assert_eq!(l[3], "  bake       fail     fleet 5xx 2 %");
        let (settings, verdicts) = json(&info);
        assert_eq!(settings["min_requests"], 200);
        assert_eq!(settings["gates"][0]["max"], 0.5);
        assert!(settings["gates"][0]["min"].is_null());
        assert_eq!(verdicts[0]["canary"]["error_ratio"], 0.01);
        assert_eq!(verdicts[1]["stage"], "bake");
        assert!(verdicts[1]["baseline"].is_null());
        assert!(lines(&RolloutInfo::default()).is_empty());
    }
}
