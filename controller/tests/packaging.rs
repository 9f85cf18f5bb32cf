//! The shipped Prometheus and Grafana files (packaging/): promtool accepts the rules, the
//! rule unit tests and the scrape config; the dashboard is valid JSON; and every fleet or
//! node metric they query is one the agent or the controller really exports (names taken
//! from the crates' own registries, so this cannot drift from the code).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use support::{promtool, promtool_present};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every series name the exporters produce: family names, plus a histogram's series.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, kind) in fleet_agent::metrics::exported_families()
        .into_iter()
        .chain(fleet_controller::metrics::exported_families())
    {
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name);
    }
    names
}

/// Identifiers in a PromQL-ish text that name node or fleet metrics.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut current = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
        } else {
            if current.starts_with("node_") || current.starts_with("fleet_") {
                out.insert(current.clone());
            }
            current.clear();
        }
    }
    out
}

/// All `expr` and templating query strings of a Grafana dashboard.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, out)),
        _ => {}
    }
}

fn check_names(what: &str, used: &BTreeSet<String>) {
    let exported = exported();
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "{what} uses metrics nobody exports: {unknown:?}\nexported: {exported:?}"
    );
}

#[test]
fn alert_rules_pass_promtool_and_query_real_metrics() {
    let dir = packaging().join("prometheus");
    let rules = read(&dir.join("alerts.yml"));
    let used = metric_names(&rules);
    assert!(used.len() >= 10, "{used:?}");
    check_names("alerts.yml", &used);

    // Every alert has a unit test.
    let tests = read(&dir.join("alerts_test.yml"));
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 22, "{alerts:?}");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alerts_test.yml has no test for {alert}"
        );
    }

    if !promtool_present() {
        return;
    }
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"],
        &["check", "config", "prometheus.yml"],
    ] {
        let (ok, out) = promtool(&dir, args, None);
        assert!(ok, "promtool {} failed:\n{out}", args.join(" "));
    }
}

#[test]
fn dashboard_is_json_and_queries_real_metrics() {
    let path = packaging().join("grafana/fleet-overview.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
    assert_eq!(dashboard["uid"], "fleet-overview");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 20, "{queries:?}");
    let used: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    for needed in [
        "fleet_controller_hosts",
        "fleet_app_release_info",
        "fleet_app_restarts_total",
        "fleet_rollouts_total",
        "fleet_app_http_requests_total",
        "fleet_app_http_request_duration_seconds_bucket",
        "node_cpu_seconds_total",
    ] {
        assert!(used.contains(needed), "the dashboard has no {needed} panel");
    }
    check_names("fleet-overview.json", &used);
}

#[test]
fn name_extraction() {
    let names = metric_names(
        "sum by (host) (rate(node_cpu_seconds_total{mode=\"idle\"}[5m])) / fleet_app_up and up",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["fleet_app_up", "node_cpu_seconds_total"]
    );
}
