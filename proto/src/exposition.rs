//! Prometheus exposition formats, shared by the agent's and the controller's `/metrics`.
//! Both encode with prometheus-client, which writes OpenMetrics 1.0, which Prometheus asks for
//! and parses natively. Plain clients (curl, `promtool check metrics`, older scrapers) get
//! the Prometheus text format 0.0.4 instead, as node_exporter serves them: the two differ,
//! for what fleet exports, only in metadata lines, so the 0.0.4 text is derived from the
//! library's output rather than encoded by hand:
//!
//! - a counter family is named with its `_total` suffix in `# HELP`/`# TYPE` (OpenMetrics
//!   names the family without it, so a 0.0.4 parser would see an untyped `…_total`);
//! - `# UNIT` and `# EOF` lines do not exist in 0.0.4 and are dropped;
//! - `unknown` is spelled `untyped`.
//!
//! Samples, labels, escaping and histogram series are identical in both and pass through.
//! (fleet sets no exemplars and no `_created` series, the two sample-level differences.)

use std::collections::HashSet;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    /// OpenMetrics when the client lists it in `Accept` (Prometheus always does), the
    /// classic text format otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Text => PROMETHEUS_TEXT,
        }
    }
}

/// Rewrites prometheus-client's OpenMetrics text as Prometheus text 0.0.4.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                });
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `(family name, type)` of every `# TYPE` line of a 0.0.4 text.
pub fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "\
# HELP node_cpu_seconds Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds counter
# UNIT node_cpu_seconds seconds
node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12.5
# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1 0.5
# HELP probe_seconds Probe latency.
# TYPE probe_seconds histogram
# UNIT probe_seconds seconds
probe_seconds_sum{app=\"a\"} 0.1
probe_seconds_count{app=\"a\"} 1
probe_seconds_bucket{le=\"+Inf\",app=\"a\"} 1
# HELP odd Odd one.
# TYPE odd unknown
odd 1
# EOF
";

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let text = to_prometheus_text(OM);
        assert_eq!(
            text,
            "\
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12.5
# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1 0.5
# HELP probe_seconds Probe latency.
# TYPE probe_seconds histogram
probe_seconds_sum{app=\"a\"} 0.1
probe_seconds_count{app=\"a\"} 1
probe_seconds_bucket{le=\"+Inf\",app=\"a\"} 1
# HELP odd Odd one.
# TYPE odd untyped
odd 1
"
        );
        assert_eq!(
            families(&text),
            [
                ("node_cpu_seconds_total".to_owned(), "counter".to_owned()),
                ("node_load1".into(), "gauge".into()),
                ("probe_seconds".into(), "histogram".into()),
                ("odd".into(), "untyped".into()),
            ]
        );
    }

    #[test]
    fn negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
        assert!(Format::Text.content_type().contains("0.0.4"));
    }
}
