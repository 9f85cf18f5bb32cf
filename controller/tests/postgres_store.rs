//! The controller on PostgreSQL (`[store] url`) on loopback, with real agents: a fleet
//! made by `init --config` keeps its hosts, tokens and audit log in the database across a
//! restart, with no state.redb at all; and `migrate` moves a redb fleet there, after
//! which its agent comes back on the certificate it holds, without re-enrolling; a backup
//! of a PostgreSQL fleet restored and migrated into a new database brings it back.

mod support;

use std::process::Command;
use std::time::Duration;

use support::pg::Schema;
use support::{bin, Fleet};

fn controller(args: &[&str]) -> std::process::Output {
    Command::new(bin("fleet-controller"))
        .args(args)
        .env_remove("FLEET_DATA_DIR")
        .output()
        .unwrap()
}

fn audit_actions(fleet: &Fleet) -> Vec<String> {
    let out = fleet.ok(&["audit", "--output", "json"]);
    let entries: serde_json::Value = serde_json::from_str(&out).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_fleet_on_postgres_keeps_everything_in_the_database_across_a_restart() {
    let Some(schema) = Schema::new() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let config = schema.config(scratch.path(), "");
    let config = config.to_str().unwrap();
    let mut fleet = Fleet::init(&["--config", config], &["--config", config]);
    fleet.run_controller();
    assert!(
        !fleet.data_dir().join("state.redb").exists(),
        "a PostgreSQL fleet has no redb file"
    );
    let log = fleet.controller_log();
    assert!(
        log.lines()
            .any(|l| l.contains("store opened") && l.contains("postgres")),
        "{log}"
    );
    let state = fleet.join("web-1", &fleet.token(&[]));
    let _agent = fleet.run_agent("web-1", &state);
    fleet.wait_state("web-1", "up", Duration::from_secs(15));

    fleet.restart_controller();
    fleet.wait_state("web-1", "up", Duration::from_secs(20));
    let hosts = fleet.hosts();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0]["name"], "web-1");
    let actions = audit_actions(&fleet);
    for want in ["fleet.init", "token.create", "host.join"] {
        assert!(
            actions.iter().any(|a| a == want),
            "{want} missing: {actions:?}"
        );
    }
    // A backup of it is a redb snapshot of the database, which restores as a redb fleet.
    let archive = scratch.path().join("backup.tar");
    let data = fleet.data_dir();
    let out = controller(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--controller",
        &fleet.addr(),
        "--out",
        archive.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = scratch.path().join("restored");
    let out = controller(&[
        "restore",
        archive.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(restored.join("state.redb").exists());
    // The rows are in the database, where another replica would read them.
    schema.sql("DO $$ BEGIN IF (SELECT count(*) FROM fleet_kv WHERE tbl = 'hosts') <> 1 THEN RAISE 'hosts not in fleet_kv'; END IF; END $$");

    // The database is lost: the restored directory goes into a new one with `migrate`,
    // and the fleet comes back there, its agent on the certificate it holds.
    let before = audit_actions(&fleet);
    let mut c = fleet.controller.take().unwrap();
    c.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = c.child.wait();
    drop(schema);
    let fresh = Schema::new().unwrap();
    let fresh_config = fresh.config(&restored, "");
    let out = controller(&[
        "migrate",
        "--data-dir",
        restored.to_str().unwrap(),
        "--config",
        fresh_config.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&data, fleet.dir.path().join("lost")).unwrap();
    std::fs::rename(&restored, &data).unwrap();
    fleet.extra_args = vec![
        "--config".into(),
        data.join("controller-pg.toml").to_str().unwrap().to_owned(),
    ];
    fleet.run_controller();
    fleet.wait_state("web-1", "up", Duration::from_secs(20));
    let after = audit_actions(&fleet);
    assert_eq!(after, before, "the audit log up to the backup came back");
}

#[test]
fn init_over_a_database_that_holds_a_fleet_writes_nothing() {
    let Some(schema) = Schema::new() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let config = schema.config(scratch.path(), "");
    let config = config.to_str().unwrap();
    let _first = Fleet::init(&["--config", config], &[]);
    let second = scratch.path().join("second");
    let out = controller(&[
        "init",
        "--data-dir",
        second.to_str().unwrap(),
        "--config",
        config,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds a fleet"), "{err}");
    assert!(!second.exists(), "init wrote files before refusing");
}

#[test]
fn migrate_moves_a_redb_fleet_to_postgres_and_its_agent_comes_back_without_rejoining() {
    let Some(schema) = Schema::new() else { return };
    let mut fleet = Fleet::start(&[]);
    let state = fleet.join("web-1", &fleet.token(&[]));
    let _agent = fleet.run_agent("web-1", &state);
    fleet.wait_state("web-1", "up", Duration::from_secs(15));
    let before = audit_actions(&fleet);

    let data = fleet.data_dir();
    let config = schema.config(fleet.dir.path(), "");
    let config = config.to_str().unwrap();
    // A running controller holds its file: migrate says to stop it and changes nothing.
    let live = controller(&[
        "migrate",
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        config,
    ]);
    assert!(!live.status.success());
    let err = String::from_utf8_lossy(&live.stderr);
    assert!(err.contains("stop it first"), "{err}");
    assert!(data.join("state.redb").exists());

    let mut c = fleet.controller.take().unwrap();
    c.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = c.child.wait();
    let out = controller(&[
        "migrate",
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        config,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("migrated"), "{said}");
    assert!(
        !data.join("state.redb").exists(),
        "the old file is moved aside"
    );
    // Once is enough: the database now holds the fleet.
    let again = controller(&[
        "migrate",
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        config,
    ]);
    assert!(!again.status.success());

    fleet
        .extra_args
        .extend(["--config".to_owned(), config.to_owned()]);
    fleet.run_controller();
    fleet.wait_state("web-1", "up", Duration::from_secs(20));
    let after = audit_actions(&fleet);
    assert_eq!(after, before, "the audit log moved whole");
}
