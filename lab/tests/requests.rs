//! Request metrics from the access log (issue 17, the agent's half) on a real host: a sync
//! Gunicorn app (journal log mode) and a uvicorn app (files log mode, rotated mid-test by
//! real logrotate) get real requests from the outer machine; the agent's /metrics counts
//! exactly those, per release and status class, with the slow ones in the right buckets
//! and none of the agent's own health probes; a deploy under load counts every request
//! for the release that answered it (the old master's last ones for the old release), and
//! after it the new requests count for the new release while the old one's stay as they were.

mod common;

use common::ctl;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// Waits (the agent reads once a second) until `app`'s `release` shows `batches` batches
/// plus `extra` other 2xx requests (`/`), then checks the buckets: every slow request
/// above `FAST_LE`, at least `fast_seen` fast ones within it.
fn expect(lab: &Lab, app: &App, rel: &str, batches: u64, extra: u64, fast_seen: u64) -> String {
    let n = (K * batches) as f64;
    let x = extra as f64;
    let want = [0.0, 2.0 * n + x, 0.0, 0.0, n];
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let page = scrape(lab);
        let c = counts(&page, app.name, rel);
        if c.as_ref().is_some_and(|c| c.classes == want) {
            let c = c.unwrap();
            assert_eq!(
                (c.count, c.inf),
                (3.0 * n + x, 3.0 * n + x),
                "{} {rel}: {c:?}",
                app.name
            );
            assert!(
                c.fast <= 2.0 * n + x && c.fast >= fast_seen as f64,
                "{} {rel}: {} responses within {FAST_LE}s, want {fast_seen}..={}: {c:?}",
                app.name,
                c.fast,
                2.0 * n + x
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
        expect(&lab, app, "1.0", 1, 0, fast[app.name]);
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
    expect(&lab, &API, "1.0", 2, 0, fast["api"] + more);

    // A second release, deployed under load: every request counts for the release that
    // answered it (the body names it), the old master's last ones for the old release.
    for (app, batches_v1) in [(&SHOP, 1), (&API, 2)] {
        let stop = Arc::new(AtomicBool::new(false));
        let load = steady_load(app, stop.clone());
        std::thread::sleep(Duration::from_millis(500));
        deploy(&lab, dir.path(), app, "2.0");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let (answered, failed) = load.join().unwrap();
        let (old, new) = (
            answered.get("1.0").copied().unwrap_or(0),
            answered.get("2.0").copied().unwrap_or(0),
        );
        assert!(
            old > 0 && new > 0,
            "{}: the load spans the restart: {answered:?}",
            app.name
        );
        // Lines are written when a response is; the agent reads once a second.
        std::thread::sleep(Duration::from_secs(3));
        let page = scrape(&lab);
        let n = K * batches_v1;
        let ok = |rel: &str| counts(&page, app.name, rel).map_or(0, |c| c.classes[1] as u64);
        let (v1, v2) = (ok("1.0").saturating_sub(2 * n), ok("2.0"));
        // A failed request may or may not have reached the app; none is counted twice.
        assert!(
            v1 >= old && v2 >= new && v1 + v2 <= old + new + failed,
            "{}: counted {v1} + {v2} during the deploy, answered {answered:?} ({failed} failed)",
            app.name
        );
        let v1_counts = counts(&page, app.name, "1.0").unwrap();
        assert_eq!(v1_counts.classes[4], n as f64, "{} 1.0 5xx", app.name);

        // Then a batch against 2.0 alone; 1.0 stays as it was.
        let seen = batch(app, "2.0");
        let page = expect(&lab, app, "2.0", 1, v2, seen);
        assert_eq!(
            counts(&page, app.name, "1.0").unwrap(),
            v1_counts,
            "{} 1.0 after the deploy",
            app.name
        );
    }
}

/// `/` requests one after another until `stop`: how many each release answered (from the
/// body), and how many failed.
fn steady_load(
    app: &App,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(BTreeMap<String, u64>, u64)> {
    let addr: SocketAddr = format!("{}:{}", host_addr(1), app.port).parse().unwrap();
    std::thread::spawn(move || {
        let mut answered = BTreeMap::new();
        let mut failed = 0;
        while !stop.load(Ordering::Relaxed) {
            match load::request(addr, "/", Duration::from_secs(10)) {
                Outcome::Ok(body) => {
                    let rel = load::release_of(&body).unwrap_or("?").to_owned();
                    *answered.entry(rel).or_insert(0) += 1;
                }
                Outcome::Failed(_) => failed += 1,
            }
        }
        (answered, failed)
    })
}
