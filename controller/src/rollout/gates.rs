//! The spec's PromQL gates in a judged window: each query asked of its Prometheus for the
//! judged release (in parallel, each bounded by the client's deadline), each answer turned
//! into a verdict, and those folded into the window's judgement next to the built-in
//! thresholds. A query without a value — an error, no series, NaN — is "cannot judge":
//! never a pass, so a batch waits and fails at its deadline rather than promote blind.

use std::time::Duration;

use fleet_proto::spec::PromGate;

use super::analysis::{Judgement, Verdict};
use crate::prometheus::{self, QueryError, Sample};

/// One gate's outcome in one window.
#[derive(Clone, Debug, PartialEq)]
pub struct GateResult {
    pub verdict: Verdict,
    pub message: String,
}

fn num(v: f64) -> String {
    if v.is_finite() && v != 0.0 && v.abs() < 0.001 {
        format!("{v:.3e}")
    } else {
        format!("{}", (v * 10_000.0).round() / 10_000.0)
    }
}

/// The verdict on one gate's answer: every series must keep the bounds.
pub fn judge_gate(g: &PromGate, answer: Result<Vec<Sample>, QueryError>) -> GateResult {
    let unknown = |why: String| GateResult {
        verdict: Verdict::Unknown,
        message: format!("query {}: {why}", g.name),
    };
    let samples = match answer {
        Ok(s) => s,
        Err(e) => return unknown(e.to_string()),
    };
    if samples.is_empty() {
        return unknown("no series (no data for this release yet)".into());
    }
    if let Some(s) = samples.iter().find(|s| s.value.is_nan()) {
        return unknown(format!("NaN for {} (a ratio over no requests?)", s.labels));
    }
    if let Some(s) = samples.iter().find(|s| !g.holds(s.value)) {
        let of = if samples.len() > 1 {
            format!(" for {}", s.labels)
        } else {
            String::new()
        };
        return GateResult {
            verdict: Verdict::Fail,
            message: format!(
                "query {} = {}{of}, not {}",
                g.name,
                num(s.value),
                g.bounds()
            ),
        };
    }
    let value = if samples.len() == 1 {
        num(samples[0].value)
    } else {
        let max = samples.iter().map(|s| s.value).fold(f64::MIN, f64::max);
        format!("up to {} over {} series", num(max), samples.len())
    };
    GateResult {
        verdict: Verdict::Pass,
        message: format!("query {} = {value} {}", g.name, g.bounds()),
    }
}

/// Every gate of the spec for `release`, asked at once, in the spec's order.
pub async fn ask(
    gates: &[PromGate],
    app: &str,
    release: &str,
    window: Duration,
) -> Vec<GateResult> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, g) in gates.iter().enumerate() {
        let (g, q) = (g.clone(), g.render(app, release, window));
        tasks.spawn(async move {
            (
                i,
                judge_gate(&g, prometheus::query(&g.prometheus, &q).await),
            )
        });
    }
    let mut out: Vec<GateResult> = gates
        .iter()
        .map(|g| GateResult {
            verdict: Verdict::Unknown,
            message: format!("query {}: no answer", g.name),
        })
        .collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, r)) = joined {
            out[i] = r;
        }
    }
    out
}

/// The window's judgement with the gates' results folded in. A failed gate fails the
/// window even while the built-in thresholds wait for traffic (it is evidence on its
/// own); a gate that cannot judge holds back a pass.
pub fn combine(who: &str, builtin: Judgement, gates: &[GateResult]) -> Judgement {
    if gates.is_empty() || builtin.verdict == Verdict::Fail {
        return builtin;
    }
    if let Some(f) = gates.iter().find(|g| g.verdict == Verdict::Fail) {
        return Judgement {
            verdict: Verdict::Fail,
            message: format!("{who} {}: reverting", f.message),
        };
    }
    if builtin.verdict != Verdict::Pass {
        return builtin;
    }
    if let Some(u) = gates.iter().find(|g| g.verdict == Verdict::Unknown) {
        return Judgement {
            verdict: Verdict::Unknown,
            message: format!("cannot judge {who} this window: {}", u.message),
        };
    }
    let said: Vec<&str> = gates.iter().map(|g| g.message.as_str()).collect();
    let message = match builtin.message.rsplit_once(": ") {
        Some((head, tail)) => format!("{head}; {}: {tail}", said.join("; ")),
        None => format!("{}; {}", builtin.message, said.join("; ")),
    };
    Judgement {
        verdict: Verdict::Pass,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::spec::AppSpec;

    fn gate(bounds: &str) -> PromGate {
        let toml = format!(
            "name = \"shop\"\nserver = \"gunicorn\"\nentry = \"app:app\"\nlisten = \"127.0.0.1:8000\"\n\
             [health]\npath = \"/health\"\n[rollout.analysis]\n[[rollout.analysis.query]]\n\
             name = \"fails\"\nprometheus = \"http://p:9090\"\nquery = 'up'\n{bounds}"
        );
        AppSpec::parse(&toml).unwrap().gates.remove(0)
    }

    fn sample(v: f64) -> Sample {
        Sample {
            labels: "{host=\"h1\"}".into(),
            value: v,
        }
    }

    fn pass(message: &str) -> Judgement {
        Judgement {
            verdict: Verdict::Pass,
            message: message.into(),
        }
    }

    #[test]
    fn a_value_over_max_fails_and_no_value_cannot_judge() {
        let g = gate("max = 0.5");
        let r = judge_gate(&g, Ok(vec![sample(0.8)]));
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.message, "query fails = 0.8, not ≤ 0.5");
        assert_eq!(judge_gate(&g, Ok(vec![sample(0.5)])).verdict, Verdict::Pass);
        assert_eq!(judge_gate(&g, Ok(vec![])).verdict, Verdict::Unknown);
        assert_eq!(
            judge_gate(&g, Ok(vec![sample(f64::NAN)])).verdict,
            Verdict::Unknown
        );
        let down = Err(QueryError::Unreachable {
            url: "http://p:9090".into(),
            reason: "connection refused".into(),
        });
        let r = judge_gate(&g, down);
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(r.message.contains("connection refused"), "{}", r.message);
        // Every series counts: one bad host is enough.
        let r = judge_gate(&g, Ok(vec![sample(0.1), sample(f64::INFINITY)]));
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.message.contains("for {host=\"h1\"}"), "{}", r.message);
        let g = gate("min = 0.99");
        assert_eq!(judge_gate(&g, Ok(vec![sample(0.9)])).verdict, Verdict::Fail);
    }

    #[test]
    fn gates_fold_into_the_windows_judgement() {
        let ok = GateResult {
            verdict: Verdict::Pass,
            message: "query fails = 0.1 ≤ 0.5".into(),
        };
        let bad = GateResult {
            verdict: Verdict::Fail,
            message: "query fails = 0.8, not ≤ 0.5".into(),
        };
        let blind = GateResult {
            verdict: Verdict::Unknown,
            message: "query fails: no series".into(),
        };
        let j = combine(
            "canary",
            pass("canary 5xx 0.0 %: promoting"),
            std::slice::from_ref(&ok),
        );
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(
            j.message,
            "canary 5xx 0.0 %; query fails = 0.1 ≤ 0.5: promoting"
        );
        let j = combine("canary", pass("x: promoting"), &[ok.clone(), bad.clone()]);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.message, "canary query fails = 0.8, not ≤ 0.5: reverting");
        // A gate's failure is evidence even while the traffic thresholds wait.
        let waiting = Judgement {
            verdict: Verdict::Wait,
            message: "waiting".into(),
        };
        assert_eq!(
            combine("canary", waiting.clone(), &[bad]).verdict,
            Verdict::Fail
        );
        assert_eq!(
            combine("canary", waiting, std::slice::from_ref(&ok)).verdict,
            Verdict::Wait
        );
        let j = combine("canary", pass("x: promoting"), &[ok, blind]);
        assert_eq!(j.verdict, Verdict::Unknown);
        assert!(
            j.message.starts_with("cannot judge canary"),
            "{}",
            j.message
        );
        assert_eq!(combine("canary", pass("x"), &[]), pass("x"));
    }
}
