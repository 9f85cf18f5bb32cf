//! Cordoned hosts on loopback: shown in `hosts`, left out of deploys (said so, counted as
//! neither success nor failure), refused when nothing is left, audited.

mod support;

use support::Fleet;

const SPEC: &str = "name = \"shop\"\nserver = \"gunicorn\"\nentry = \"app:application\"\nlisten = \"0.0.0.0:8000\"\nhealth = { path = \"/health\", timeout = \"2s\" }\n";

#[test]
fn a_cordoned_host_is_left_out_of_deploys_and_said_so() {
    let fleet = Fleet::start(&[]);
    let dir = fleet.dir.path().to_owned();
    fleet.join("h1", &fleet.token(&[]));
    fleet.join("h2", &fleet.token(&[]));
    fleet.app_with_release(SPEC, "shop", "1.0", b"x");

    let out = fleet.ok(&["host", "cordon", "h2", "--reason", "disk swap"]);
    assert!(out.contains("cordoned"), "{out}");
    let hosts = fleet.hosts();
    let h2 = hosts.iter().find(|h| h["name"] == "h2").unwrap();
    assert_eq!(h2["cordoned"], true);
    assert_eq!(h2["cordon_reason"], "disk swap");
    assert!(fleet.ok(&["hosts"]).contains("down (cordoned)"));

    // h1 is down, so the deploy fails there; h2 is skipped, neither failed nor done.
    let out = fleet.fleetctl(&["--output", "json", "deploy", "shop", "--version", "1.0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let results: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let h2 = results
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "h2")
        .expect("h2 not reported");
    assert_eq!(h2["result"], "skipped");
    assert!(
        h2["message"]
            .as_str()
            .unwrap()
            .contains("cordoned (disk swap)"),
        "{h2}"
    );
    let h1 = results
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "h1")
        .unwrap();
    assert_eq!(h1["result"], "failed");

    fleet.ok(&["host", "cordon", "h1"]);
    let out = fleet.fleetctl(&["deploy", "shop", "--version", "1.0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("every target host is cordoned (h1, h2)"),
        "{err}"
    );

    fleet.ok(&["host", "uncordon", "h2"]);
    let hosts = fleet.hosts();
    assert_eq!(
        hosts.iter().find(|h| h["name"] == "h2").unwrap()["cordoned"],
        false
    );
    for (args, says) in [
        (
            &["host", "cordon", "h1", "--reason", "two\nlines"][..],
            "one line",
        ),
        (&["host", "cordon", "nope"], "no host named nope"),
    ] {
        let out = fleet.fleetctl(args);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}"
        );
    }
    let audit = fleet.ok(&["audit"]);
    assert_eq!(audit.matches("host.cordon").count(), 2, "{audit}");
    assert_eq!(audit.matches("host.uncordon").count(), 1, "{audit}");
    // A removed host leaves no cordon behind.
    fleet.ok(&["host", "remove", "h1"]);
    let again = fleet.agent_join("h1", &fleet.token(&[]), &dir.join("agent-h1"), &["--force"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        fleet.hosts().iter().find(|h| h["name"] == "h1").unwrap()["cordoned"],
        false
    );
}
