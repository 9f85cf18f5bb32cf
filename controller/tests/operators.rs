//! More than one operator, on loopback: identities added with a role, each role refused
//! what it may not do (the refusal names the role it lacks), a key made by its owner,
//! revocation at the next call, and the roles surviving a restart.

mod support;

use std::path::Path;
use std::process::Output;

use support::{bin, Fleet};

fn as_op(fleet: &Fleet, identity: &Path, args: &[&str]) -> Output {
    std::process::Command::new(bin("fleetctl"))
        .args(["--controller", &fleet.addr(), "--identity"])
        .arg(identity)
        .args(args)
        .env_remove("FLEET_CONTROLLER")
        .env_remove("FLEET_IDENTITY")
        .output()
        .unwrap()
}

fn refused(out: &Output, says: &str) {
    assert!(!out.status.success(), "allowed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(says), "{err}");
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SPEC: &str = "name = \"shop\"\nserver = \"gunicorn\"\nentry = \"app:application\"\nlisten = \"0.0.0.0:8000\"\nhealth = { path = \"/health\", timeout = \"2s\" }\n";

#[test]
fn each_role_may_do_its_part_and_a_revoked_operator_nothing() {
    let mut fleet = Fleet::start(&[]);
    let dir = fleet.dir.path().to_owned();
    let spec = dir.join("shop.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let spec = spec.to_str().unwrap();
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    fleet.ok(&[
        "admin",
        "add",
        "alice",
        "--role",
        "viewer",
        "--out",
        alice.to_str().unwrap(),
    ]);
    fleet.ok(&[
        "admin",
        "add",
        "bob",
        "--role",
        "deployer",
        "--out",
        bob.to_str().unwrap(),
    ]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(alice.join("admin.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Carol makes her key herself; only the request travels.
    let carol = dir.join("carol");
    ok(&as_op(
        &fleet,
        &carol,
        &["admin", "request", "--out", carol.to_str().unwrap()],
    ));
    let issued = dir.join("carol-issued");
    fleet.ok(&[
        "admin",
        "add",
        "carol",
        "--role",
        "admin",
        "--csr",
        carol.join("admin.csr").to_str().unwrap(),
        "--out",
        issued.to_str().unwrap(),
    ]);
    assert!(
        !issued.join("admin.key").exists(),
        "a key was made for carol"
    );
    for f in ["admin.crt", "ca.crt"] {
        std::fs::copy(issued.join(f), carol.join(f)).unwrap();
    }

    // viewer: reads only.
    ok(&as_op(&fleet, &alice, &["hosts"]));
    ok(&as_op(&fleet, &alice, &["admin", "list"]));
    refused(
        &as_op(&fleet, &alice, &["app", "apply", spec]),
        "is a viewer: /fleet.v1.Admin/ApplyApp needs the deployer role",
    );
    // deployer: apps, not tokens.
    ok(&as_op(&fleet, &bob, &["app", "apply", spec]));
    refused(
        &as_op(&fleet, &bob, &["token", "create"]),
        "needs the admin role",
    );
    refused(
        &as_op(
            &fleet,
            &bob,
            &[
                "admin",
                "add",
                "eve",
                "--role",
                "admin",
                "--out",
                dir.join("eve").to_str().unwrap(),
            ],
        ),
        "needs the admin role",
    );
    // admin: everything.
    ok(&as_op(&fleet, &carol, &["token", "create"]));

    let list: serde_json::Value =
        serde_json::from_str(&fleet.ok(&["admin", "list", "--output", "json"])).unwrap();
    let roles: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("admin", "admin"),
            ("alice", "viewer"),
            ("bob", "deployer"),
            ("carol", "admin")
        ]
        .map(|(n, r)| (n.to_owned(), r.to_owned()))
    );

    // Bad input changes nothing.
    let out = fleet.fleetctl(&[
        "admin",
        "add",
        "bob",
        "--role",
        "viewer",
        "--out",
        dir.join("bob2").to_str().unwrap(),
    ]);
    refused(&out, "operator bob exists");
    let out = fleet.fleetctl(&[
        "admin",
        "add",
        "Bad/Name",
        "--role",
        "viewer",
        "--out",
        dir.join("x").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let out = fleet.fleetctl(&[
        "admin",
        "add",
        "dave",
        "--role",
        "root",
        "--out",
        dir.join("y").to_str().unwrap(),
    ]);
    refused(&out, "viewer, deployer, admin");

    // Revocation: at the next call.
    fleet.ok(&["admin", "revoke", "alice"]);
    refused(&as_op(&fleet, &alice, &["hosts"]), "revoked");
    fleet.ok(&["admin", "revoke", "carol"]);
    refused(
        &fleet.fleetctl(&["admin", "revoke", "admin"]),
        "last operator with the admin role",
    );

    // Roles are state: a restart keeps them.
    fleet.restart_controller();
    refused(
        &as_op(&fleet, &bob, &["token", "create"]),
        "needs the admin role",
    );
    ok(&as_op(&fleet, &bob, &["status"]));
    refused(&as_op(&fleet, &alice, &["hosts"]), "revoked");
    let audit = fleet.ok(&["audit"]);
    assert_eq!(audit.matches("admin.add").count(), 3, "{audit}");
    assert_eq!(audit.matches("admin.revoke").count(), 2, "{audit}");
}
