//! Host groups with the real binaries on loopback: a token places joining hosts in a
//! group, `fleetctl host set-group` moves them, bad names change nothing, the audit log
//! records each move, and discovery labels targets with the group.

mod support;

use std::time::Duration;

use support::{free_port, http_get, wait_for, Fleet};

fn group_of(fleet: &Fleet, name: &str) -> String {
    fleet
        .hosts()
        .into_iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no host {name}"))["group"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn groups_come_from_the_token_move_by_command_and_reach_discovery() {
    let fleet = Fleet::start(&[]);
    let state = fleet.join("web-1", &fleet.token(&["--group", "web"]));
    fleet.join("db-1", &fleet.token(&[]));
    assert_eq!(group_of(&fleet, "web-1"), "web");
    assert_eq!(group_of(&fleet, "db-1"), "");

    let out = fleet.ok(&["host", "set-group", "db-1", "db"]);
    assert_eq!(out.trim(), "host db-1 is in group db");
    assert_eq!(group_of(&fleet, "db-1"), "db");

    // Invalid names and unknown hosts are refused and change nothing.
    for (args, needle) in [
        (vec!["host", "set-group", "db-1", "Bad Group"], "group name"),
        (vec!["host", "set-group", "db-1", "../etc"], "group name"),
        (
            vec!["host", "set-group", "nope", "db"],
            "no host named nope",
        ),
    ] {
        let out = fleet.fleetctl(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = fleet.fleetctl(&["token", "create", "--group", "UPPER"]);
    assert!(!out.status.success());
    assert_eq!(group_of(&fleet, "db-1"), "db");

    let out = fleet.ok(&["host", "set-group", "db-1", "--none"]);
    assert_eq!(out.trim(), "host db-1 is in no group");
    assert_eq!(group_of(&fleet, "db-1"), "");

    let audit = fleet.ok(&["audit"]);
    assert!(audit.contains("host.group"), "{audit}");
    assert!(audit.contains("(none) -> db"), "{audit}");
    assert!(audit.contains("db -> (none)"), "{audit}");

    // Discovery carries the group of the host behind each target.
    let listen = format!("127.0.0.1:{}", free_port());
    let _agent = fleet.run_agent_with("web-1", &state, &["--metrics-listen", &listen]);
    fleet.wait_state("web-1", "up", Duration::from_secs(15));
    let sd = wait_for("web-1 in discovery", Duration::from_secs(10), || {
        let (status, body) = http_get(&fleet.http_addr(), "/v1/sd/prometheus", None);
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        (json.as_array().unwrap().len() == 1).then_some(json)
    });
    assert_eq!(sd[0]["labels"]["group"], "web", "{sd}");
    assert_eq!(sd[0]["labels"]["host"], "web-1", "{sd}");
}
