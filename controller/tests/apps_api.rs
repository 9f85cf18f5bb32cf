//! The controller's app, release and secret API through fleetctl, on loopback: what is
//! stored, what is refused, and that secret values never come back out.

mod support;

use support::{tarball, Fleet};

const SPEC: &str = r#"
name = "shop"
server = "gunicorn"
entry = "app:application"
listen = "0.0.0.0:8000"
health = { path = "/health", timeout = "2s" }
secrets = ["DATABASE_URL"]
"#;

fn write(fleet: &Fleet, name: &str, bytes: &[u8]) -> String {
    let p = fleet.dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_owned()
}

fn fail(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleet.fleetctl(args);
    assert!(!out.status.success(), "fleetctl {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn apps_releases_and_secrets() {
    let fleet = Fleet::start(&[]);
    let spec = write(&fleet, "shop.toml", SPEC.as_bytes());
    assert!(fleet
        .ok(&["app", "apply", &spec])
        .contains("app shop created"));
    assert!(fleet.ok(&["app", "apply", &spec]).contains("unchanged"));

    let bad = write(&fleet, "bad.toml", SPEC.replace("shop", "Shop").as_bytes());
    let err = fail(&fleet, &["app", "apply", &bad]);
    assert!(err.contains("name"), "{err}");

    // Not a tarball: refused at upload, not later on every host.
    let junk = write(&fleet, "junk.tar.gz", b"release one bytes");
    let err = fail(
        &fleet,
        &["release", "upload", "shop", &junk, "--version", "1.0"],
    );
    assert!(err.contains("not a gzip-compressed tarball"), "{err}");
    assert_eq!(
        std::fs::read_dir(fleet.data_dir().join("blobs"))
            .unwrap()
            .count(),
        0,
        "a refused upload left a file behind"
    );
    let tar1 = write(&fleet, "r1.tar.gz", &tarball(b"release one bytes"));
    let out = fleet.ok(&["release", "upload", "shop", &tar1, "--version", "1.0"]);
    assert!(out.contains("uploaded shop 1.0"), "{out}");
    // Same bytes again: fine, nothing new.
    assert!(fleet
        .ok(&["release", "upload", "shop", &tar1, "--version", "1.0"])
        .contains("already present"));
    // Other bytes under the same version: refused.
    let tar2 = write(&fleet, "r2.tar.gz", &tarball(b"release two bytes"));
    let err = fail(
        &fleet,
        &["release", "upload", "shop", &tar2, "--version", "1.0"],
    );
    assert!(err.contains("already exists with other content"), "{err}");
    let err = fail(
        &fleet,
        &["release", "upload", "shop", &tar2, "--version", "../1"],
    );
    assert!(err.contains("version"), "{err}");
    let err = fail(
        &fleet,
        &["release", "upload", "nope", &tar2, "--version", "1"],
    );
    assert!(err.contains("no app named nope"), "{err}");

    // Deploy refuses before touching any host while a required secret is missing.
    let err = fail(&fleet, &["deploy", "shop", "--version", "1.0"]);
    assert!(err.contains("DATABASE_URL"), "{err}");
    assert!(err.contains("no host was touched"), "{err}");

    let value = "postgres://shop:hunter2-very-secret@db/shop";
    let out = fleet.secret_set("shop", "DATABASE_URL", value);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = fleet.secret_set("shop", "DATABASE_URL", "line\nExecStart=/bin/sh");
    assert!(!bad.status.success());
    assert!(
        !String::from_utf8_lossy(&bad.stderr).contains("ExecStart"),
        "the value is echoed"
    );

    let show = fleet.ok(&["app", "show", "shop", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(v["secrets_set"], serde_json::json!(["DATABASE_URL"]));
    assert_eq!(v["releases"][0]["version"], "1.0");
    let list: serde_json::Value =
        serde_json::from_str(&fleet.ok(&["app", "list", "--output", "json"])).unwrap();
    assert_eq!(list[0]["latest_release"], "1.0");

    // The value appears nowhere: not in fleetctl output, the audit log or the controller's log.
    let audit = fleet.ok(&["audit"]);
    assert!(
        audit.contains("secret.set") && audit.contains("DATABASE_URL created"),
        "{audit}"
    );
    for text in [show, audit, fleet.controller_log()] {
        assert!(!text.contains("hunter2"), "secret leaked:\n{text}");
    }
    // Nor in the store file: it is sealed with the data dir's secrets.key.
    let store = std::fs::read(fleet.data_dir().join("state.redb")).unwrap();
    assert!(
        !store.windows(7).any(|w| w == b"hunter2"),
        "the secret is in the store file in the clear"
    );
}

#[test]
fn secrets_are_listed_without_values_and_unset_with_care() {
    let fleet = Fleet::start(&[]);
    let spec = write(&fleet, "shop.toml", SPEC.as_bytes());
    fleet.ok(&["app", "apply", &spec]);
    assert!(fleet
        .secret_set("shop", "DATABASE_URL", "hunter2-db")
        .status
        .success());
    assert!(fleet
        .secret_set("shop", "EXTRA", "hunter2-extra")
        .status
        .success());

    let list = fleet.ok(&["secret", "list", "shop", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["DATABASE_URL", "EXTRA"]);
    assert_eq!(v[0]["in_spec"], true);
    assert_eq!(v[1]["in_spec"], false);
    assert!(v[0]["set_by"].as_str().unwrap().contains("admin"), "{list}");
    assert!(v[0]["set_at"].as_str().unwrap().ends_with('Z'), "{list}");
    let table = fleet.ok(&["secret", "list", "shop"]);
    assert!(
        table.contains("DATABASE_URL") && table.contains("yes"),
        "{table}"
    );

    // A secret the spec needs stays unless forced: every deploy would fail without it.
    let err = fail(&fleet, &["secret", "unset", "shop", "DATABASE_URL"]);
    assert!(
        err.contains("spec needs DATABASE_URL") && err.contains("--force"),
        "{err}"
    );
    let err = fail(&fleet, &["secret", "unset", "shop", "bad name"]);
    assert!(err.contains("name"), "{err}");
    let err = fail(&fleet, &["secret", "list", "nope"]);
    assert!(err.contains("no app named nope"), "{err}");

    let out = fleet.ok(&["secret", "unset", "shop", "EXTRA"]);
    assert!(out.contains("unset"), "{out}");
    let out = fleet.ok(&["secret", "unset", "shop", "EXTRA", "--output", "json"]);
    assert!(out.contains("\"existed\": false"), "{out}");
    fleet.ok(&["secret", "unset", "shop", "DATABASE_URL", "--force"]);
    let v: serde_json::Value =
        serde_json::from_str(&fleet.ok(&["secret", "list", "shop", "--output", "json"])).unwrap();
    assert_eq!(v, serde_json::json!([]));
    // The deploy now names the missing secret again.
    let show: serde_json::Value =
        serde_json::from_str(&fleet.ok(&["app", "show", "shop", "--output", "json"])).unwrap();
    assert_eq!(show["secrets_missing"], serde_json::json!(["DATABASE_URL"]));

    let audit = fleet.ok(&["audit"]);
    assert!(
        audit.contains("secret.unset") && audit.contains("DATABASE_URL (forced)"),
        "{audit}"
    );
    assert_eq!(audit.matches("secret.unset").count(), 2, "{audit}");
    for text in [list, table, audit, fleet.controller_log()] {
        assert!(!text.contains("hunter2"), "secret leaked:\n{text}");
    }
}

#[test]
fn releases_are_listed_removed_and_pruned_past_the_retention() {
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("c.toml");
    std::fs::write(&path, "release_retention = 2\n").unwrap();
    let fleet = Fleet::start(&["--config", path.to_str().unwrap()]);
    let spec = write(&fleet, "shop.toml", SPEC.as_bytes());
    fleet.ok(&["app", "apply", &spec]);
    let blobs = || {
        std::fs::read_dir(fleet.data_dir().join("blobs"))
            .unwrap()
            .count()
    };
    for v in ["1.0", "2.0"] {
        let t = write(&fleet, &format!("{v}.tar.gz"), &tarball(v.as_bytes()));
        fleet.ok(&["release", "upload", "shop", &t, "--version", v]);
    }
    let before = blobs();
    let list: serde_json::Value =
        serde_json::from_str(&fleet.ok(&["release", "list", "shop", "--output", "json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        list[0]["uploaded_by"].as_str().unwrap().contains("admin"),
        "{list}"
    );
    assert_eq!(list[0]["running_hosts"], 0);
    assert_eq!(list[0]["sha256"].as_str().unwrap().len(), 64);

    // A third upload prunes the oldest unused one (and its blob) down to 2.
    let t = write(&fleet, "3.0.tar.gz", &tarball(b"3.0"));
    fleet.ok(&["release", "upload", "shop", &t, "--version", "3.0"]);
    let list: serde_json::Value =
        serde_json::from_str(&fleet.ok(&["release", "list", "shop", "--output", "json"])).unwrap();
    let versions: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["2.0", "3.0"]);
    assert_eq!(blobs(), before, "the pruned release's blob is gone");
    let audit = fleet.ok(&["audit"]);
    assert!(
        audit.contains("release.prune") && audit.contains("1.0"),
        "{audit}"
    );

    let out = fleet.ok(&["release", "remove", "shop", "2.0"]);
    assert!(
        out.contains("removed") && out.contains("bytes freed"),
        "{out}"
    );
    assert_eq!(blobs(), before - 1);
    let err = fail(&fleet, &["release", "remove", "shop", "2.0"]);
    assert!(err.contains("no release 2.0"), "{err}");
    let err = fail(&fleet, &["release", "remove", "shop", "../x"]);
    assert!(err.contains("version"), "{err}");
    let table = fleet.ok(&["release", "list", "shop"]);
    assert!(table.contains("3.0") && !table.contains("2.0 "), "{table}");
    assert!(fleet.ok(&["audit"]).contains("release.remove"));
}

#[test]
fn oversize_release_is_refused() {
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("c.toml");
    std::fs::write(&path, "max_release_bytes = 2048\n").unwrap();
    let fleet = Fleet::start(&["--config", path.to_str().unwrap()]);
    let spec = write(&fleet, "shop.toml", SPEC.as_bytes());
    fleet.ok(&["app", "apply", &spec]);
    let big = write(&fleet, "big.tar.gz", &[7u8; 4096]);
    let err = fail(
        &fleet,
        &["release", "upload", "shop", &big, "--version", "2"],
    );
    assert!(err.contains("limit"), "{err}");
    let blobs = std::fs::read_dir(fleet.data_dir().join("blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "a refused upload left a file behind");
}
