//! Request metrics from the access log (issue 17, the agent's half) on a real host: a sync
//! Gunicorn app (journal log mode) and a uvicorn app (files log mode, rotated mid-test by
//! real logrotate) get real requests from the outer machine; the agent's /metrics counts
//! exactly those, per release and status class, with the slow ones in the right buckets
//! and none of the agent's own health probes; after a deploy the new requests count for
//! the new release and the old release's counts stay as they were.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleet_lab::load::{self, Outcome};
use fleet_lab::release;
use fleet_lab::{host_addr, Lab, LabOptions};

/// Requests of each kind (`/`, `/fail`, `/slow`) per batch.
const K: u64 = 25;
/// The fast kinds' bucket: `/slow` sleeps 200 ms, so it can never be in it.
const FAST_LE: &str = "0.15";

struct App {
    name: &'static str,
    fixture: &'static str,
    port: u16,
    logs: &'static str,
}

const SHOP: App = App {
    name: "shop",
    fixture: "wsgi",
    port: 8000,
    logs: "",
};
const API: App = App {
    name: "api",
    fixture: "asgi",
    port: 8001,
    logs: "[logs]\nmode = \"files\"\n",
};

fn ctl(lab: &Lab, args: &[&str]) -> String {
    lab.fleetctl(args)
        .unwrap_or_else(|e| panic!("fleetctl {args:?}: {e:#}"))
}

fn sh(lab: &Lab, script: &str) -> String {
    lab.sh(1, script)
        .unwrap_or_else(|e| panic!("{script}: {e:#}"))
}

fn deploy(lab: &Lab, dir: &std::path::Path, app: &App, version: &str) {
    let server = if app.fixture == "asgi" {
        "uvicorn"
    } else {
        "gunicorn"
    };
    let spec = release::spec(app.name, server, app.port, app.logs);
    let spec_path = release::write(dir, &format!("{}.toml", app.name), spec.as_bytes()).unwrap();
    ctl(lab, &["app", "apply", spec_path.to_str().unwrap()]);
    let tar = release::sample(app.fixture, version, &[]).unwrap();
    let tar_path = release::write(dir, &format!("{}-{version}.tar.gz", app.name), &tar).unwrap();
    let tar_path = tar_path.to_str().unwrap();
    ctl(
        lab,
        &[
            "release",
            "upload",
            app.name,
            tar_path,
            "--version",
            version,
        ],
    );
    ctl(lab, &["deploy", app.name, "--version", version]);
}

/// K requests of each kind from the outer machine, every one answered as expected.
/// Returns how many fast ones (`/`, `/fail`) the client saw answered within `FAST_LE`
/// seconds: the server's own time is shorter, so at least those are in that bucket.
fn batch(app: &App, release: &str) -> u64 {
    let addr: SocketAddr = format!("{}:{}", host_addr(1), app.port).parse().unwrap();
    let fast_bound = Duration::from_secs_f64(FAST_LE.parse().unwrap());
    let mut fast_in_bucket = 0;
    for i in 0..K {
        for path in ["/", "/fail", "/slow"] {
            let path_q = format!("{path}?i={i}");
            let t = Instant::now();
            let got = load::request(addr, &path_q, Duration::from_secs(10));
            let took = t.elapsed();
            match (path, &got) {
                ("/fail", Outcome::Failed(why)) if why == "status 500" => {}
                ("/" | "/slow", Outcome::Ok(body)) if load::release_of(body) == Some(release) => {}
                _ => panic!("{} GET {path_q}: {got:?}", app.name),
            }
            if path != "/slow" && took < fast_bound {
                fast_in_bucket += 1;
            }
        }
    }
    fast_in_bucket
}

fn scrape(lab: &Lab) -> String {
    sh(lab, "curl -sf --max-time 10 http://127.0.0.1:9437/metrics")
}

/// `name{labels} value` samples of a page, labels as a map.
fn samples(page: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            let labels = labels
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

fn value(page: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples(page, name)
        .into_iter()
        .find(|(labels, _)| {
            labels.len() == want.len()
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
}

/// What the page says about one app and release.
#[derive(Debug, PartialEq)]
struct Counts {
    classes: [f64; 5],
    count: f64,
    fast: f64,
    inf: f64,
    sum: f64,
}

fn counts(page: &str, app: &str, rel: &str) -> Option<Counts> {
    let mut classes = [0.0; 5];
    for (i, code) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        classes[i] = value(
            page,
            "fleet_app_http_requests_total",
            &[("app", app), ("release", rel), ("code", code)],
        )?;
    }
    let h = "fleet_app_http_request_duration_seconds";
    let id = [("app", app), ("release", rel)];
    let bucket = |le: &str| value(page, &format!("{h}_bucket"), &[id[0], id[1], ("le", le)]);
    Some(Counts {
        classes,
        count: value(page, &format!("{h}_count"), &id)?,
        fast: bucket(FAST_LE)?,
        inf: bucket("+Inf")?,
        sum: value(page, &format!("{h}_sum"), &id)?,
    })
}

/// Waits (the agent reads once a second) until `app`'s `release` shows `batches` batches,
/// then checks the buckets: every slow request above `FAST_LE`, at least `fast_seen` fast
/// ones within it.
fn expect(lab: &Lab, app: &App, rel: &str, batches: u64, fast_seen: u64) -> String {
    let n = (K * batches) as f64;
    let want = [0.0, 2.0 * n, 0.0, 0.0, n];
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let page = scrape(lab);
        let c = counts(&page, app.name, rel);
        if c.as_ref().is_some_and(|c| c.classes == want) {
            let c = c.unwrap();
            assert_eq!(
                (c.count, c.inf),
                (3.0 * n, 3.0 * n),
                "{} {rel}: {c:?}",
                app.name
            );
            assert!(
                c.fast <= 2.0 * n && c.fast >= fast_seen as f64,
                "{} {rel}: {} responses within {FAST_LE}s, want {fast_seen}..={}: {c:?}",
                app.name,
                c.fast,
                2.0 * n
            );
            assert!(
                c.sum >= n * 0.2,
                "{} {rel}: the slow ones alone take {}s: {c:?}",
                app.name,
                n * 0.2
            );
            assert_eq!(
                value(
                    &page,
                    "fleet_app_access_log_unparsed_total",
                    &[("app", app.name)]
                ),
                Some(0.0),
                "{}: every line is fleet's",
                app.name
            );
            return page;
        }
        last = Some(c);
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "{} {rel}: want classes {want:?} after {batches} batch(es) of {K}; last seen {last:?}\n{}",
        app.name,
        scrape(lab)
    );
}

#[test]
fn requests_are_counted_per_release_from_the_access_log() {
    common::init();
    let mut opts = LabOptions::fleet(1);
    opts.agent.heartbeat = Some("1s".into());
    let Some(lab) = fleet_lab::test_lab(&opts) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for app in [&SHOP, &API] {
        deploy(&lab, dir.path(), app, "1.0");
    }
    // Before any request: the families are there, no series for requests not made.
    let page = scrape(&lab);
    assert!(
        page.contains("# TYPE fleet_app_http_requests_total counter"),
        "{page}"
    );
    assert!(
        page.contains("# TYPE fleet_app_http_request_duration_seconds histogram"),
        "{page}"
    );

    let mut fast = BTreeMap::new();
    for app in [&SHOP, &API] {
        fast.insert(app.name, batch(app, "1.0"));
        expect(&lab, app, "1.0", 1, fast[app.name]);
    }

    // The probes run every 500 ms and are written like any request, yet not counted.
    for app in [&SHOP, &API] {
        let probes: u64 = sh(
            &lab,
            &format!(
                "grep -c '\"GET /health HTTP/1.1\"' /var/log/fleet/{}/access.log || true",
                app.name
            ),
        )
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: grep -c: {e}", app.name));
        assert!(probes > 0, "{}: no probe lines in its access log", app.name);
    }
    // The sync app in journal mode: its access log is a file, its error log the journal.
    let unit = sh(&lab, "cat /etc/systemd/system/fleet-app-shop.service");
    assert!(
        unit.contains("--access-logfile /var/log/fleet/shop/access.log")
            && !unit.contains("--error-logfile"),
        "{unit}"
    );

    // Real logrotate on the files-mode ASGI app (rename + create + HUP): the next batch is
    // counted once, none lost and none twice.
    sh(&lab, "logrotate -f /etc/logrotate.d/fleet-app-api");
    assert!(
        sh(&lab, "ls /var/log/fleet/api").contains("access.log.1"),
        "logrotate did not rotate"
    );
    let more = batch(&API, "1.0");
    expect(&lab, &API, "1.0", 2, fast["api"] + more);

    // A second release: its requests count for it; the first release's stay as they were.
    for app in [&SHOP, &API] {
        deploy(&lab, dir.path(), app, "2.0");
    }
    for (app, batches_v1) in [(&SHOP, 1), (&API, 2)] {
        let seen = batch(app, "2.0");
        let page = expect(&lab, app, "2.0", 1, seen);
        let v1 = counts(&page, app.name, "1.0").unwrap();
        let n = (K * batches_v1) as f64;
        assert_eq!(
            v1.classes,
            [0.0, 2.0 * n, 0.0, 0.0, n],
            "{} 1.0 after the deploy",
            app.name
        );
    }
}
