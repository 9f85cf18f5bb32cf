//! `fleetctl agent upload|list|upgrade` on loopback with real agents: what is stored, what
//! is refused before anything changes, and that a package whose bytes do not match its
//! sha256 is refused by the agent and halts the upgrade at its first batch. (The install
//! itself needs dpkg and systemd: lab/tests/agent_upgrade.rs.)

mod support;

use std::time::Duration;

use support::Fleet;

fn write(fleet: &Fleet, name: &str, bytes: &[u8]) -> String {
    let p = fleet.dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_owned()
}

fn fail(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleet.fleetctl(args);
    assert!(!out.status.success(), "fleetctl {args:?} succeeded");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn audit_actions(fleet: &Fleet) -> Vec<String> {
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(&fleet.ok(&["audit", "--output", "json"])).unwrap();
    entries
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn packages_are_immutable_and_unknown_versions_are_refused_before_anything_changes() {
    let fleet = Fleet::start(&[]);
    let token = fleet.token(&[]);
    let state = fleet.join("h1", &token);
    let _agent = fleet.run_agent("h1", &state);
    fleet.wait_state("h1", "up", Duration::from_secs(20));

    let err = fail(&fleet, &["agent", "upgrade", "--version", "0.9.0"]);
    assert!(
        err.contains("holds no fleet-agent package 0.9.0") && err.contains("fleetctl agent upload"),
        "{err}"
    );
    assert!(!audit_actions(&fleet)
        .iter()
        .any(|a| a.starts_with("agent.")));

    let err = fail(&fleet, &["agent", "upgrade", "--version", "../0.9"]);
    assert!(err.contains("invalid fleet-agent package version"), "{err}");
    let err = fail(
        &fleet,
        &[
            "agent",
            "upgrade",
            "--version",
            "0.9.0",
            "--max-parallel",
            "100000",
        ],
    );
    assert!(err.contains("at most"), "{err}");

    let pkg = write(&fleet, "a.deb", b"!<arch>\npackage bytes, version one");
    let out = fleet.ok(&["agent", "upload", &pkg, "--version", "0.9.0"]);
    assert!(out.starts_with("uploaded fleet-agent 0.9.0"), "{out}");
    let again = fleet.ok(&["agent", "upload", &pkg, "--version", "0.9.0"]);
    assert!(again.contains("already present"), "{again}");
    let other = write(&fleet, "b.deb", b"!<arch>\nother bytes");
    let err = fail(&fleet, &["agent", "upload", &other, "--version", "0.9.0"]);
    assert!(err.contains("packages are immutable"), "{err}");
    // Without --version the control file is read, so a file that is no .deb is refused.
    let err = fail(&fleet, &["agent", "upload", &other]);
    assert!(
        err.contains("not a readable .deb") || err.contains("pass --version"),
        "{err}"
    );

    let list: Vec<serde_json::Value> =
        serde_json::from_str(&fleet.ok(&["agent", "list", "--output", "json"])).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["version"], "0.9.0");
    assert_eq!(list[0]["size"], 34);
    let actions = audit_actions(&fleet);
    assert_eq!(
        actions.iter().filter(|a| *a == "agent.upload").count(),
        1,
        "{actions:?}"
    );
    assert!(!actions.iter().any(|a| a == "agent.upgrade"), "{actions:?}");
    // The host still runs what it ran.
    let hosts = fleet.hosts();
    assert_eq!(hosts[0]["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn a_package_that_fails_its_sha256_is_refused_by_the_agent_and_halts_the_upgrade() {
    let fleet = Fleet::start(&[]);
    let token = fleet.token(&["--uses", "2"]);
    let s1 = fleet.join("h1", &token);
    let s2 = fleet.join("h2", &token);
    let _a1 = fleet.run_agent("h1", &s1);
    let a2 = fleet.run_agent("h2", &s2);
    fleet.wait_state("h1", "up", Duration::from_secs(20));
    fleet.wait_state("h2", "up", Duration::from_secs(20));

    let pkg = write(&fleet, "a.deb", b"!<arch>\nthe package as uploaded");
    let out = fleet.ok(&[
        "agent",
        "upload",
        &pkg,
        "--version",
        "0.9.0-1",
        "--output",
        "json",
    ]);
    let sha = serde_json::from_str::<serde_json::Value>(&out).unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    // Same size, other bytes: what a disk error or tampering on the controller looks like.
    std::fs::write(
        fleet.data_dir().join("blobs").join(&sha),
        b"!<arch>\nthe package as TAMPERED",
    )
    .unwrap();

    let out = fleet.fleetctl(&[
        "agent",
        "upgrade",
        "--version",
        "0.9.0-1",
        "--max-parallel",
        "1",
        "--deadline",
        "30s",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("batch 1: h1"), "{text}");
    assert!(
        text.contains("refusing to install fleet-agent 0.9.0-1")
            && text.contains(&format!("the controller announced {sha}")),
        "{text}"
    );
    assert!(text.contains("halted at batch 1"), "{text}");
    assert!(
        !text.contains("batch 2"),
        "the second batch must not start: {text}"
    );
    assert!(
        !a2.log().contains("downloading fleet-agent package"),
        "h2 was not asked: {}",
        a2.log()
    );
    for h in fleet.hosts() {
        assert_eq!(h["state"], "up", "{h}");
        assert_eq!(h["version"], env!("CARGO_PKG_VERSION"), "{h}");
    }
    let actions = audit_actions(&fleet);
    assert!(
        actions.iter().any(|a| a == "agent.upgrade")
            && actions.iter().any(|a| a == "agent.upgrade.halted"),
        "{actions:?}"
    );
    // The agent deleted what it refused.
    assert!(!s1.join("upgrades/fleet-agent_0.9.0-1.deb").exists());
    assert!(!s1.join("upgrades/fleet-agent_0.9.0-1.deb.part").exists());
}
