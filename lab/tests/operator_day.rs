//! The operator's day on real hosts (issue 18): a host cordoned while a rollout runs is
//! left as it is when its batch comes; `fleetctl events -f` shows the rollout and a crash
//! as they happen; a backup taken online restores into a wiped controller that every agent
//! reconnects to without re-enrolling, with its rollout history and audit log intact.

mod common;

use common::{ctl, wait};

use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_lab::release;
use fleet_lab::{Lab, LabOptions, Paths};
use serde_json::Value;

const PORT: u16 = 8000;
const HOSTS: [&str; 3] = ["host1", "host2", "host3"];

fn rollout_status(lab: &Lab) -> Value {
    let v: Value = serde_json::from_str(&ctl(
        lab,
        &["rollout", "status", "shop", "--output", "json"],
    ))
    .unwrap();
    v["rollout"].clone()
}

fn host_step(rollout: &Value, host: &str) -> Value {
    rollout["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("no hosts in {rollout}"))
        .iter()
        .find(|h| h["host"] == host)
        .cloned()
        .unwrap_or_else(|| panic!("{host} not in {rollout}"))
}

fn release_on(lab: &Lab, host: &str) -> String {
    let v: Vec<Value> =
        serde_json::from_str(&ctl(lab, &["status", "shop", "--output", "json"])).unwrap();
    v.iter()
        .find(|e| e["host"] == host)
        .and_then(|e| e["release"].as_str())
        .unwrap_or("")
        .to_owned()
}

fn fleetctl(lab: &Lab) -> Command {
    let mut c = Command::new(lab.binaries().unwrap().fleetctl.clone());
    c.args(["--controller", "198.18.0.1:7443", "--identity"])
        .arg(Paths::from_env().admin_identity());
    c
}

#[test]
fn cordon_mid_rollout_live_events_and_backup_restore() {
    common::init();
    let mut opts = LabOptions::fleet(3);
    opts.agent.heartbeat = Some("1s".into());
    let Some(mut lab) = fleet_lab::test_lab(&opts) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        release::write(work.path(), name, bytes)
            .unwrap()
            .display()
            .to_string()
    };
    let spec = release::spec("shop", "gunicorn", PORT, "");
    ctl(&lab, &["app", "apply", &file("shop.toml", spec.as_bytes())]);
    for v in ["1.0", "2.0"] {
        let tar = file(
            &format!("shop-{v}.tar.gz"),
            &release::sample("wsgi", v, &[]).unwrap(),
        );
        ctl(&lab, &["release", "upload", "shop", &tar, "--version", v]);
    }
    ctl(&lab, &["deploy", "shop", "--version", "1.0"]);

    // --- the event stream, followed from before the rollout (our child: ended by PID)
    let events_path = work.path().join("events.jsonl");
    let mut events = fleetctl(&lab)
        .args(["--output", "json", "events", "-f", "-n", "1"])
        .stdout(std::fs::File::create(&events_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = |kind: &str, needle: &str| -> bool {
        std::fs::read_to_string(&events_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| e["kind"] == kind && e["message"].as_str().unwrap_or("").contains(needle))
    };

    // --- one host at a time, each held healthy for 4 s: host3 is cordoned meanwhile
    let rollout = {
        let mut c = fleetctl(&lab);
        c.args([
            "rollout",
            "shop",
            "--version",
            "2.0",
            "--max-parallel",
            "1",
            "--min-healthy",
            "4s",
            "--healthy-deadline",
            "30s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        std::thread::spawn(move || c.output().unwrap())
    };
    wait(
        "the rollout to switch host1",
        Duration::from_secs(60),
        || {
            lab.fleetctl(&["rollout", "status", "shop", "--output", "json"])
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| {
                    v["rollout"]["hosts"].as_array().is_some_and(|hs| {
                        hs.iter().any(|h| {
                            h["host"] == "host1"
                                && h["phase"] != "pending"
                                && h["phase"] != "staged"
                        })
                    })
                })
        },
    );
    ctl(&lab, &["host", "cordon", "host3", "--reason", "disk swap"]);
    let out = rollout.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rollout: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = rollout_status(&lab);
    assert_eq!(r["state"], "succeeded", "{r}");
    let h3 = host_step(&r, "host3");
    assert_eq!(h3["phase"], "skipped", "{h3}");
    assert!(
        h3["message"]
            .as_str()
            .unwrap()
            .contains("cordoned (disk swap) during the rollout"),
        "{h3}"
    );
    for h in ["host1", "host2"] {
        assert_eq!(host_step(&r, h)["phase"], "healthy", "{r}");
        assert_eq!(release_on(&lab, h), "2.0");
    }
    assert_eq!(
        release_on(&lab, "host3"),
        "1.0",
        "a cordoned host was switched"
    );
    let rollout_id = r["id"].as_str().unwrap().to_owned();

    // --- a crash, seen live
    let pid = lab
        .sh(
            2,
            "systemctl show -p MainPID --value fleet-app-shop.service",
        )
        .unwrap();
    assert_eq!(lab.exec(2, &["kill", "-9", pid.trim()]).unwrap(), 0);
    wait(
        "the rollout and the crash in the event stream",
        Duration::from_secs(20),
        || seen("rollout", "host1") && seen("app.crash", "") && seen("audit", "host.cordon"),
    );
    let _ = events.kill();
    let _ = events.wait();
    let lines = std::fs::read_to_string(&events_path).unwrap();
    let crash: Value = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["kind"] == "app.crash")
        .unwrap();
    assert_eq!(crash["host"], "host2", "{crash}");
    assert_eq!(crash["app"], "shop", "{crash}");

    // --- backup online, wipe the controller, restore, and every agent comes back as is
    let audit_before = ctl(&lab, &["audit"]);
    let archive = work.path().join("backup.tar");
    let data = Paths::from_env().controller_data();
    let backup = Command::new(lab.binaries().unwrap().controller.clone())
        .args(["backup", "--controller", "198.18.0.1:7443", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        backup.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&backup.stderr)
    );
    let controller = lab.binaries().unwrap().controller.clone();
    let wiped = work.path().join("wiped");
    lab.restart_controller_with(|| {
        std::fs::rename(&data, &wiped)?;
        std::fs::remove_dir_all(&wiped)?;
        let out = Command::new(&controller)
            .arg("restore")
            .arg(&archive)
            .arg("--data-dir")
            .arg(&data)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .unwrap();
    lab.wait_fleet_state(&HOSTS, "up", Duration::from_secs(60))
        .unwrap();
    let r = rollout_status(&lab);
    assert_eq!(r["id"], rollout_id.as_str(), "{r}");
    assert_eq!(r["state"], "succeeded", "{r}");
    let audit_after = ctl(&lab, &["audit"]);
    for line in audit_before
        .lines()
        .filter(|l| l.contains("host.cordon") || l.contains("rollout"))
    {
        assert!(
            audit_after.contains(line.trim()),
            "lost from the audit: {line}\n{audit_after}"
        );
    }
    // Nobody re-enrolled: no join after the restore, and the apps were never touched.
    assert_eq!(
        audit_after.matches("host.join").count(),
        audit_before.matches("host.join").count(),
        "a host joined again after the restore"
    );
    for h in ["host1", "host2"] {
        assert_eq!(release_on(&lab, h), "2.0");
    }
    assert_eq!(release_on(&lab, "host3"), "1.0");
}
