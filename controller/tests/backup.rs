//! Controller backup and restore on loopback, with a real agent: back up online, wipe the
//! data dir, restore, and the agent comes back on the certificate it holds, with the
//! apps, secrets and audit history still there. Bad archives and live dirs change nothing.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use support::{bin, Fleet};

const SPEC: &str = r#"
name = "shop"
server = "gunicorn"
entry = "app:application"
listen = "0.0.0.0:8000"
health = { path = "/health", timeout = "2s" }
secrets = ["DATABASE_URL"]
"#;

fn controller(args: &[&str]) -> std::process::Output {
    Command::new(bin("fleet-controller"))
        .args(args)
        .env_remove("FLEET_DATA_DIR")
        .output()
        .unwrap()
}

#[test]
fn backup_wipe_restore_and_every_agent_comes_back_as_it_was() {
    let mut fleet = Fleet::start(&[]);
    let dir = fleet.dir.path().to_owned();
    let state = fleet.join("web-1", &fleet.token(&[]));
    let _agent = fleet.run_agent("web-1", &state);
    fleet.wait_state("web-1", "up", Duration::from_secs(15));
    fleet.app_with_release(SPEC, "shop", "1.0", b"print(1)");
    assert!(fleet
        .secret_set("shop", "DATABASE_URL", "hunter2-db")
        .status
        .success());

    let data = fleet.data_dir();
    let archive = dir.join("backup.tar");
    let out = controller(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--controller",
        &fleet.addr(),
        "--out",
        archive.to_str().unwrap(),
        "--with-blobs",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = controller(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--controller",
        &fleet.addr(),
        "--out",
        archive.to_str().unwrap(),
    ]);
    assert!(!again.status.success(), "overwrote an archive");
    // The controller kept no working files behind.
    let leftovers: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".backup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A live (non-empty) data dir is never restored over.
    let out = controller(&[
        "restore",
        archive.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    // Wipe the controller, restore into the same place, run it again.
    let mut c = fleet.controller.take().unwrap();
    c.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = c.child.wait();
    std::fs::rename(&data, dir.join("wiped")).unwrap();
    let out = controller(&[
        "restore",
        archive.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 release blobs restored"));
    let key_mode = std::fs::metadata(data.join("ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    fleet.run_controller();
    fleet.wait_state("web-1", "up", Duration::from_secs(30));

    assert!(fleet.ok(&["app", "list"]).contains("shop"));
    assert!(fleet
        .ok(&["secret", "list", "shop"])
        .contains("DATABASE_URL"));
    assert!(fleet.ok(&["release", "list", "shop"]).contains("1.0"));
    let audit = fleet.ok(&["audit"]);
    for action in [
        "app.create",
        "release.upload",
        "secret.set",
        "controller.backup",
    ] {
        assert!(audit.contains(action), "{action} missing:\n{audit}");
    }
    assert_eq!(
        audit.matches("host.join").count(),
        1,
        "the agent re-enrolled:\n{audit}"
    );
    for text in [audit, fleet.controller_log()] {
        assert!(!text.contains("hunter2"), "secret leaked:\n{text}");
    }
}

#[test]
fn foreign_and_corrupt_archives_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("new");
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar at all").unwrap();
    let evil = dir.path().join("evil.tar");
    {
        let mut tar = tar::Builder::new(std::fs::File::create(&evil).unwrap());
        let manifest = br#"{"format":1,"controller_version":"x","created_at_ms":0,"blobs":[]}"#;
        let mut h = tar::Header::new_gnu();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        tar.append_data(&mut h, "fleet-backup.json", &manifest[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o600);
        tar.append_data(&mut h, "ca.crt/../../escape", &b"x"[..])
            .ok();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o600);
        h.set_cksum();
        tar.append_data(&mut h, "other.txt", &b"x"[..]).unwrap();
        tar.finish().unwrap();
    }
    for (file, says) in [(&junk, "not a fleet controller backup"), (&evil, "archive")] {
        let out = controller(&[
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{} restored", file.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says) || err.contains("tar"), "{err}");
        assert!(
            !target.exists(),
            "a refused restore left {}",
            target.display()
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 2, "working files left behind: {left:?}");
    assert!(!dir.path().join("escape").exists());
}
