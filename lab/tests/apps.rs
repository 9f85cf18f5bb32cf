//! App supervision on real hosts (issue 4): both sample apps deployed to three lab hosts
//! through fleetctl; crash reports, crash loops, worker boot loops, graceful restarts
//! under load, agent restarts, and hostile input.

mod common;

use common::{ctl, wait};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleet_lab::load::{self, LoadSpec};
use fleet_lab::release;
use fleet_lab::{host_addr, Lab, LabOptions, Paths};
use serde_json::Value;

const SHOP_PORT: u16 = 8000;
const API_PORT: u16 = 8001;
/// The ASGI app whose release brings its own uvicorn (graceful_restarts_under_load).
const API_VENV_PORT: u16 = 8002;

fn lab(n: u32) -> Option<Lab> {
    common::init();
    let mut opts = LabOptions::fleet(n);
    opts.agent.heartbeat = Some("1s".into());
    fleet_lab::test_lab(&opts)
}

struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        Work {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> String {
        release::write(self.dir.path(), name, bytes)
            .unwrap()
            .display()
            .to_string()
    }
}

fn ctl_err(lab: &Lab, args: &[&str]) -> String {
    match lab.fleetctl(args) {
        Ok(out) => panic!("fleetctl {args:?} succeeded: {out}"),
        Err(e) => format!("{e:#}"),
    }
}

fn status(lab: &Lab, app: &str) -> Vec<Value> {
    serde_json::from_str(&ctl(lab, &["status", app, "--output", "json"])).unwrap()
}

fn by_host(lab: &Lab, app: &str) -> BTreeMap<String, Value> {
    status(lab, app)
        .into_iter()
        .map(|e| (e["host"].as_str().unwrap().to_owned(), e))
        .collect()
}

fn get(n: u32, port: u16) -> String {
    let addr: SocketAddr = format!("{}:{port}", host_addr(n)).parse().unwrap();
    match load::request(addr, "/", Duration::from_secs(5)) {
        load::Outcome::Ok(body) => body,
        load::Outcome::Failed(why) => format!("FAILED {why}"),
    }
}

/// Creates both apps and uploads release `version` of each.
fn setup_apps(lab: &Lab, work: &Work, version: &str) {
    let shop = release::spec(
        "shop",
        "gunicorn",
        SHOP_PORT,
        "secrets = [\"DATABASE_URL\"]\nenv = { GREETING = \"hello \\\"world\\\" $HOME\" }\n",
    );
    let api = release::spec("api", "uvicorn", API_PORT, "");
    ctl(
        lab,
        &["app", "apply", &work.file("shop.toml", shop.as_bytes())],
    );
    ctl(
        lab,
        &["app", "apply", &work.file("api.toml", api.as_bytes())],
    );
    upload(lab, work, "shop", "wsgi", version, &[]);
    upload(lab, work, "api", "asgi", version, &[]);
    let out = std::process::Command::new(lab.binaries().unwrap().fleetctl.clone())
        .args(["--controller", "198.18.0.1:7443", "--identity"])
        .arg(Paths::from_env().admin_identity())
        .args(["secret", "set", "shop", "DATABASE_URL"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"postgres://shop:s3cr3t-value@db/shop\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn upload(
    lab: &Lab,
    work: &Work,
    app: &str,
    fixture: &str,
    version: &str,
    overrides: &[(&str, &str)],
) {
    let tar = release::sample(fixture, version, overrides).unwrap();
    let path = work.file(&format!("{app}-{version}.tar.gz"), &tar);
    ctl(
        lab,
        &["release", "upload", app, &path, "--version", version],
    );
}

fn controller_log() -> String {
    std::fs::read_to_string(Paths::from_env().controller_log()).unwrap_or_default()
}

/// Parses the RFC 3339 timestamp that starts a controller log line.
fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?;
    humantime::parse_rfc3339(ts).ok()
}

#[test]
fn apps_deploy_serve_report_and_survive() {
    let Some(lab) = lab(3) else { return };
    let work = Work::new();
    setup_apps(&lab, &work, "1.0");

    // --- deploy both apps to all three hosts
    ctl(&lab, &["deploy", "shop", "--version", "1.0"]);
    ctl(&lab, &["deploy", "api", "--version", "1.0"]);
    for n in 1..=3 {
        assert!(
            get(n, SHOP_PORT).starts_with("release=1.0"),
            "host{n} shop: {}",
            get(n, SHOP_PORT)
        );
        assert!(
            get(n, API_PORT).starts_with("release=1.0"),
            "host{n} api: {}",
            get(n, API_PORT)
        );
    }
    for app in ["shop", "api"] {
        let st = by_host(&lab, app);
        assert_eq!(st.len(), 3, "{app}: {st:?}");
        for (host, e) in &st {
            assert_eq!(e["release"], "1.0", "{app}@{host}: {e}");
            assert_eq!(e["state"], "active", "{app}@{host}: {e}");
            assert_eq!(e["healthy"], true, "{app}@{host}: {e}");
            assert!(e["main_pid"].as_u64().unwrap() > 1, "{app}@{host}: {e}");
        }
    }

    // --- the overview: one line per app, nothing needing attention
    let overview = ctl(&lab, &["status"]);
    for app in ["shop", "api"] {
        assert!(
            overview
                .lines()
                .any(|l| l.starts_with(app) && l.contains("1.0 ×3")),
            "{overview}"
        );
    }
    assert!(
        overview.contains("every host of every app is up"),
        "{overview}"
    );
    let all: Vec<Value> =
        serde_json::from_str(&ctl(&lab, &["status", "--output", "json"])).unwrap();
    assert_eq!(all.len(), 6, "{all:?}");
    assert!(all.iter().all(|e| e.get("attention").is_none()), "{all:?}");

    // --- a release hosts run is listed with them and cannot be removed
    let list: Vec<Value> =
        serde_json::from_str(&ctl(&lab, &["release", "list", "shop", "--output", "json"])).unwrap();
    let r = list.iter().find(|r| r["version"] == "1.0").unwrap();
    assert_eq!(r["running_hosts"], 3, "{r}");
    assert_eq!(r["desired_hosts"], 3, "{r}");
    let err = ctl_err(&lab, &["release", "remove", "shop", "1.0"]);
    assert!(
        err.contains("in use") && err.contains("3 host(s) run it"),
        "{err}"
    );

    // --- the units are hardened and clean, the env file private and exact
    let verify = lab
        .exec_output(
            1,
            &[
                "systemd-analyze",
                "verify",
                "fleet-app-shop.service",
                "fleet-app-shop.socket",
            ],
        )
        .unwrap();
    assert!(verify.status.success());
    assert!(
        verify.stdout.is_empty() && verify.stderr.is_empty(),
        "verify printed: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = lab
        .sh(
            1,
            "systemd-analyze security fleet-app-shop.service | tail -1",
        )
        .unwrap();
    let score: f64 = security
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no score in {security:?}"));
    eprintln!("systemd-analyze security fleet-app-shop.service: {score}");
    assert!(score <= 1.5, "exposure {score} > 1.5: {security}");
    let env = lab
        .sh(
            1,
            "stat -c '%a %U' /etc/fleet/apps/shop.env; cat /etc/fleet/apps/shop.env",
        )
        .unwrap();
    assert!(env.starts_with("600 root"), "{env}");
    assert!(env.contains("s3cr3t-value"), "the secret reached the host");
    let seen = lab.sh(1, "tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value fleet-app-shop)/environ | grep -E '^(GREETING|DATABASE_URL)='").unwrap();
    assert!(
        seen.contains("GREETING=hello \"world\" $HOME"),
        "env value mangled: {seen}"
    );
    for text in [
        ctl(&lab, &["status", "--output", "json"]),
        ctl(&lab, &["audit"]),
        controller_log(),
    ] {
        assert!(!text.contains("s3cr3t-value"), "secret leaked:\n{text}");
    }

    // --- logs from every host, prefixed by host
    let logs = ctl(&lab, &["logs", "shop", "-n", "20"]);
    for n in 1..=3 {
        assert!(
            logs.lines().any(|l| l.starts_with(&format!("host{n}: "))),
            "{logs}"
        );
    }

    // --- kill -9 the Gunicorn master: back healthy, crash reported within 1 s
    let before = by_host(&lab, "shop")["host1"]["main_pid"].as_u64().unwrap();
    let killed_at = SystemTime::now();
    assert_eq!(
        lab.exec(1, &["kill", "-9", &before.to_string()]).unwrap(),
        0
    );
    wait(
        "the crash event at the controller",
        Duration::from_secs(10),
        || {
            controller_log().lines().any(|l| {
                l.contains("agent event")
                    && l.contains("host=host1")
                    && l.contains("kind=\"crash\"")
                    && log_time(l).is_some_and(|t| t >= killed_at)
            })
        },
    );
    let log = controller_log();
    let line = log
        .lines()
        .find(|l| {
            l.contains("agent event")
                && l.contains("host=host1")
                && l.contains("kind=\"crash\"")
                && log_time(l).is_some_and(|t| t >= killed_at)
        })
        .unwrap();
    let delay = log_time(line).unwrap().duration_since(killed_at).unwrap();
    eprintln!("crash event reached the controller {delay:?} after kill -9");
    assert!(
        delay <= Duration::from_secs(1),
        "crash reported after {delay:?}"
    );
    wait(
        "shop healthy again on host1 with a new pid",
        Duration::from_secs(30),
        || {
            let e = &by_host(&lab, "shop")["host1"];
            e["healthy"] == true
                && e["main_pid"].as_u64().is_some_and(|p| p != before && p > 1)
                && e["restarts"].as_u64() >= Some(1)
        },
    );
    assert!(get(1, SHOP_PORT).starts_with("release=1.0"));

    // --- agent restarts never touch apps
    let pids = |lab: &Lab| -> BTreeMap<String, u64> {
        ["shop", "api"]
            .iter()
            .flat_map(|app| {
                by_host(lab, app)
                    .into_iter()
                    .map(move |(h, e)| (format!("{app}@{h}"), e["main_pid"].as_u64().unwrap()))
            })
            .collect()
    };
    let before = pids(&lab);
    assert_eq!(
        lab.exec(2, &["systemctl", "restart", "fleet-agent"])
            .unwrap(),
        0
    );
    assert_eq!(
        lab.exec(3, &["pkill", "-9", "-x", "fleet-agent"]).unwrap(),
        0
    );
    lab.wait_fleet_state(&["host2", "host3"], "up", Duration::from_secs(30))
        .unwrap();
    // "up" may still be the old session's: wait until each new agent re-adopted its apps
    // and was welcomed, so the states compared below are the new agent's.
    for n in 2..=3 {
        wait(
            &format!("host{n}'s new agent re-adopted its apps and connected"),
            Duration::from_secs(30),
            || {
                lab.sh(
                    n,
                    "journalctl -q -o cat -u fleet-agent \
                     _SYSTEMD_INVOCATION_ID=$(systemctl show -p InvocationID --value fleet-agent)",
                )
                .is_ok_and(|j| {
                    j.contains("re-adopting app") && j.contains("connected to controller")
                })
            },
        );
    }
    let after = pids(&lab);
    assert_eq!(before, after, "an agent restart changed app main pids");
    for n in 2..=3 {
        let on_host = lab
            .sh(n, "systemctl show -p MainPID --value fleet-app-shop")
            .unwrap();
        assert_eq!(on_host.trim(), before[&format!("shop@host{n}")].to_string());
    }
}

#[test]
fn broken_releases_are_reported_truthfully() {
    let Some(lab) = lab(1) else { return };
    let work = Work::new();
    setup_apps(&lab, &work, "1.0");
    ctl(
        &lab,
        &[
            "deploy",
            "shop",
            "--version",
            "1.0",
            "--healthy-deadline",
            "30s",
        ],
    );
    let good = lab
        .sh(
            1,
            "cd /var/lib/fleet/apps/shop/releases/1.0 && find . -type f | sort | xargs sha256sum",
        )
        .unwrap();

    // A release whose import fails kills the Gunicorn master: crash loop, unit failed.
    upload(
        &lab,
        &work,
        "shop",
        "wsgi",
        "2.0-importerror",
        &[("app.py", "raise RuntimeError('broken release')\n")],
    );
    let err = ctl_err(
        &lab,
        &[
            "deploy",
            "shop",
            "--version",
            "2.0-importerror",
            "--healthy-deadline",
            "20s",
        ],
    );
    assert!(err.contains("failed"), "{err}");
    wait("crash loop reported", Duration::from_secs(60), || {
        let e = &by_host(&lab, "shop")["host1"];
        e["crash_loop"] == true && e["state"] == "failed"
    });
    let still = lab
        .sh(
            1,
            "cd /var/lib/fleet/apps/shop/releases/1.0 && find . -type f | sort | xargs sha256sum",
        )
        .unwrap();
    assert_eq!(good, still, "the previous release's files changed");

    // A worker that raises SystemExit at import boot-loops invisibly to systemd: the unit
    // stays active, only the health probe tells.
    upload(
        &lab,
        &work,
        "shop",
        "wsgi",
        "3.0-bootloop",
        &[("app.py", "raise SystemExit(0)\n")],
    );
    let err = ctl_err(
        &lab,
        &[
            "deploy",
            "shop",
            "--version",
            "3.0-bootloop",
            "--healthy-deadline",
            "15s",
        ],
    );
    assert!(err.contains("failed"), "{err}");
    wait("unhealthy while active", Duration::from_secs(30), || {
        let e = &by_host(&lab, "shop")["host1"];
        e["state"] == "active" && e["healthy"] == false
    });

    // And a good release brings it back.
    upload(&lab, &work, "shop", "wsgi", "4.0", &[]);
    ctl(&lab, &["deploy", "shop", "--version", "4.0"]);
    assert!(get(1, SHOP_PORT).starts_with("release=4.0"));
}

#[test]
fn hostile_input_is_refused_and_changes_nothing() {
    let Some(lab) = lab(1) else { return };
    let work = Work::new();
    setup_apps(&lab, &work, "1.0");
    ctl(&lab, &["deploy", "shop", "--version", "1.0"]);
    let snapshot = |lab: &Lab| {
        lab.sh(1, "readlink /var/lib/fleet/apps/shop/current; ls /var/lib/fleet/apps/shop/releases; ls /etc/systemd/system | grep fleet-app; ls / /tmp").unwrap()
    };
    let before = snapshot(&lab);

    type Files<'a> = Vec<(&'a str, Vec<u8>)>;
    let evil: Vec<(&str, Files)> = vec![
        (
            "dotdot",
            vec![
                ("app.py", b"x".to_vec()),
                ("../../../../tmp/pwned", b"x".to_vec()),
            ],
        ),
        ("absolute", vec![("/tmp/pwned", b"x".to_vec())]),
    ];
    for (version, files) in evil {
        let bytes = release::tar_gz(&files)
            .or_else(|_| raw_tar(&files))
            .unwrap();
        let path = work.file(&format!("{version}.tar.gz"), &bytes);
        ctl(
            &lab,
            &["release", "upload", "shop", &path, "--version", version],
        );
        let err = ctl_err(&lab, &["deploy", "shop", "--version", version]);
        assert!(
            err.contains("refused") || err.contains("unsafe") || err.contains("outside"),
            "{version}: {err}"
        );
    }
    let link = symlink_escape_tar();
    let path = work.file("symlink.tar.gz", &link);
    ctl(
        &lab,
        &["release", "upload", "shop", &path, "--version", "symlink"],
    );
    let err = ctl_err(&lab, &["deploy", "shop", "--version", "symlink"]);
    assert!(err.contains("symlink") || err.contains("outside"), "{err}");
    assert_eq!(before, snapshot(&lab), "a refused release changed the host");
    assert!(get(1, SHOP_PORT).starts_with("release=1.0"));

    // Names and env values that would inject unit-file lines never get past validation.
    let inject_name = release::spec(
        "shop\\nExecStartPre=/bin/touch /tmp/pwned",
        "gunicorn",
        8100,
        "",
    );
    let err = ctl_err(
        &lab,
        &["app", "apply", &work.file("n.toml", inject_name.as_bytes())],
    );
    assert!(err.contains("name"), "{err}");
    let inject_env = release::spec(
        "other",
        "gunicorn",
        8100,
        "env = { A = \"x\\nExecStartPre=/bin/touch /tmp/pwned\" }\n",
    );
    let err = ctl_err(
        &lab,
        &["app", "apply", &work.file("e.toml", inject_env.as_bytes())],
    );
    assert!(err.contains("env.A"), "{err}");
    assert_eq!(before, snapshot(&lab));
}

/// tar refuses to build `..`/absolute entries through its safe API; write raw headers.
fn raw_tar(files: &[(&str, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, data) in files {
        let mut h = tar::Header::new_old();
        {
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, data.as_slice())?;
    }
    Ok(tar.into_inner()?.finish()?)
}

fn symlink_escape_tar() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    tar.append_link(&mut h, "etc", "/etc").unwrap();
    let mut f = tar::Header::new_gnu();
    f.set_size(1);
    f.set_mode(0o644);
    tar.append_data(&mut f, "etc/pwned", &b"x"[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

/// Graceful restarts under steady load: 0 failed requests for Gunicorn; uvicorn's figure
/// is reported.
#[test]
fn graceful_restarts_under_load() {
    let Some(lab) = lab(3) else { return };
    let work = Work::new();
    setup_apps(&lab, &work, "1.0");
    // A third app: the ASGI sample whose release brings a newer uvicorn (and gunicorn) in
    // its own venv, as an app may; fleet's worker class must hold with that one too.
    let release::VenvFiles {
        files: venv_files,
        uvicorn: venv_uvicorn,
    } = release::uvicorn_venv_files().unwrap();
    let spec = release::spec("apivenv", "uvicorn", API_VENV_PORT, "");
    ctl(
        &lab,
        &["app", "apply", &work.file("apivenv.toml", spec.as_bytes())],
    );
    let extra: Vec<(&str, Vec<u8>)> = venv_files
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone()))
        .collect();
    let tar = release::sample_with("asgi", "1.0", &extra).unwrap();
    let path = work.file("apivenv-1.0.tar.gz", &tar);
    ctl(
        &lab,
        &["release", "upload", "apivenv", &path, "--version", "1.0"],
    );
    for app in ["shop", "api", "apivenv"] {
        ctl(&lab, &["deploy", app, "--version", "1.0"]);
    }
    let current = "/var/lib/fleet/apps/apivenv/current";
    let version = lab
        .sh(
            1,
            &format!("{current}/.venv/bin/python -c 'import uvicorn; print(uvicorn.__version__)'"),
        )
        .unwrap();
    assert_eq!(version.trim(), venv_uvicorn, "the venv's uvicorn");
    let unit = lab
        .sh(1, "cat /etc/systemd/system/fleet-app-apivenv.service")
        .unwrap();
    assert!(
        unit.contains(&format!("ExecStart={current}/.venv/bin/gunicorn "))
            && unit.contains("--worker-class fleet_uvicorn_worker.UvicornWorker"),
        "apivenv does not run the venv's gunicorn with fleet's worker class:\n{unit}"
    );

    let debian = "uvicorn worker, Debian's uvicorn".to_owned();
    let mut results = Vec::new();
    let venv = format!("uvicorn worker, uvicorn {venv_uvicorn} in the release's venv");
    for (app, port, server) in [
        ("shop", SHOP_PORT, "gunicorn".to_owned()),
        ("api", API_PORT, debian),
        ("apivenv", API_VENV_PORT, venv),
    ] {
        let spec = LoadSpec {
            targets: (1..=3)
                .map(|n| format!("{}:{port}", host_addr(n)).parse().unwrap())
                .collect(),
            path: "/".into(),
            clients_per_target: 4,
            max_duration: Duration::from_secs(90),
            max_requests: 200_000,
            request_timeout: Duration::from_secs(10),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let runner = {
            let (spec, stop) = (spec.clone(), stop.clone());
            std::thread::spawn(move || load::run(&spec, stop).unwrap())
        };
        let t0 = Instant::now();
        // When each step began, to tell which one a failure belongs to.
        let mut steps = vec![("steady load", Duration::ZERO)];
        std::thread::sleep(Duration::from_secs(2));
        for n in 1..=3 {
            steps.push((["restart 1", "restart 2", "restart 3"][n - 1], t0.elapsed()));
            ctl(&lab, &["restart", app]);
            std::thread::sleep(Duration::from_secs(1));
        }
        steps.push(("reload", t0.elapsed()));
        ctl(&lab, &["reload", app]);
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let report = runner.join().unwrap();
        let mut by_step: BTreeMap<&str, usize> = BTreeMap::new();
        for at in &report.failed_at {
            let step = steps
                .iter()
                .rev()
                .find(|(_, t)| t <= at)
                .unwrap_or(&steps[0]);
            *by_step.entry(step.0).or_default() += 1;
        }
        let line = format!(
            "{app} ({server}): 3 restarts + 1 reload on 3 hosts in {:.0?}: {}{}",
            t0.elapsed(),
            report.summary(),
            if by_step.is_empty() {
                String::new()
            } else {
                format!(", failures by step {by_step:?}")
            }
        );
        eprintln!("{line}");
        results.push((report.sent, report.failed, line));
    }
    // All three measured before any verdict: a failure report names every app's numbers.
    for (sent, failed, line) in &results {
        assert!(*sent >= 2000, "too little load to mean anything: {line}");
        // Gunicorn's sync workers drain; fleet's uvicorn worker class reads what it
        // accepted before it stops (agent/src/asgi_worker.rs), so none may fail either.
        assert_eq!(*failed, 0, "{line}");
    }
}
