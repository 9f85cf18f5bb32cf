//! `fleetctl app stop|start|remove` on loopback, with hosts that are down: the intent is
//! kept and said to be pending, deploys leave stopped hosts out, a removal deletes the app
//! from the controller and is owed by the hosts until they confirm it. (The host side is
//! lab/tests/app_lifecycle.rs.)

mod support;

use support::Fleet;

const SPEC: &str = "name = \"shop\"\nserver = \"gunicorn\"\nentry = \"app:application\"\nlisten = \"0.0.0.0:8000\"\nsecrets = [\"DB\"]\nhealth = { path = \"/health\", timeout = \"2s\" }\n";

fn json(fleet: &Fleet, args: &[&str]) -> (bool, serde_json::Value, String) {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = fleet.fleetctl(&all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        value,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn result_of<'a>(results: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    results
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {results}"))
        .iter()
        .find(|r| r["host"] == host)
        .unwrap_or_else(|| panic!("{host} not reported: {results}"))
}

fn err(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleet.fleetctl(args);
    assert!(!out.status.success(), "fleetctl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn stop_start_and_remove_keep_the_intent_for_hosts_that_are_down() {
    let fleet = Fleet::start(&[]);
    let dir = fleet.dir.path().to_owned();
    fleet.join("h1", &fleet.token(&[]));
    fleet.join("h2", &fleet.token(&[]));
    fleet.app_with_release(SPEC, "shop", "1.0", b"x");
    let spec = dir.join("shop.toml");
    assert!(fleet.secret_set("shop", "DB", "s3cret").status.success());

    // Never deployed: without hosts there is nothing to stop.
    assert!(err(&fleet, &["app", "stop", "shop"]).contains("shop is on no host: deploy it first"));
    assert!(err(&fleet, &["app", "stop", "shop", "--hosts", "h9"]).contains("unknown host(s): h9"));
    assert!(err(&fleet, &["app", "stop", "nope", "--hosts", "h1"]).contains("no app named nope"));

    // Both hosts are down: the stop is recorded and pending, not failed.
    let (ok, results, stderr) = json(&fleet, &["app", "stop", "shop", "--hosts", "h1,h2"]);
    assert!(ok, "{stderr}");
    for h in ["h1", "h2"] {
        let r = result_of(&results, h);
        assert_eq!(r["result"], "pending", "{r}");
        assert!(
            r["message"]
                .as_str()
                .unwrap()
                .contains("stops the app when it connects"),
            "{r}"
        );
    }
    let e = err(&fleet, &["deploy", "shop", "--version", "1.0"]);
    assert!(
        e.contains("shop is stopped on every target host (h1, h2)"),
        "{e}"
    );
    assert!(e.contains("fleetctl app start shop"), "{e}");
    let e = err(&fleet, &["rollout", "shop", "--version", "1.0"]);
    assert!(e.contains("shop is stopped on every target host"), "{e}");

    let (ok, results, stderr) = json(&fleet, &["app", "start", "shop", "--hosts", "h1"]);
    assert!(ok, "{stderr}");
    assert_eq!(result_of(&results, "h1")["result"], "pending");
    // h1 is down, so its deploy fails; h2 is still stopped and left alone.
    let (ok, results, _) = json(&fleet, &["deploy", "shop", "--version", "1.0"]);
    assert!(!ok);
    assert_eq!(result_of(&results, "h1")["result"], "failed");
    let h2 = result_of(&results, "h2");
    assert_eq!(h2["result"], "skipped");
    assert!(
        h2["message"]
            .as_str()
            .unwrap()
            .contains("shop is stopped here"),
        "{h2}"
    );

    // A rollout leaves h2 out and says so (h1 is down: skipped too, with --skip-down).
    let out = fleet.fleetctl(&["rollout", "shop", "--version", "1.0", "--skip-down"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("h2")
            && l.contains("skipped")
            && l.contains("shop is stopped here: left out of the rollout")),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Removal needs --yes, on both ends.
    let e = err(&fleet, &["app", "remove", "shop"]);
    assert!(e.contains("cannot be undone: add --yes"), "{e}");
    let (ok, results, stderr) = json(&fleet, &["app", "remove", "shop", "--yes"]);
    assert!(ok, "{stderr}");
    // h2 had the app stopped on it, h1 a desired release from the rollout: both owe it.
    for h in ["h1", "h2"] {
        let r = result_of(&results, h);
        assert_eq!(r["result"], "pending", "{r}");
        assert!(
            r["message"].as_str().unwrap().contains("removes the app"),
            "{r}"
        );
    }

    // Gone from the controller: spec, releases, secrets.
    assert!(err(&fleet, &["app", "show", "shop"]).contains("no app named shop"));
    let (ok, apps, _) = json(&fleet, &["app", "list"]);
    assert!(ok);
    assert_eq!(apps, serde_json::json!([]));
    assert!(!fleet.ok(&["audit"]).contains("s3cret"));
    // A new app of the same name would be removed by h1 and h2 when they connect: refused.
    let e = err(&fleet, &["app", "apply", spec.to_str().unwrap()]);
    assert!(
        e.contains("have not confirmed its removal yet: h1, h2"),
        "{e}"
    );
    // Once they are gone from the fleet, nothing is owed and the name is free again.
    fleet.ok(&["host", "remove", "h1"]);
    assert!(err(&fleet, &["app", "apply", spec.to_str().unwrap()]).contains("yet: h2"));
    fleet.ok(&["host", "remove", "h2"]);
    fleet.ok(&["app", "apply", spec.to_str().unwrap()]);
    let (ok, releases, _) = json(&fleet, &["app", "show", "shop"]);
    assert!(ok);
    assert_eq!(releases["releases"], serde_json::json!([]), "{releases}");
    assert_eq!(releases["secrets_set"], serde_json::json!([]), "{releases}");

    let audit = fleet.ok(&["audit"]);
    for action in ["app.stop", "app.start", "app.remove"] {
        assert!(audit.contains(action), "{action} not audited:\n{audit}");
    }
}
