//! PromQL gates at `app apply`, against a real Prometheus on loopback: a query it takes is
//! stored; one it cannot parse, one returning a range vector, and one whose server does not
//! answer are refused with the field and Prometheus' own words, and nothing is stored; a
//! gate already stored is not asked again, so unrelated changes do not need Prometheus.

mod support;

use support::{free_port, Fleet, Prometheus};

fn spec(name: &str, prometheus: &str, query: &str, env: &str) -> String {
    format!(
        r#"
name = "{name}"
server = "gunicorn"
entry = "app:application"
listen = "0.0.0.0:8000"
health = {{ path = "/health" }}
env = {{ MODE = "{env}" }}

[rollout.analysis]
window = "30s"

[[rollout.analysis.query]]
name = "up"
prometheus = "{prometheus}"
query = '{query}'
min = 1
"#
    )
}

fn apply(fleet: &Fleet, toml: &str) -> (bool, String) {
    let p = fleet.dir.path().join("spec.toml");
    std::fs::write(&p, toml).unwrap();
    let out = fleet.fleetctl(&["app", "apply", p.to_str().unwrap()]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn apps(fleet: &Fleet) -> String {
    fleet.ok(&["app", "list"])
}

#[test]
fn gates_are_checked_against_their_prometheus_at_apply() {
    let Some(mut prom) = Prometheus::start() else {
        return;
    };
    let fleet = Fleet::start(&[]);
    let url = prom.url();

    let good = spec(
        "shop",
        &url,
        r#"up{job="self",release!="{{release}}"}[{{window}}]"#,
        "a",
    );
    // A range vector is no value to compare.
    let (ok, out) = apply(&fleet, &good);
    assert!(!ok, "{out}");
    assert!(
        out.contains("rollout.analysis.query[1] (up)") && out.contains("range vector"),
        "{out}"
    );
    assert!(!apps(&fleet).contains("shop"), "a refused spec was stored");

    let (ok, out) = apply(&fleet, &spec("shop", &url, "sum(rate(up[{{window}}])", "a"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("refused the query (bad_data)") && out.contains("parse error"),
        "Prometheus' own reason: {out}"
    );
    assert!(!apps(&fleet).contains("shop"), "a refused spec was stored");

    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (ok, out) = apply(&fleet, &spec("shop", &nobody, "up", "a"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("cannot reach Prometheus at") && out.contains("fix the URL"),
        "{out}"
    );
    assert!(!apps(&fleet).contains("shop"), "a refused spec was stored");

    let query = r#"max(up{job="self"}) + 0 * count(up{release!="{{release}}"} or vector(0))"#;
    let (ok, out) = apply(&fleet, &spec("shop", &url, query, "a"));
    assert!(ok, "{out}");
    assert!(out.contains("app shop created"), "{out}");

    // The gate is stored already: a change elsewhere does not ask Prometheus again.
    prom.proc.stop();
    let (ok, out) = apply(&fleet, &spec("shop", &url, query, "b"));
    assert!(ok, "an env change needed Prometheus: {out}");
    // A changed gate does.
    let (ok, out) = apply(&fleet, &spec("shop", &url, "max(up)", "b"));
    assert!(!ok, "{out}");
    assert!(out.contains("cannot reach Prometheus"), "{out}");
    let shown = fleet.ok(&["app", "show", "shop"]);
    assert!(
        shown.contains("0 * count") && shown.contains("\"b\""),
        "the refused change replaced the stored spec: {shown}"
    );
}
