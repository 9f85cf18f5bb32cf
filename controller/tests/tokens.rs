//! Join tokens through fleetctl on loopback: listed without the token itself, revoked at
//! once (a join with a revoked token is refused and says so), audited.

mod support;

use support::Fleet;

fn list(fleet: &Fleet, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["token", "list", "--output", "json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&fleet.ok(&args)).unwrap()
}

#[test]
fn tokens_are_listed_without_secrets_and_revoked_at_once() {
    let fleet = Fleet::start(&[]);
    let used = fleet.token(&[]);
    let kept = fleet.token(&["--uses", "3", "--group", "web"]);
    let doomed = fleet.token(&["--uses", "5"]);
    fleet.join("h1", &used);

    let tokens = list(&fleet, &[]);
    assert_eq!(
        tokens.len(),
        2,
        "the used-up token is not usable: {tokens:?}"
    );
    let text = serde_json::to_string(&tokens).unwrap() + &fleet.ok(&["token", "list"]);
    for secret in [&used, &kept, &doomed] {
        assert!(!text.contains(secret.as_str()), "token leaked:\n{text}");
    }
    let web = tokens.iter().find(|t| t["group"] == "web").unwrap();
    assert_eq!(web["uses_left"], 3);
    assert_eq!(web["state"], "usable");
    assert!(web["created_by"].as_str().unwrap().contains("admin"));
    let all = list(&fleet, &["--all"]);
    assert_eq!(all.len(), 3);
    assert!(all.iter().any(|t| t["state"] == "used up"));

    let id = tokens
        .iter()
        .find(|t| t["group"].is_null() && t["uses_total"] == 5)
        .unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = fleet.ok(&["token", "revoke", &id]);
    assert!(out.contains("revoked"), "{out}");
    let state = fleet.dir.path().join("agent-h2");
    let join = fleet.agent_join("h2", &doomed, &state, &[]);
    assert!(!join.status.success());
    let err = String::from_utf8_lossy(&join.stderr);
    assert!(err.contains("revoked"), "{err}");
    assert!(fleet.host_state("h2").is_none());

    // Again: still revoked, its first time kept, one audit entry.
    let again: serde_json::Value =
        serde_json::from_str(&fleet.ok(&["token", "revoke", &id, "--output", "json"])).unwrap();
    assert_eq!(again["state"], "revoked");
    assert_eq!(list(&fleet, &[]).len(), 1);
    let audit = fleet.ok(&["audit"]);
    assert_eq!(audit.matches("token.revoke").count(), 1, "{audit}");

    for (bad, says) in [("nothex", "hex digits"), ("0123456789ab", "no token")] {
        let out = fleet.fleetctl(&["token", "revoke", bad]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{bad}: {err}");
    }
}
