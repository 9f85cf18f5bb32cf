//! `[[rollout.analysis.query]]`: PromQL gates on the operator's own Prometheus, judged
//! next to the built-in 5xx and p99 thresholds in every window. Checked here for shape
//! (URL, placeholders, bounds) by fleetctl and the controller alike; whether Prometheus
//! accepts the query is asked by the controller at `app apply`, since only Prometheus'
//! own parser knows PromQL as that server speaks it.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::{err, SpecError};

/// Gates per app at most: each is one HTTP query per window.
pub const MAX_GATES: usize = 8;
const MAX_QUERY_LEN: usize = 4096;
const MAX_NAME_LEN: usize = 40;
/// What `{{…}}` may name in a query.
pub const PLACEHOLDERS: [&str; 3] = ["app", "release", "window"];

/// A Prometheus server's base URL: `http://host[:port][/prefix]`, parsed once where it
/// enters so every query is built from checked parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusUrl {
    url: String,
    /// `host:port`, port 80 when the URL names none.
    addr: String,
    /// What the Host header says: the authority as written.
    host: String,
    /// The path before `/api/v1/…`, without a trailing '/' (often empty).
    prefix: String,
}

impl PrometheusUrl {
    pub fn parse(s: &str) -> Result<PrometheusUrl, String> {
        let bad = || {
            format!(
                "{s:?} is not a Prometheus URL: write it as http://host[:port][/path] (plain \
                 http; put a local relay in front of an https server)"
            )
        };
        let uri: http::Uri = s.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") || uri.query().is_some() {
            return Err(bad());
        }
        let authority = uri.authority().ok_or_else(bad)?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(bad());
        }
        let addr = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        Ok(PrometheusUrl {
            url: s.trim_end_matches('/').to_owned(),
            addr,
            host: authority.as_str().to_owned(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The address to connect to, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The authority as written, for the Host header.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The request path of an API endpoint, e.g. `api("query")`.
    pub fn api(&self, endpoint: &str) -> String {
        format!("{}/api/v1/{endpoint}", self.prefix)
    }
}

impl fmt::Display for PrometheusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// One validated gate: the query's value must stay within `min..=max` for the judged
/// release; a query without a value (no series, NaN, an error) is "cannot judge".
#[derive(Clone, Debug, PartialEq)]
pub struct PromGate {
    /// `[a-z0-9_-]`, unique in the spec; `query1`, `query2`… when the spec names none.
    pub name: String,
    pub prometheus: PrometheusUrl,
    /// The query as written, with `{{app}}`, `{{release}}` and `{{window}}` unexpanded.
    pub query: String,
    pub max: Option<f64>,
    pub min: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGate {
    name: Option<String>,
    prometheus: String,
    query: String,
    max: Option<f64>,
    min: Option<f64>,
}

/// A query's parts: literal text and placeholders, in order.
enum Part<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn parts(query: &str) -> Result<Vec<Part<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = query;
    while let Some(open) = rest.find("{{") {
        out.push(Part::Text(&rest[..open]));
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or(
            "has a '{{' without its '}}' (placeholders are {{app}}, {{release}} and {{window}})",
        )?;
        let name = after[..close].trim();
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "names an unknown placeholder {{{{{name}}}}}: only {{{{app}}}}, {{{{release}}}} \
                 and {{{{window}}}} are filled in"
            ));
        }
        out.push(Part::Var(name));
        rest = &after[close + 2..];
    }
    out.push(Part::Text(rest));
    Ok(out)
}

/// A window as a PromQL duration: whole seconds when it is, else milliseconds.
pub fn promql_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A gate's bounds as reasons and `rollout status` write them (also for a gate read back
/// from the wire).
pub fn gate_bounds(min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (Some(lo), Some(hi)) => format!("within {lo}..={hi}"),
        (Some(lo), None) => format!("≥ {lo}"),
        (None, Some(hi)) => format!("≤ {hi}"),
        (None, None) => String::new(),
    }
}

impl PromGate {
    /// The query with its placeholders filled in. App names and versions are checked
    /// shapes without quotes or backslashes, so they are safe inside a PromQL string.
    pub fn render(&self, app: &str, release: &str, window: Duration) -> String {
        let Ok(parts) = parts(&self.query) else {
            // Checked when the gate was made; a query reaching here always splits.
            return self.query.clone();
        };
        let mut out = String::with_capacity(self.query.len() + 32);
        for p in parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var("app") => out.push_str(app),
                Part::Var("release") => out.push_str(release),
                Part::Var(_) => out.push_str(&promql_duration(window)),
            }
        }
        out
    }

    /// What the value must be, as a reason says it: "≤ 0.5", "≥ 0.99", "within 0.9..=1".
    pub fn bounds(&self) -> String {
        gate_bounds(self.min, self.max)
    }

    pub fn to_wire(&self) -> crate::v1::AnalysisGate {
        crate::v1::AnalysisGate {
            name: self.name.clone(),
            prometheus: self.prometheus.to_string(),
            query: self.query.clone(),
            max: self.max,
            min: self.min,
        }
    }

    /// Whether `value` keeps the bounds; NaN never does (checked by the caller first).
    pub fn holds(&self, value: f64) -> bool {
        self.min.is_none_or(|lo| value >= lo) && self.max.is_none_or(|hi| value <= hi)
    }
}

pub(super) fn check_gates(raw: Vec<RawGate>, prefix: &str) -> Result<Vec<PromGate>, SpecError> {
    if raw.len() > MAX_GATES {
        return Err(err(
            prefix,
            format!("at most {MAX_GATES} queries (each is asked every window)"),
        ));
    }
    let mut gates: Vec<PromGate> = Vec::with_capacity(raw.len());
    for (i, g) in raw.into_iter().enumerate() {
        let field = |f: &str| format!("{prefix}[{}].{f}", i + 1);
        let name = g.name.unwrap_or_else(|| format!("query{}", i + 1));
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        {
            return Err(err(
                field("name"),
                format!("{name:?} must be 1 to {MAX_NAME_LEN} of [a-z0-9_-]"),
            ));
        }
        if gates.iter().any(|o| o.name == name) {
            return Err(err(field("name"), format!("{name:?} names two queries")));
        }
        let prometheus =
            PrometheusUrl::parse(&g.prometheus).map_err(|e| err(field("prometheus"), e))?;
        let query = g.query.trim();
        if query.is_empty() || query.len() > MAX_QUERY_LEN {
            return Err(err(
                field("query"),
                format!("must be 1 to {MAX_QUERY_LEN} bytes of PromQL"),
            ));
        }
        if query
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
        {
            return Err(err(field("query"), "has a control character"));
        }
        parts(query).map_err(|e| err(field("query"), e))?;
        for (f, v) in [("max", g.max), ("min", g.min)] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(err(field(f), "must be a finite number"));
            }
        }
        match (g.min, g.max) {
            (None, None) => {
                return Err(err(
                    field("max"),
                    "a query needs `max` (reverting above it), `min` (below it) or both",
                ))
            }
            (Some(lo), Some(hi)) if lo > hi => {
                return Err(err(field("min"), format!("{lo} is above max {hi}")))
            }
            _ => {}
        }
        gates.push(PromGate {
            name,
            prometheus,
            query: query.to_owned(),
            max: g.max,
            min: g.min,
        });
    }
    Ok(gates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(query: &str, max: Option<f64>, min: Option<f64>) -> RawGate {
        RawGate {
            name: None,
            prometheus: "http://prom:9090".into(),
            query: query.into(),
            max,
            min,
        }
    }

    fn one(g: RawGate) -> Result<PromGate, SpecError> {
        check_gates(vec![g], "q").map(|mut v| v.remove(0))
    }

    #[test]
    fn urls_are_split_into_address_host_and_prefix() {
        let u = PrometheusUrl::parse("http://prom:9090").unwrap();
        assert_eq!(
            (u.addr(), u.host(), u.api("query").as_str()),
            ("prom:9090", "prom:9090", "/api/v1/query")
        );
        let u = PrometheusUrl::parse("http://10.0.0.5/prometheus/").unwrap();
        assert_eq!(
            (u.addr(), u.api("query").as_str()),
            ("10.0.0.5:80", "/prometheus/api/v1/query")
        );
        assert_eq!(u.to_string(), "http://10.0.0.5/prometheus");
        for bad in [
            "https://prom:9090",
            "prom:9090",
            "http://user:pw@prom:9090",
            "http://prom:9090/?x=1",
            "http://",
            "",
            "ftp://prom",
        ] {
            assert!(PrometheusUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn placeholders_are_filled_and_unknown_ones_refused() {
        let g = one(raw(
            r#"sum(rate(x{app="{{app}}",release="{{ release }}"}[{{window}}]))"#,
            Some(0.5),
            None,
        ))
        .unwrap();
        assert_eq!(g.name, "query1");
        assert_eq!(
            g.render("shop", "2.0", Duration::from_secs(60)),
            r#"sum(rate(x{app="shop",release="2.0"}[60s]))"#
        );
        assert_eq!(promql_duration(Duration::from_millis(1500)), "1500ms");
        let e = one(raw("x{a=\"{{host}}\"}", Some(1.0), None)).unwrap_err();
        assert_eq!(e.field, "q[1].query");
        assert!(e.reason.contains("{{host}}"), "{e}");
        assert!(one(raw("x{{release", Some(1.0), None)).is_err());
        // Single braces are PromQL's own.
        assert!(one(raw("up{job=\"a\"}", Some(1.0), None)).is_ok());
    }

    #[test]
    fn bounds_are_needed_finite_and_ordered() {
        assert_eq!(one(raw("up", None, None)).unwrap_err().field, "q[1].max");
        assert_eq!(
            one(raw("up", Some(f64::NAN), None)).unwrap_err().field,
            "q[1].max"
        );
        assert_eq!(
            one(raw("up", Some(1.0), Some(2.0))).unwrap_err().field,
            "q[1].min"
        );
        let g = one(raw("up", Some(1.0), Some(0.5))).unwrap();
        assert!(g.holds(0.5) && g.holds(1.0) && !g.holds(1.01) && !g.holds(0.4));
        assert!(!g.holds(f64::NAN));
        assert_eq!(g.bounds(), "within 0.5..=1");
        let g = one(raw("up", None, Some(0.99))).unwrap();
        assert_eq!(g.bounds(), "≥ 0.99");
        assert!(one(raw("", Some(1.0), None)).is_err());
        assert!(one(raw(&"x".repeat(MAX_QUERY_LEN + 1), Some(1.0), None)).is_err());
        assert!(one(raw("up\u{7}", Some(1.0), None)).is_err());
    }

    #[test]
    fn names_are_checked_and_unique_and_the_count_bounded() {
        let named = |n: &str| RawGate {
            name: Some(n.into()),
            ..raw("up", Some(1.0), None)
        };
        assert!(one(named("Checkout Failures")).is_err());
        let e = check_gates(vec![named("a"), named("a")], "q").unwrap_err();
        assert_eq!(e.field, "q[2].name");
        let many = (0..=MAX_GATES).map(|i| named(&format!("g{i}"))).collect();
        assert_eq!(check_gates(many, "q").unwrap_err().field, "q");
    }
}
