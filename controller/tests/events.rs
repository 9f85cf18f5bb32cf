//! `fleetctl events` on loopback with a real agent: a follower sees audit entries and a
//! host going up and down as they happen, one JSON object per line; filters and the
//! recent-events window hold.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{bin, Fleet};

#[test]
fn a_follower_sees_hosts_and_audit_entries_as_they_happen() {
    let fleet = Fleet::start(&[]);
    let mut follower = Command::new(bin("fleetctl"))
        .args(["--controller", &fleet.addr(), "--identity"])
        .arg(fleet.admin_dir())
        .args(["--output", "json", "events", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: serde_json::Value =
                serde_json::from_str(&line).expect("one JSON object per line");
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    let wait_for = |kind: &str, host: Option<&str>| -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(v) = rx.recv_timeout(Duration::from_millis(200)) {
                if v["kind"] == kind && host.is_none_or(|h| v["host"] == h) {
                    return v;
                }
            }
        }
        panic!("no {kind} event within 20 s");
    };

    let token = fleet.token(&[]);
    let e = wait_for("audit", None);
    assert!(
        e["message"].as_str().unwrap().contains("token.create"),
        "{e}"
    );
    assert!(
        !e["message"].as_str().unwrap().contains(&token),
        "the token leaked into an event"
    );
    let state = fleet.join("web-1", &token);
    let mut agent = fleet.run_agent("web-1", &state);
    let up = wait_for("host.up", Some("web-1"));
    assert!(
        up["message"].as_str().unwrap().contains("127.0.0.1"),
        "{up}"
    );
    agent.stop();
    wait_for("host.down", Some("web-1"));
    let _ = follower.kill();
    let _ = follower.wait();

    // The recent window and the filters, without following.
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut a = vec!["--output", "json", "events"];
        a.extend_from_slice(args);
        fleet
            .ok(&a)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(lines(&["-n", "2"]).len(), 2);
    let web1 = lines(&["--host", "web-1"]);
    assert!(web1.len() >= 2, "{web1:?}");
    assert!(web1.iter().all(|e| e["host"] == "web-1"), "{web1:?}");
    let seqs: Vec<u64> = lines(&["-n", "100"])
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "not in order: {seqs:?}"
    );
    let table = fleet.ok(&["events", "--host", "web-1"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("host.up") && l.contains("web-1")),
        "{table}"
    );
}
