//! App log files (issue 6, logs half) on a real host: Gunicorn writes access and error
//! logs under /var/log/fleet/<app>/, real logrotate rotates them under steady load with
//! nothing lost or duplicated, no process keeps a deleted log, a process that does is
//! restarted and reported, bad settings change nothing, `fleetctl logs` reads the files,
//! and journald rate limits land in the unit. ASGI apps rotate too, with a graceful
//! reload instead of USR1.

mod common;

use common::{ctl, wait};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fleet_lab::load;
use fleet_lab::release;
use fleet_lab::{host_addr, Lab, LabOptions, Paths};
use serde_json::Value;

const PORT: u16 = 8000;
const CONF: &str = "/etc/logrotate.d/fleet-app-shop";
const UNIT: &str = "/etc/systemd/system/fleet-app-shop.service";
const FILES: &str = "[logs]\nmode = \"files\"\nperiod = \"daily\"\nmax_size = \"100M\"\n\
                     keep = 10\ncompress = true\nrate_limit_interval = \"10s\"\nrate_limit_burst = 123\n";

fn lab() -> Option<Lab> {
    common::init();
    let mut opts = LabOptions::fleet(1);
    opts.agent.heartbeat = Some("1s".into());
    fleet_lab::test_lab(&opts)
}

fn sh(lab: &Lab, script: &str) -> String {
    lab.sh(1, script)
        .unwrap_or_else(|e| panic!("{script}: {e:#}"))
}

fn main_pid(lab: &Lab, app: &str) -> u64 {
    let v: Vec<Value> =
        serde_json::from_str(&ctl(lab, &["status", app, "--output", "json"])).unwrap();
    v[0]["main_pid"].as_u64().unwrap()
}

/// Applies the spec of sample app `app` (`wsgi` fixture as Gunicorn, `asgi` as uvicorn)
/// with `logs`, uploads `version` and deploys it.
fn apply_and_deploy(
    lab: &Lab,
    dir: &std::path::Path,
    app: &str,
    fixture: &str,
    logs: &str,
    version: &str,
) {
    let server = if fixture == "asgi" {
        "uvicorn"
    } else {
        "gunicorn"
    };
    let spec = release::spec(app, server, PORT, logs);
    let spec_path = release::write(dir, &format!("{app}-{version}.toml"), spec.as_bytes()).unwrap();
    ctl(lab, &["app", "apply", spec_path.to_str().unwrap()]);
    let tar = release::sample(fixture, version, &[]).unwrap();
    let tar_path = release::write(dir, &format!("{app}-{version}.tar.gz"), &tar).unwrap();
    ctl(
        lab,
        &[
            "release",
            "upload",
            app,
            tar_path.to_str().unwrap(),
            "--version",
            version,
        ],
    );
    ctl(lab, &["deploy", app, "--version", version]);
}

/// Processes anywhere on the host holding a deleted file under /var/log/fleet.
fn deleted_log_holders(lab: &Lab) -> String {
    sh(
        lab,
        "for p in /proc/[0-9]*; do ls -l $p/fd 2>/dev/null | grep '/var/log/fleet/.*(deleted)' \
         | sed \"s|^|$p: |\"; done; true",
    )
}

/// Every access-log line of the app, current and rotated, decompressed: file -> text.
fn access_logs(lab: &Lab, app: &str) -> BTreeMap<String, String> {
    let names = sh(
        lab,
        &format!("cd /var/log/fleet/{app} && ls -1 access.log*"),
    );
    names
        .lines()
        .map(|f| {
            let cat = if f.ends_with(".gz") { "zcat" } else { "cat" };
            (
                f.to_owned(),
                sh(lab, &format!("{cat} /var/log/fleet/{app}/{f}")),
            )
        })
        .collect()
}

fn controller_log() -> String {
    std::fs::read_to_string(Paths::from_env().controller_log()).unwrap_or_default()
}

struct LoadResult {
    ok_paths: Vec<String>,
    failed: Vec<String>,
}

/// Steady load with a unique path per request while `logrotate -f` runs `rotations`
/// times on the app's logrotate file.
fn rotate_under_load(lab: &Lab, app: &str, rotations: u32) -> LoadResult {
    let addr: SocketAddr = format!("{}:{PORT}", host_addr(1)).parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok_paths = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, ok_paths, failed) = (stop.clone(), ok_paths.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 200_000 {
                    let path = format!("/req/{c}-{i}");
                    match load::request(addr, &path, Duration::from_secs(5)) {
                        load::Outcome::Ok(_) => ok_paths.lock().unwrap().push(path),
                        load::Outcome::Failed(why) => failed.lock().unwrap().push(why),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    wait("the load answered", Duration::from_secs(30), || {
        ok_paths.lock().unwrap().len() >= 100
    });
    let conf = format!("/etc/logrotate.d/fleet-app-{app}");
    for _ in 0..rotations {
        let out = lab.exec_output(1, &["logrotate", "-f", &conf]).unwrap();
        assert!(
            out.status.success(),
            "logrotate -f: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let r = LoadResult {
        ok_paths: ok_paths.lock().unwrap().clone(),
        failed: failed.lock().unwrap().clone(),
    };
    // The access line is written after the response: wait for each client's last one.
    let last: Vec<String> = (0..4)
        .filter_map(|c| {
            let prefix = format!("/req/{c}-");
            r.ok_paths
                .iter()
                .rev()
                .find(|p| p.starts_with(&prefix))
                .cloned()
        })
        .collect();
    wait(
        "the last answered requests logged",
        Duration::from_secs(10),
        || {
            let logs = access_logs(lab, app);
            last.iter().all(|p| {
                let line = format!("\"GET {p} ");
                logs.values().any(|text| text.contains(&line))
            })
        },
    );
    eprintln!(
        "{app}: {} requests ok, {} failed",
        r.ok_paths.len(),
        r.failed.len()
    );
    assert!(
        r.ok_paths.len() > 200,
        "too little load: {}",
        r.ok_paths.len()
    );
    r
}

/// Every answered request's access line is in exactly one of the app's log files
/// (current and rotated, decompressed), and the load spans the rotations. Returns how
/// many distinct request lines were logged.
fn each_line_once(lab: &Lab, app: &str, ok_paths: &[String], rotations: usize) -> usize {
    let logs = access_logs(lab, app);
    eprintln!(
        "{app}: access log files: {:?}",
        logs.iter()
            .map(|(f, t)| (f, t.lines().count()))
            .collect::<Vec<_>>()
    );
    assert!(
        logs.keys().any(|f| f.ends_with(".gz")),
        "delayed compression happened: {:?}",
        logs.keys()
    );
    let mut seen: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (file, text) in &logs {
        for line in text.lines() {
            if let Some((_, rest)) = line.split_once("\"GET ") {
                let path = rest.split_whitespace().next().unwrap_or("");
                if path.starts_with("/req/") {
                    seen.entry(path).or_default().push(file);
                }
            }
        }
    }
    let files_with_load = logs.values().filter(|t| t.contains("\"GET /req/")).count();
    assert!(
        files_with_load > rotations,
        "the load spans the rotations: {files_with_load} files"
    );
    let lost: Vec<&String> = ok_paths
        .iter()
        .filter(|p| !seen.contains_key(p.as_str()))
        .collect();
    let duplicated: Vec<(&&str, &Vec<&str>)> =
        seen.iter().filter(|(_, files)| files.len() != 1).collect();
    assert!(
        lost.is_empty(),
        "{} of {} access lines lost, e.g. {:?}",
        lost.len(),
        ok_paths.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        duplicated.is_empty(),
        "duplicated: {:?}",
        &duplicated[..duplicated.len().min(5)]
    );
    seen.len()
}

#[test]
fn log_files_rotate_under_load_losing_nothing() {
    let Some(lab) = lab() else { return };
    let work = tempfile::tempdir().unwrap();
    apply_and_deploy(&lab, work.path(), "shop", "wsgi", FILES, "1.0");

    // --- the host side: directory, logrotate file (checked by logrotate -d before it was
    // installed), Gunicorn's flags and journald's rate limit in the unit
    assert_eq!(
        sh(&lab, "stat -c '%U %a' /var/log/fleet/shop").trim(),
        "shop 750"
    );
    let conf = sh(&lab, &format!("stat -c '%U %a' {CONF} && cat {CONF}"));
    assert!(conf.starts_with("root 644\n"), "{conf}");
    assert!(
        conf.contains("systemctl kill --signal=USR1 --kill-whom=main fleet-app-shop.service"),
        "{conf}"
    );
    let unit = sh(&lab, &format!("cat {UNIT}"));
    assert!(
        unit.contains("--access-logfile /var/log/fleet/shop/access.log --access-logformat ")
            && unit.contains(" --error-logfile /var/log/fleet/shop/error.log "),
        "{unit}"
    );
    let limits = sh(
        &lab,
        "systemctl show -p LogRateLimitBurst -p LogRateLimitIntervalUSec fleet-app-shop",
    );
    assert!(limits.contains("LogRateLimitBurst=123"), "{limits}");
    assert!(limits.contains("LogRateLimitIntervalUSec=10s"), "{limits}");

    // --- steady load with a unique path per request, four forced rotations during it
    let pid_before = main_pid(&lab, "shop");
    let load = rotate_under_load(&lab, "shop", 4);
    assert!(load.failed.is_empty(), "requests failed: {:?}", load.failed);
    let logged = each_line_once(&lab, "shop", &load.ok_paths, 4);
    assert_eq!(
        logged,
        load.ok_paths.len(),
        "only requests that were answered are logged"
    );
    assert_eq!(
        deleted_log_holders(&lab),
        "",
        "a process holds a deleted log"
    );
    assert_eq!(
        main_pid(&lab, "shop"),
        pid_before,
        "USR1 reopens, never restarts"
    );

    // --- fleetctl logs reads the files
    let out = ctl(&lab, &["logs", "shop", "-n", "5"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("host1: ") && l.contains("\"GET /req/")),
        "{out}"
    );

    // --- a process writing into a deleted log is restarted gracefully and reported
    let addr: SocketAddr = format!("{}:{PORT}", host_addr(1)).parse().unwrap();
    let pid = main_pid(&lab, "shop");
    let removed_at = SystemTime::now();
    sh(&lab, "rm /var/log/fleet/shop/access.log");
    assert!(matches!(
        load::request(addr, "/after-rm", Duration::from_secs(5)),
        load::Outcome::Ok(_)
    ));
    assert_ne!(
        deleted_log_holders(&lab),
        "",
        "gunicorn holds the removed file"
    );
    wait(
        "the log-restart event at the controller",
        Duration::from_secs(60),
        || {
            controller_log().lines().any(|l| {
                l.contains("agent event")
                    && l.contains("kind=\"log-restart\"")
                    && l.contains("subject=\"shop\"")
            })
        },
    );
    wait("a new main pid", Duration::from_secs(30), || {
        main_pid(&lab, "shop") != pid
    });
    eprintln!(
        "restarted {:?} after the log was removed",
        removed_at.elapsed().unwrap()
    );
    wait("no deleted log held", Duration::from_secs(30), || {
        deleted_log_holders(&lab).is_empty()
    });
    assert!(matches!(
        load::request(addr, "/after-restart", Duration::from_secs(5)),
        load::Outcome::Ok(_)
    ));
    wait("the new access.log", Duration::from_secs(10), || {
        lab.sh(1, "cat /var/log/fleet/shop/access.log")
            .is_ok_and(|t| t.contains("/after-restart"))
    });
}

/// ASGI apps (Gunicorn + UvicornWorker) rotate with HUP, because the worker of Debian's
/// uvicorn dies on USR1.
#[test]
fn asgi_log_files_rotate_with_a_graceful_reload() {
    let Some(lab) = lab() else { return };
    let work = tempfile::tempdir().unwrap();
    apply_and_deploy(&lab, work.path(), "api", "asgi", FILES, "1.0");
    let conf = sh(&lab, "cat /etc/logrotate.d/fleet-app-api");
    assert!(
        conf.contains("systemctl kill --signal=HUP --kill-whom=main fleet-app-api.service"),
        "{conf}"
    );
    // The measured reason: USR1 to the master reaches the workers, which die of it.
    let workers = |lab: &Lab| {
        let master = main_pid(lab, "api");
        sh(lab, &format!("ps -o pid= --ppid {master} | sort"))
    };
    let before = workers(&lab);
    sh(
        &lab,
        "systemctl kill --signal=USR1 --kill-whom=main fleet-app-api.service",
    );
    wait(
        "workers replaced after USR1",
        Duration::from_secs(10),
        || {
            let now = workers(&lab);
            !now.trim().is_empty() && now.lines().all(|p| !before.lines().any(|b| b == p))
        },
    );
    wait("healthy again", Duration::from_secs(30), || {
        let v: Vec<Value> =
            serde_json::from_str(&ctl(&lab, &["status", "api", "--output", "json"])).unwrap();
        v[0]["healthy"] == true
    });

    let pid_before = main_pid(&lab, "api");
    let load = rotate_under_load(&lab, "api", 4);
    // A reload resets a few connections in tens of thousands (docs/host.md).
    assert!(
        load.failed.len() * 200 <= load.ok_paths.len(),
        "too many failed requests: {} ({:?})",
        load.failed.len(),
        load.failed
    );
    each_line_once(&lab, "api", &load.ok_paths, 4);
    assert_eq!(
        deleted_log_holders(&lab),
        "",
        "a process holds a deleted log"
    );
    assert_eq!(
        main_pid(&lab, "api"),
        pid_before,
        "HUP reloads, never restarts"
    );
}

#[test]
fn bad_settings_change_nothing_and_journal_mode_comes_back() {
    let Some(lab) = lab() else { return };
    let work = tempfile::tempdir().unwrap();
    apply_and_deploy(&lab, work.path(), "shop", "wsgi", FILES, "1.0");
    let fingerprint = |lab: &Lab| sh(lab, &format!("sha256sum {CONF} {UNIT}"));
    let before = fingerprint(&lab);
    for (bad, field) in [
        ("keep = 0", "logs.keep"),
        ("max_size = \"1T\"", "logs.max_size"),
        ("period = \"hourly\"", "expected one of `daily`"),
    ] {
        let spec = release::spec(
            "shop",
            "gunicorn",
            PORT,
            &format!("[logs]\nmode = \"files\"\n{bad}\n"),
        );
        let p = release::write(work.path(), "bad.toml", spec.as_bytes()).unwrap();
        let err = match lab.fleetctl(&["app", "apply", p.to_str().unwrap()]) {
            Ok(out) => panic!("{bad}: accepted: {out}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(field), "{bad}: {err}");
    }
    // The controller kept the good spec: a deploy now changes nothing on the host.
    ctl(&lab, &["deploy", "shop", "--version", "1.0"]);
    assert_eq!(fingerprint(&lab), before, "a refused spec changed the host");

    // --- back to the journal: the logrotate file goes, Gunicorn logs to stderr again
    // (the access log stays a file: the agent counts requests from it), fleetctl logs
    // reads the journal
    apply_and_deploy(&lab, work.path(), "shop", "wsgi", "", "2.0");
    assert_eq!(
        sh(
            &lab,
            &format!("test -e {CONF} && echo present || echo absent")
        )
        .trim(),
        "absent"
    );
    let unit = sh(&lab, &format!("cat {UNIT}"));
    assert!(
        !unit.contains("--error-logfile")
            && !unit.contains("LogRateLimit")
            && unit.contains("--access-logfile /var/log/fleet/shop/access.log "),
        "{unit}"
    );
    let out = ctl(&lab, &["logs", "shop", "-n", "20"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("host1: ") && l.contains("Booting worker")),
        "{out}"
    );
}
