//! `fleet-controller init` and `run` as an operator meets them: what init writes and
//! prints, and refusing to start (or overwrite) instead of losing a fleet.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::bin;

fn controller(args: &[&str]) -> std::process::Output {
    Command::new(bin("fleet-controller"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn init_writes_private_keys_0600_and_prints_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    let out = controller(&[
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--san",
        "198.18.0.1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let pin = stdout
        .trim()
        .strip_prefix("ca-pin: sha256:")
        .expect("ca-pin line");
    assert_eq!(pin.len(), 64);
    assert!(pin.chars().all(|c| c.is_ascii_hexdigit()));
    for key in ["ca.key", "controller.key", "admin/admin.key", "state.redb"] {
        let mode = std::fs::metadata(data.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key} has mode {mode:o}");
    }
    for file in [
        "admin/ca.crt",
        "admin/admin.crt",
        "ca.crt",
        "controller.crt",
    ] {
        assert!(data.join(file).exists(), "{file} missing");
    }

    let again = controller(&["init", "--data-dir", data.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
}

#[test]
fn init_refuses_a_bad_certificate_lifetime_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    for flag in ["--server-cert-lifetime", "--admin-cert-lifetime"] {
        for bad in ["1s", "2y", "soon"] {
            let out = controller(&["init", "--data-dir", data.to_str().unwrap(), flag, bad]);
            assert!(!out.status.success(), "{flag} {bad} accepted");
            let err = String::from_utf8_lossy(&out.stderr);
            let setting = flag.trim_start_matches("--").replace('-', "_");
            assert!(err.contains(flag) || err.contains(&setting), "{err}");
            assert!(
                !data.exists(),
                "{flag} {bad}: init wrote {}",
                data.display()
            );
        }
    }
}

#[test]
fn a_corrupt_store_stops_the_controller_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("c");
    assert!(controller(&["init", "--data-dir", data.to_str().unwrap()])
        .status
        .success());
    std::fs::write(data.join("state.redb"), b"\0garbage\0".repeat(1000)).unwrap();
    let out = controller(&[
        "run",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is unreadable"), "{err}");
    assert!(err.contains("restore the file from a backup"), "{err}");
}

#[test]
fn run_without_init_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = controller(&["run", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fleet-controller init"));
}

#[test]
fn fleetctl_without_an_identity_says_where_to_find_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("fleetctl"))
        .args(["--identity", dir.path().to_str().unwrap(), "hosts"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no admin identity at"), "{err}");
    assert!(err.contains("FLEET_IDENTITY"), "{err}");
}

#[test]
fn json_logs_on_request() {
    let fleet = support::Fleet::start(&["--log-format", "json"]);
    let line = support::wait_for(
        "the listening log line",
        std::time::Duration::from_secs(10),
        || {
            fleet
                .controller_log()
                .lines()
                .find(|l| l.contains("controller listening"))
                .map(str::to_owned)
        },
    );
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["fields"]["message"], "controller listening");
    assert!(v["fields"]["ca_pin"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
}
