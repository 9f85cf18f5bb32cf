//! fleetctl on its own, with no controller: what an operator on a fresh admin box sees.
//! (Commands against a live controller are tested in fleet-controller's tests, which also
//! rely on this package's test build to put the fleetctl binary beside theirs.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fleetctl");

#[test]
fn without_an_identity_it_says_where_to_get_one_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = Command::new(BIN)
        .arg("--identity")
        .arg(&missing)
        .arg("hosts")
        .env_remove("FLEET_IDENTITY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no admin identity at"), "{err}");
    assert!(err.contains("--identity"), "{err}");
    assert!(err.contains("fleet-controller init"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn version_names_the_package_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("fleetctl {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_app_name_is_refused_before_the_identity_is_even_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--identity")
        .arg(dir.path().join("nope"))
        .args(["deploy", "Bad/Name", "--version", "1"])
        .env_remove("FLEET_IDENTITY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must match [a-z][a-z0-9-]"), "{err}");
    assert!(!err.contains("no admin identity"), "{err}");
}
