//! fleetctl's own identity with the real binaries: a reminder once its certificate is past
//! 2/3 of its lifetime, and `fleetctl identity renew` getting a new one for the same key.

mod support;

use std::time::Duration;

use support::{now_secs, wait_for, Fleet};

const REMINDER: &str = "run `fleetctl identity renew`";

/// Serial and validity (Unix seconds) of the admin certificate on disk.
fn admin_cert(fleet: &Fleet) -> fleet_proto::peer::CertInfo {
    let pem = std::fs::read_to_string(fleet.admin_dir().join("admin.crt")).unwrap();
    let der = fleet_proto::transport::certs_from_pem(&pem, "admin cert").unwrap();
    fleet_proto::peer::cert_info(&der[0]).unwrap()
}

fn stderr_of(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleet.fleetctl(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "fleetctl {args:?}: {err}");
    err
}

#[test]
fn fleetctl_is_reminded_then_renews_its_certificate_with_a_new_key() {
    let mut fleet = Fleet::init(
        &["--admin-cert-lifetime", "6s"],
        &["--admin-cert-lifetime", "1h"],
    );
    fleet.run_controller();
    let key = std::fs::read(fleet.admin_dir().join("admin.key")).unwrap();
    let first = admin_cert(&fleet);

    let err = stderr_of(&fleet, &["hosts"]);
    assert!(!err.contains(REMINDER), "a fresh certificate: {err}");

    let due = fleet_proto::renewal::renew_at(first.not_before, first.not_after);
    wait_for("the renewal point", Duration::from_secs(10), || {
        (now_secs() >= due).then_some(())
    });
    let err = stderr_of(&fleet, &["hosts"]);
    assert!(err.contains(REMINDER), "{err}");

    let out = fleet.ok(&["identity", "renew"]);
    assert!(out.contains("spiffe://fleet.local/admin/admin"), "{out}");
    let second = admin_cert(&fleet);
    assert_ne!(second.serial, first.serial);
    assert_eq!(second.identity, first.identity);
    assert!(
        second.not_after >= now_secs() + 3500,
        "the controller's admin_cert_lifetime (1h) was not used: {}",
        second.not_after
    );
    assert_ne!(
        std::fs::read(fleet.admin_dir().join("admin.key")).unwrap(),
        key,
        "a renewal rotates the key"
    );
    assert!(
        !fleet.admin_dir().join("admin.key.next").exists(),
        "the key swap left its temporary key behind"
    );

    // Past the first certificate's end the renewed one works, without a reminder.
    wait_for(
        "the first certificate to expire",
        Duration::from_secs(10),
        || (now_secs() > first.not_after).then_some(()),
    );
    let err = stderr_of(&fleet, &["hosts"]);
    assert!(!err.contains(REMINDER), "{err}");
    let shown: serde_json::Value =
        serde_json::from_str(&fleet.ok(&["--output", "json", "identity", "show"])).unwrap();
    assert_eq!(shown["serial"], second.serial.as_str(), "{shown}");
    let audit = fleet.ok(&["audit"]);
    assert!(audit.contains("identity.renew"), "{audit}");
    assert!(audit.contains(&first.serial), "{audit}");
    let leftovers: Vec<_> = std::fs::read_dir(fleet.admin_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_agent_cannot_get_an_admin_certificate() {
    let fleet = Fleet::start(&[]);
    let state = fleet.join("web-1", &fleet.token(&[]));
    // The agent's own identity directory, shaped like an admin one.
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("ca.crt", "ca.crt"),
        ("agent.crt", "admin.crt"),
        ("agent.key", "admin.key"),
    ] {
        std::fs::copy(state.join(from), dir.path().join(to)).unwrap();
    }
    let before = std::fs::read(dir.path().join("admin.crt")).unwrap();
    let out = std::process::Command::new(support::bin("fleetctl"))
        .args(["--controller", &fleet.addr(), "--identity"])
        .arg(dir.path())
        .args(["identity", "renew"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an agent renewed as admin: {err}");
    assert!(err.contains("requires the admin role"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("admin.crt")).unwrap(), before);
}
