//! `fleetctl exec` on loopback with the real controller, agent and fleetctl: what is
//! refused before anything runs, and how a host that cannot run it answers (the app not
//! on it, the host down). Running commands for real is the lab's (lab/tests/exec.rs).

mod support;

use std::time::Duration;

use support::Fleet;

const SPEC: &str = r#"
name = "shop"
server = "gunicorn"
entry = "app:application"
listen = "0.0.0.0:8000"
health = { path = "/health", timeout = "2s" }
"#;

fn fail(fleet: &Fleet, args: &[&str]) -> (Option<i32>, String) {
    let out = fleet.fleetctl(args);
    assert!(!out.status.success(), "fleetctl {args:?} succeeded");
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn exec_refuses_bad_input_and_reports_hosts_that_cannot_run_it() {
    let fleet = Fleet::start(&[]);
    let spec = fleet.dir.path().join("shop.toml");
    std::fs::write(&spec, SPEC).unwrap();
    fleet.ok(&["app", "apply", spec.to_str().unwrap()]);
    let token = fleet.token(&["--uses", "2"]);
    let state = fleet.join("web-1", &token);
    fleet.join("web-2", &token);
    let _agent = fleet.run_agent("web-1", &state);
    fleet.wait_state("web-1", "up", Duration::from_secs(20));

    // A viewer may not run commands.
    let alice = fleet.dir.path().join("alice");
    fleet.ok(&[
        "admin",
        "add",
        "alice",
        "--role",
        "viewer",
        "--out",
        alice.to_str().unwrap(),
    ]);
    let out = std::process::Command::new(support::bin("fleetctl"))
        .args(["--controller", &fleet.addr()])
        .arg("--identity")
        .arg(&alice)
        .args(["exec", "shop", "--host", "web-1", "--", "id"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("is a viewer: /fleet.v1.Admin/Exec needs the deployer role"),
        "{e}"
    );

    // Refused by the controller, nothing sent to any host.
    let (_, e) = fail(&fleet, &["exec", "nope", "--host", "web-1", "--", "id"]);
    assert!(e.contains("no app named nope"), "{e}");
    let (_, e) = fail(&fleet, &["exec", "shop", "--host", "web-9", "--", "id"]);
    assert!(e.contains("unknown host \"web-9\""), "{e}");
    let numbers: Vec<String> = (0..257).map(|i| i.to_string()).collect();
    let mut many = vec!["exec", "shop", "--host", "web-1", "--"];
    many.extend(numbers.iter().map(String::as_str));
    let (_, e) = fail(&fleet, &many);
    assert!(e.contains("257 arguments; at most 256"), "{e}");
    let long = "x".repeat(70_000);
    let (_, e) = fail(
        &fleet,
        &["exec", "shop", "--host", "web-1", "--", "echo", &long],
    );
    assert!(e.contains("70004 bytes; at most 65536"), "{e}");
    let (_, e) = fail(
        &fleet,
        &[
            "exec",
            "shop",
            "--host",
            "web-1",
            "--timeout",
            "25h",
            "--",
            "id",
        ],
    );
    assert!(e.contains("above the maximum 1day"), "{e}");
    let (_, e) = fail(&fleet, &["exec", "shop", "--all", "--", "id"]);
    assert!(e.contains("shop runs on no host that is up"), "{e}");
    // fleetctl itself insists on exactly one of --host and --all.
    let (code, e) = fail(&fleet, &["exec", "shop", "--", "id"]);
    assert_eq!(code, Some(2), "a usage error: {e}");

    // The agent refuses an app it does not run; a down host runs nothing.
    let (code, e) = fail(&fleet, &["exec", "shop", "--host", "web-1", "--", "id"]);
    assert_eq!(code, Some(1));
    assert!(
        e.contains("web-1: app shop is not deployed on this host"),
        "{e}"
    );
    let (code, e) = fail(&fleet, &["exec", "shop", "--host", "web-2", "--", "id"]);
    assert_eq!(code, Some(1));
    assert!(e.contains("web-2: host is down: nothing ran on it"), "{e}");
    let out = fleet.fleetctl(&[
        "--output", "json", "exec", "shop", "--host", "web-2", "--", "id",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["host"], "web-2");
    assert!(v[0]["exit_code"].is_null());
    assert!(v[0]["error"].as_str().unwrap().contains("host is down"));

    // Each call that ran is audited with its command line and outcome.
    let audit = fleet.ok(&["audit", "--output", "json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    let execs: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["action"] == "app.exec")
        .collect();
    assert_eq!(execs.len(), 3, "{audit}");
    let detail = execs[0]["detail"].as_str().unwrap();
    assert!(detail.contains("hosts web-1"), "{detail}");
    assert!(detail.contains(r#"argv ["id"]"#), "{detail}");
    assert!(
        detail.contains("0 exited 0, 0 exited non-zero, 1 failed"),
        "{detail}"
    );
}
