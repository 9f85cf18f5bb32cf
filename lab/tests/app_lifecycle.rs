//! `fleetctl app stop|start|remove` on real hosts (issue 18): a stopped app stays down
//! through an agent restart and is left out of deploys; started again it serves; a
//! removal clears units, env, log rotation and releases, and a host that was down when
//! it was asked removes the app when its agent comes back.

mod common;

use common::{ctl, wait};

use std::net::SocketAddr;
use std::time::Duration;

use fleet_lab::load;
use fleet_lab::release;
use fleet_lab::{host_addr, Lab, LabOptions};
use serde_json::Value;

const PORT: u16 = 8000;
/// Everything the agent installs for `shop`, one path per line.
const SHOP_FILES: &str = "/etc/systemd/system/fleet-app-shop.service \
                          /etc/systemd/system/fleet-app-shop.socket \
                          /etc/fleet/apps/shop.env \
                          /etc/logrotate.d/fleet-app-shop \
                          /var/lib/fleet/apps/shop \
                          /var/lib/fleet-agent/apps/shop.toml";

fn json(lab: &Lab, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let text = ctl(lab, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn state(lab: &Lab, host: &str) -> Option<Value> {
    json(lab, &["status", "shop"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["host"] == host)
        .cloned()
}

fn result_of(results: &Value, host: &str) -> Value {
    results
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == host)
        .cloned()
        .unwrap_or_else(|| panic!("{host} not reported: {results}"))
}

fn serves(n: u32) -> Option<String> {
    let addr: SocketAddr = format!("{}:{PORT}", host_addr(n)).parse().unwrap();
    match load::request(addr, "/", Duration::from_secs(3)) {
        load::Outcome::Ok(body) => Some(body),
        load::Outcome::Failed(_) => None,
    }
}

/// `systemctl is-active` and `is-enabled` of the app's units on host `n`.
fn units(lab: &Lab, n: u32) -> String {
    lab.sh(
        n,
        "for u in fleet-app-shop.socket fleet-app-shop.service; do \
         echo \"$u $(systemctl is-active $u) $(systemctl is-enabled $u 2>/dev/null || echo none)\"; done",
    )
    .unwrap()
}

/// The paths of `SHOP_FILES` that exist on host `n`.
fn left(lab: &Lab, n: u32) -> String {
    lab.sh(
        n,
        &format!("for p in {SHOP_FILES}; do [ -e $p ] && echo $p; done; true"),
    )
    .unwrap()
}

#[test]
fn stopped_apps_stay_down_and_removed_apps_leave_nothing() {
    common::init();
    let mut opts = LabOptions::fleet(2);
    opts.agent.heartbeat = Some("1s".into());
    let Some(lab) = fleet_lab::test_lab(&opts) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        release::write(work.path(), name, bytes)
            .unwrap()
            .display()
            .to_string()
    };
    let spec = release::spec("shop", "gunicorn", PORT, "[logs]\nmode = \"files\"\n");
    let spec_path = file("shop.toml", spec.as_bytes());
    ctl(&lab, &["app", "apply", &spec_path]);
    for v in ["1.0", "2.0"] {
        let tar = file(
            &format!("shop-{v}.tar.gz"),
            &release::sample("wsgi", v, &[]).unwrap(),
        );
        ctl(&lab, &["release", "upload", "shop", &tar, "--version", v]);
    }
    ctl(&lab, &["deploy", "shop", "--version", "1.0"]);
    for n in 1..=2 {
        assert!(serves(n).is_some_and(|b| b.starts_with("release=1.0")));
    }
    let all_there = left(&lab, 1);
    assert_eq!(
        all_there.lines().count(),
        6,
        "installed files:\n{all_there}"
    );

    // --- stop on host1: units down and disabled, said so in status, host2 untouched
    let out = json(&lab, &["app", "stop", "shop", "--hosts", "host1"]);
    assert_eq!(result_of(&out, "host1")["result"], "done", "{out}");
    let u = units(&lab, 1);
    assert!(
        u.contains("fleet-app-shop.socket inactive disabled")
            && u.contains("fleet-app-shop.service inactive disabled"),
        "{u}"
    );
    assert!(serves(1).is_none(), "a stopped app answered");
    assert!(serves(2).is_some());
    wait("host1 reported stopped", Duration::from_secs(10), || {
        state(&lab, "host1").is_some_and(|s| s["stopped"] == true && s["healthy"] == false)
    });
    assert!(ctl(&lab, &["status", "shop"]).contains("(stopped)"));

    // --- an agent restart re-adopts it as stopped and starts nothing
    assert_eq!(
        lab.exec(1, &["systemctl", "restart", "fleet-agent"])
            .unwrap(),
        0
    );
    wait(
        "host1 back with shop stopped",
        Duration::from_secs(20),
        || state(&lab, "host1").is_some_and(|s| s["stopped"] == true && s["host_state"] == "up"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(units(&lab, 1).contains("fleet-app-shop.service inactive disabled"));

    // --- a deploy leaves it out and says so
    let out = lab
        .fleetctl(&["deploy", "shop", "--version", "2.0", "--output", "json"])
        .unwrap();
    let out: Value = serde_json::from_str(&out).unwrap();
    let h1 = result_of(&out, "host1");
    assert_eq!(h1["result"], "skipped", "{h1}");
    assert!(
        h1["message"].as_str().unwrap().contains("stopped here"),
        "{h1}"
    );
    assert_eq!(result_of(&out, "host2")["result"], "done", "{out}");
    assert!(serves(1).is_none());
    assert!(serves(2).is_some_and(|b| b.starts_with("release=2.0")));

    // --- start: enabled, serving its release again, healthy
    let out = json(&lab, &["app", "start", "shop", "--hosts", "host1"]);
    assert_eq!(result_of(&out, "host1")["result"], "done", "{out}");
    assert!(units(&lab, 1).contains("fleet-app-shop.service active enabled"));
    assert!(serves(1).is_some_and(|b| b.starts_with("release=1.0")));
    wait(
        "host1 healthy and not stopped",
        Duration::from_secs(10),
        || state(&lab, "host1").is_some_and(|s| s["stopped"] == false && s["healthy"] == true),
    );

    // --- remove while host2's agent is down: host1 now, host2 when it is back
    assert_eq!(
        lab.exec(2, &["systemctl", "stop", "fleet-agent"]).unwrap(),
        0
    );
    lab.wait_fleet_state(&["host2"], "down", Duration::from_secs(15))
        .unwrap();
    let out = json(&lab, &["app", "remove", "shop", "--yes"]);
    assert_eq!(result_of(&out, "host1")["result"], "done", "{out}");
    assert_eq!(result_of(&out, "host2")["result"], "pending", "{out}");
    assert_eq!(left(&lab, 1), "", "left on host1 after removal");
    let gone = lab
        .sh(
            1,
            "systemctl show -p LoadState --value fleet-app-shop.service",
        )
        .unwrap();
    assert_eq!(gone.trim(), "not-found", "systemd still knows the unit");
    assert!(serves(1).is_none());
    // The logs stay: they are the operator's.
    assert!(lab
        .sh(1, "ls /var/log/fleet/shop")
        .unwrap()
        .contains("access"));
    // host2's app runs on: its agent was down, so nothing was touched there yet.
    assert!(serves(2).is_some());
    let e = lab.fleetctl(&["app", "apply", &spec_path]).unwrap_err();
    assert!(
        format!("{e:#}").contains("have not confirmed its removal yet: host2"),
        "{e:#}"
    );

    assert_eq!(
        lab.exec(2, &["systemctl", "start", "fleet-agent"]).unwrap(),
        0
    );
    wait(
        "host2 to remove shop once its agent is back",
        Duration::from_secs(30),
        || left(&lab, 2).is_empty(),
    );
    assert!(serves(2).is_none());
    wait(
        "the removal to be confirmed",
        Duration::from_secs(10),
        || lab.fleetctl(&["app", "apply", &spec_path]).is_ok(),
    );
    let audit = ctl(&lab, &["audit"]);
    for needle in [
        "app.stop",
        "app.start",
        "app.remove",
        "removed when it connected",
    ] {
        assert!(audit.contains(needle), "{needle} not in audit:\n{audit}");
    }
}
