//! `fleetctl exec` (issue 18, item 4) on real hosts: the command runs once, no shell, as
//! the app's user (never root) in a transient unit with the app's env and secrets, in the
//! current release; stdout and stderr come back on their own streams; exit codes pass
//! through; a timeout and Ctrl-C both stop the unit on the host; `--all` runs on every
//! host the app runs on with lines prefixed by host; an app not on the host is refused.
//! The audit entry names the command line and never the secret.

mod common;

use common::{ctl, wait};

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fleet_lab::release;
use fleet_lab::{Lab, LabOptions, Paths};
use serde_json::Value;

const PORT: u16 = 8000;
const SECRET: &str = "postgres://shop:ex3c-s3cr3t@db/shop";

fn lab() -> Option<Lab> {
    common::init();
    let mut opts = LabOptions::fleet(2);
    opts.agent.heartbeat = Some("1s".into());
    fleet_lab::test_lab(&opts)
}

fn fleetctl(lab: &Lab) -> Command {
    let mut c = Command::new(lab.binaries().unwrap().fleetctl.clone());
    c.args(["--controller", "198.18.0.1:7443", "--identity"])
        .arg(Paths::from_env().admin_identity());
    c
}

/// `fleetctl exec shop ARGS…`, whatever its exit status.
fn exec(lab: &Lab, args: &[&str]) -> Output {
    let o = fleetctl(lab)
        .arg("exec")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "exec {args:?} -> {}\n  stdout: {:?}\n  stderr: {:?}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn exec_units(lab: &Lab, n: u32) -> String {
    lab.sh(
        n,
        "systemctl list-units --all --no-legend --plain 'fleet-exec-*' | cat",
    )
    .unwrap()
}

#[test]
fn exec_runs_as_the_app_and_passes_output_exit_codes_timeouts_and_ctrl_c() {
    let Some(lab) = lab() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = release::spec(
        "shop",
        "gunicorn",
        PORT,
        "secrets = [\"DATABASE_URL\"]\nenv = { GREETING = \"hello\" }\n",
    );
    let spec_path = release::write(dir.path(), "shop.toml", spec.as_bytes()).unwrap();
    ctl(&lab, &["app", "apply", spec_path.to_str().unwrap()]);
    let tar = release::sample("wsgi", "1.0", &[]).unwrap();
    let tar_path = release::write(dir.path(), "shop-1.0.tar.gz", &tar).unwrap();
    ctl(
        &lab,
        &[
            "release",
            "upload",
            "shop",
            tar_path.to_str().unwrap(),
            "--version",
            "1.0",
        ],
    );
    let mut set = fleetctl(&lab)
        .args(["secret", "set", "shop", "DATABASE_URL"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        writeln!(set.stdin.take().unwrap(), "{SECRET}").unwrap();
    }
    assert!(set.wait().unwrap().success());
    // host1 only at first: host2 has no shop yet.
    ctl(
        &lab,
        &["deploy", "shop", "--version", "1.0", "--hosts", "host1"],
    );

    // --- bad input changes nothing and says why
    let o = exec(&lab, &["shop", "--host", "host2", "--", "id"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("app shop is not deployed on this host"),
        "{}",
        text(&o.stderr)
    );
    let o = exec(&lab, &["nope", "--host", "host1", "--", "id"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no app named nope"));
    let o = exec(&lab, &["shop", "--host", "host9", "--", "id"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("unknown host"),
        "{}",
        text(&o.stderr)
    );
    let o = exec(&lab, &["shop", "--host", "host1", "--", "no-such-program"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("\"no-such-program\" not found"));

    // --- env and secrets as the app sees them, its user, its current release
    let o = exec(
        &lab,
        &[
            "shop",
            "--host",
            "host1",
            "--",
            "python3",
            "-c",
            "import os; print(os.environ['DATABASE_URL']); print(os.environ['GREETING']); \
             print(os.getuid()); print(os.getcwd())",
        ],
    );
    assert!(o.status.success());
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0], SECRET);
    assert_eq!(lines[1], "hello");
    assert_ne!(lines[2], "0", "ran as root");
    let shop_uid = lab.sh(1, "id -u shop").unwrap();
    assert_eq!(lines[2], shop_uid.trim());
    let current = lab
        .sh(1, "readlink -f /var/lib/fleet/apps/shop/current")
        .unwrap();
    assert_eq!(lines[3], current.trim());
    // No shell: `$HOME` and `;` reach the program as they were typed.
    let o = exec(
        &lab,
        &["shop", "--host", "host1", "--", "echo", "$HOME;", "id"],
    );
    assert_eq!(text(&o.stdout), "$HOME; id\n");

    // --- streams and exit codes pass through
    let o = exec(
        &lab,
        &[
            "shop",
            "--host",
            "host1",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(text(&o.stdout), "out\n");
    assert!(text(&o.stderr).starts_with("err\n"), "{}", text(&o.stderr));
    let o = exec(
        &lab,
        &["shop", "--host", "host1", "--", "sh", "-c", "kill -KILL $$"],
    );
    assert_eq!(o.status.code(), Some(137), "128 + SIGKILL");
    // Output larger than one message arrives whole and in order.
    let o = exec(
        &lab,
        &[
            "shop",
            "--host",
            "host1",
            "--",
            "python3",
            "-c",
            "import sys\nfor i in range(20000): print(i)",
        ],
    );
    assert!(o.status.success());
    let want: String = (0..20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(text(&o.stdout), want);
    let o = exec(
        &lab,
        &[
            "--output", "json", "shop", "--host", "host1", "--", "echo", "hi",
        ],
    );
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["host"], "host1");
    assert_eq!(v[0]["exit_code"], 0);
    assert_eq!(v[0]["stdout"], "hi\n");
    wait("no exec unit left behind", Duration::from_secs(5), || {
        exec_units(&lab, 1).trim().is_empty()
    });

    // --- timeout: stopped, said so, unit gone
    let started = Instant::now();
    let o = exec(
        &lab,
        &[
            "shop",
            "--host",
            "host1",
            "--timeout",
            "2s",
            "--",
            "sleep",
            "60",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("timed out after 2s"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        exec_units(&lab, 1).trim().is_empty(),
        "{}",
        exec_units(&lab, 1)
    );

    // --- Ctrl-C: the unit on the host stops
    let child = fleetctl(&lab)
        .args(["exec", "shop", "--host", "host1", "--", "sleep", "300"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait("the exec unit to run", Duration::from_secs(20), || {
        exec_units(&lab, 1).contains("fleet-exec-shop-")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    wait(
        "the exec unit to be stopped",
        Duration::from_secs(10),
        || exec_units(&lab, 1).trim().is_empty(),
    );
    assert!(lab
        .sh(1, "pgrep -x sleep || true")
        .unwrap()
        .trim()
        .is_empty());

    // --- --all: every host the app runs on, lines prefixed
    ctl(&lab, &["deploy", "shop", "--version", "1.0"]);
    wait(
        "shop reported by both hosts",
        Duration::from_secs(30),
        || {
            let v: Vec<Value> =
                serde_json::from_str(&ctl(&lab, &["status", "shop", "--output", "json"])).unwrap();
            v.len() == 2
        },
    );
    let o = exec(&lab, &["shop", "--all", "--", "uname", "-n"]);
    assert!(o.status.success());
    let mut lines: Vec<String> = text(&o.stdout).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["host1 | host1", "host2 | host2"]);
    let o = exec(
        &lab,
        &[
            "shop",
            "--all",
            "--",
            "sh",
            "-c",
            "test \"$(uname -n)\" = host1",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("host2: exited 1"),
        "{}",
        text(&o.stderr)
    );
    let o = exec(&lab, &["shop", "--all", "--host", "host1", "--", "id"]);
    assert!(!o.status.success());

    // --- audited with the command line, never the secret
    let audit = ctl(&lab, &["audit", "--output", "json"]);
    assert!(audit.contains("app.exec"), "{audit}");
    assert!(audit.contains("echo out; echo err >&2; exit 3"), "{audit}");
    assert!(!audit.contains("ex3c-s3cr3t"), "secret in the audit log");
    let log = std::fs::read_to_string(Paths::from_env().controller_log()).unwrap_or_default();
    assert!(!log.contains("ex3c-s3cr3t"), "secret in the controller log");
    let journal = lab
        .sh(1, "journalctl -u fleet-agent --no-pager -o cat | cat")
        .unwrap();
    assert!(
        !journal.contains("ex3c-s3cr3t"),
        "secret in the agent's log"
    );
}
