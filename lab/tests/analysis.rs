//! Canaries judged by real traffic (issue 17) on five real hosts, under load from the
//! outer machine: a healthy release is promoted, one answering 5 % of requests with 500
//! and one 200 ms slower are reverted by the canary's analysis (the other hosts never
//! touched, exit 2, the numbers in the reason), one that turns bad after the last batch is
//! reverted fleet-wide by the bake, and without traffic a rollout fails at its deadline.
//! Needs the agent's access-log request counts (QueryRequests). A second lab judges by a
//! PromQL gate on a real Prometheus scraping the agents, with the built-in thresholds
//! opened wide so only the gate can revert.

mod common;

use common::{ctl, run};

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_lab::load::{self, LoadSpec};
use fleet_lab::{host_addr, release, Lab, LabOptions};
use serde_json::Value;

const PORT: u16 = 8000;
const HOSTS: u32 = 5;

const ANALYSIS: &str = r#"
[rollout.analysis]
window = "5s"
min_requests = 20
max_error_ratio = 0.01
max_error_increase = 2.0
max_p99_increase = 1.5
bake = "60s"
"#;

/// 5 % of / answers 500; /health stays fine.
const ERRS_5_PERCENT: &str = release::APP_5_PERCENT_500;

/// 200 ms more on every request to /.
const SLOW_200MS: &str = r#"
import os, time
RELEASE = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RELEASE")).read().strip()
def application(environ, start_response):
    if environ.get("PATH_INFO") != "/health":
        time.sleep(0.2)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"release={RELEASE}\n".encode()]
"#;

/// Fine for its first 60 s after the worker started, then half of / answers 500: the
/// rollout's batches pass (each is judged within a minute of its start) and the bake
/// catches it.
const BAD_AFTER_60S: &str = r#"
import itertools, os, time
RELEASE = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RELEASE")).read().strip()
_start = time.monotonic()
_n = itertools.count(1)
def application(environ, start_response):
    late = time.monotonic() - _start > 60
    if environ.get("PATH_INFO") != "/health" and late and next(_n) % 2 == 0:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"late boom\n"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"release={RELEASE}\n".encode()]
"#;

/// Built-in thresholds too wide to fail anything: only the PromQL gate judges.
const GATED: &str = r#"
[rollout.analysis]
window = "5s"
min_requests = 20
max_error_ratio = 1.0
max_error_increase = 1000
max_p99_increase = 1000

[[rollout.analysis.query]]
name = "error-ratio"
prometheus = "http://127.0.0.1:19090"
query = 'sum(rate(fleet_app_http_requests_total{app="{{app}}",release="{{release}}",code="5xx"}[{{window}}])) / sum(rate(fleet_app_http_requests_total{app="{{app}}",release="{{release}}"}[{{window}}]))'
max = 0.01
"#;

/// The last rollout of a `--output json` run.
fn last_rollout(stdout: &str) -> Value {
    stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["rollout"].is_object())
        .map(|v| v["rollout"].clone())
        .expect("a rollout in fleetctl's output")
}

fn phases(r: &Value) -> Vec<(String, String)> {
    r["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_owned(),
                h["phase"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn rollout(lab: &Lab, version: &str) -> (i32, Value) {
    rollout_with(lab, version, &[])
}

fn rollout_with(lab: &Lab, version: &str, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "--output",
        "json",
        "rollout",
        "shop",
        "--version",
        version,
        "--canary",
        "1",
        "--max-parallel",
        "2",
        "--min-healthy",
        "3s",
        "--healthy-deadline",
        "30s",
        "--force",
    ];
    args.extend_from_slice(extra);
    let (code, out, _) = run(lab, &args);
    (code, last_rollout(&out))
}

/// Applies the spec with `analysis`, uploads the releases (`app.py` replaced where given)
/// and deploys 1.0 everywhere.
fn set_up(lab: &Lab, work: &Path, analysis: &str, releases: &[(&str, Option<&str>)]) {
    let spec = release::spec("shop", "gunicorn", PORT, analysis);
    let path = release::write(work, "shop.toml", spec.as_bytes()).unwrap();
    ctl(lab, &["app", "apply", path.to_str().unwrap()]);
    for (v, app) in releases {
        let overrides: Vec<(&str, &str)> = app.map(|a| ("app.py", a)).into_iter().collect();
        let tar = release::sample("wsgi", v, &overrides).unwrap();
        let p = release::write(work, &format!("shop-{v}.tar.gz"), &tar).unwrap();
        ctl(
            lab,
            &[
                "release",
                "upload",
                "shop",
                p.to_str().unwrap(),
                "--version",
                v,
            ],
        );
    }
    ctl(lab, &["deploy", "shop", "--version", "1.0"]);
}

/// Two clients per host sending `GET /` from the outer machine until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<load::Report>,
}

impl Load {
    fn start(hosts: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let spec = LoadSpec {
            targets: (1..=hosts)
                .map(|n| format!("{}:{PORT}", host_addr(n)).parse().unwrap())
                .collect(),
            path: "/".into(),
            clients_per_target: 2,
            max_duration: Duration::from_secs(900),
            max_requests: u64::MAX,
            request_timeout: Duration::from_secs(10),
        };
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || load::run(&spec, stop).unwrap())
        };
        // The first windows need traffic on both sides.
        std::thread::sleep(Duration::from_secs(2));
        Load { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        eprintln!("load: {}", self.thread.join().unwrap().summary());
    }
}

#[test]
fn canaries_are_judged_by_their_traffic() {
    common::init();
    let mut opts = LabOptions::fleet(HOSTS);
    opts.agent.heartbeat = Some("1s".into());
    let Some(lab) = fleet_lab::test_lab(&opts) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    set_up(
        &lab,
        work.path(),
        ANALYSIS,
        &[
            ("1.0", None),
            ("2.0", None),
            ("3.0", Some(ERRS_5_PERCENT)),
            ("4.0", Some(SLOW_200MS)),
            ("5.0", Some(BAD_AFTER_60S)),
            ("6.0", None),
        ],
    );
    let load = Load::start(HOSTS);

    // Healthy: promoted, every batch judged and passed, then baked. A short bake: the
    // spec's minute is for 5.0, which turns bad only after its batches are judged.
    let (code, r) = rollout_with(&lab, "2.0", &["--bake", "15s"]);
    assert_eq!(code, 0, "{r:#}");
    let verdicts = r["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 4, "canary, two batches, the bake: {r:#}");
    assert!(verdicts.iter().all(|v| v["verdict"] == "pass"), "{r:#}");
    assert!(
        verdicts[0]["message"]
            .as_str()
            .unwrap()
            .contains("vs baseline"),
        "{r:#}"
    );
    // The bake compares the fleet with the previous release as the batches measured it.
    assert!(
        verdicts[3]["message"]
            .as_str()
            .unwrap()
            .contains("vs rollout baseline"),
        "{r:#}"
    );

    // Healthy again, twice more (without the bake): no false revert on noise.
    for v in ["1.0", "2.0"] {
        let (code, r) = rollout_with(&lab, v, &["--bake", "0s"]);
        assert_eq!(code, 0, "{v}: {r:#}");
        let verdicts = r["verdicts"].as_array().unwrap();
        assert_eq!(verdicts.len(), 3, "{v}: canary and two batches: {r:#}");
        assert!(verdicts.iter().all(|v| v["verdict"] == "pass"), "{r:#}");
    }

    // 5 % of 500s: the canary goes back, nothing else was touched.
    for (v, says) in [("3.0", "canary 5xx "), ("4.0", "canary p99 ")] {
        let (code, r) = rollout(&lab, v);
        assert_eq!(code, 2, "{v}: {r:#}");
        let msg = r["message"].as_str().unwrap();
        assert!(
            msg.starts_with(says) && msg.contains("vs baseline"),
            "{v}: {msg}"
        );
        let p = phases(&r);
        assert_eq!(p[0], ("host1".into(), "reverted".into()), "{v}: {r:#}");
        assert!(p[1..].iter().all(|(_, ph)| ph == "staged"), "{v}: {r:#}");
    }

    // Turns bad after the last batch: the bake reverts every host.
    let (code, r) = rollout(&lab, "5.0");
    assert_eq!(code, 2, "{r:#}");
    let msg = r["message"].as_str().unwrap();
    assert!(msg.starts_with("bake: fleet 5xx "), "{msg}");
    assert!(phases(&r).iter().all(|(_, ph)| ph == "reverted"), "{r:#}");

    load.stop();

    // No traffic: never promoted blind; fails at the analysis deadline.
    let (code, r) = rollout(&lab, "6.0");
    assert_eq!(code, 2, "{r:#}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("no verdict within the analysis deadline")
            && msg.contains("served 0 requests"),
        "{msg}"
    );
}

#[test]
fn a_promql_gate_on_the_labs_prometheus_reverts_a_bad_canary() {
    common::init();
    const N: u32 = 3;
    let mut opts = LabOptions::fleet(N);
    opts.agent.heartbeat = Some("1s".into());
    let Some(lab) = fleet_lab::test_lab(&opts) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // The spec's gate is checked against Prometheus at apply: it runs first.
    let _prom = common::prometheus::start_prometheus();
    let up = |q: &str| common::prometheus::query(q).len();
    assert!(
        common::eventually(Duration::from_secs(60), || up(
            r#"up{job="fleet-agents"} == 1"#
        ) == N as usize),
        "Prometheus never scraped all {N} agents"
    );
    set_up(
        &lab,
        work.path(),
        GATED,
        &[("1.0", None), ("2.0", None), ("3.0", Some(ERRS_5_PERCENT))],
    );
    let load = Load::start(N);

    // Healthy: the gate reads 0 for the new release and promotes it.
    let (code, r) = rollout(&lab, "2.0");
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["analysis"]["gates"][0]["name"], "error-ratio", "{r:#}");
    let verdicts = r["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 2, "canary and one batch: {r:#}");
    for v in verdicts {
        assert_eq!(v["verdict"], "pass", "{r:#}");
        let m = v["message"].as_str().unwrap();
        assert!(m.contains("; query error-ratio = 0 ≤ 0.01"), "{m}");
    }

    // 5 % of 500s passes the wide built-in thresholds; the gate reverts the canary alone.
    let (code, r) = rollout(&lab, "3.0");
    assert_eq!(code, 2, "{r:#}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.starts_with("canary query error-ratio = 0.0")
            && msg.ends_with(", not ≤ 0.01: reverting"),
        "{msg}"
    );
    let p = phases(&r);
    assert_eq!(p[0], ("host1".into(), "reverted".into()), "{r:#}");
    assert!(p[1..].iter().all(|(_, ph)| ph == "staged"), "{r:#}");

    load.stop();
}
