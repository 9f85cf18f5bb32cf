//! `fleetctl agent upgrade` on real hosts (issue 12): three hosts run fleet-agent from its
//! package and serve an app; the controller rolls a newer fleet-agent package across them
//! in batches. The agents come back with the new package version, the apps keep their
//! main PIDs and keep serving; refusals change nothing.

mod common;

use common::ctl;

use std::collections::BTreeMap;

use fleet_lab::agentpkg::{self, NEXT_VERSION};
use fleet_lab::{packages, release, Lab, LabOptions, Paths};
use serde_json::Value;

fn ctl_err(lab: &Lab, args: &[&str]) -> String {
    match lab.fleetctl(args) {
        Ok(out) => panic!("fleetctl {args:?} succeeded: {out}"),
        Err(e) => format!("{e:#}"),
    }
}

fn package_versions(lab: &Lab) -> BTreeMap<String, (String, String)> {
    let hosts: Vec<Value> =
        serde_json::from_str(&ctl(lab, &["hosts", "--output", "json"])).unwrap();
    hosts
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_owned(),
                (
                    h["state"].as_str().unwrap().to_owned(),
                    h["package_version"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

fn app_pids(lab: &Lab) -> BTreeMap<String, u64> {
    let st: Vec<Value> =
        serde_json::from_str(&ctl(lab, &["status", "shop", "--output", "json"])).unwrap();
    st.iter()
        .map(|e| {
            let pid = e["main_pid"].as_u64().unwrap_or(0);
            assert!(pid > 1, "{e}");
            (e["host"].as_str().unwrap().to_owned(), pid)
        })
        .collect()
}

#[test]
fn agents_upgrade_in_batches_and_apps_keep_running() {
    common::init();
    let Some(lab) = fleet_lab::test_lab(&LabOptions::no_agents(3)) else {
        return;
    };
    let next = agentpkg::next_package(lab.binaries().unwrap()).unwrap();
    agentpkg::install_and_enroll(&lab, &[1, 2, 3], packages::DEB_VERSION).unwrap();
    for (h, v) in package_versions(&lab) {
        assert_eq!(v, ("up".into(), packages::DEB_VERSION.into()), "{h}");
    }

    let work = tempfile::tempdir().unwrap();
    let spec = release::spec("shop", "gunicorn", 8000, "");
    let spec_path = release::write(work.path(), "shop.toml", spec.as_bytes()).unwrap();
    ctl(&lab, &["app", "apply", spec_path.to_str().unwrap()]);
    let tar = release::sample("wsgi", "1.0", &[]).unwrap();
    let tar_path = release::write(work.path(), "shop.tar.gz", &tar).unwrap();
    ctl(
        &lab,
        &[
            "release",
            "upload",
            "shop",
            tar_path.to_str().unwrap(),
            "--version",
            "1.0",
        ],
    );
    ctl(&lab, &["deploy", "shop", "--version", "1.0"]);
    let before = app_pids(&lab);
    assert_eq!(before.len(), 3, "{before:?}");

    // Refused before anything changes: a version the controller does not hold.
    let err = ctl_err(&lab, &["agent", "upgrade", "--version", "9.9.9-1"]);
    assert!(
        err.contains("holds no fleet-agent package 9.9.9-1"),
        "{err}"
    );

    // The version comes from the package's control file.
    let up = ctl(
        &lab,
        &[
            "agent",
            "upload",
            next.to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    let up: Value = serde_json::from_str(&up).unwrap();
    assert_eq!(up["version"], NEXT_VERSION, "{up}");
    let sha = up["sha256"].as_str().unwrap().to_owned();

    // A controller copy that no longer matches its sha256 is refused by the agent, which
    // installs nothing; the upgrade halts at its first batch.
    let blob = Paths::from_env().controller_data().join("blobs").join(&sha);
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    let err = ctl_err(
        &lab,
        &[
            "agent",
            "upgrade",
            "--version",
            NEXT_VERSION,
            "--max-parallel",
            "2",
        ],
    );
    assert!(
        err.contains("refusing to install fleet-agent") && err.contains("halted at batch 1"),
        "{err}"
    );
    for (h, v) in package_versions(&lab) {
        assert_eq!(v, ("up".into(), packages::DEB_VERSION.into()), "{h}");
    }
    std::fs::write(&blob, &good).unwrap();

    let out = ctl(
        &lab,
        &[
            "agent",
            "upgrade",
            "--version",
            NEXT_VERSION,
            "--max-parallel",
            "2",
            "--deadline",
            "90s",
        ],
    );
    assert!(
        out.contains("batch 1: host1,host2") && out.contains("batch 2: host3"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "finished: fleet-agent {NEXT_VERSION} on 3 host(s)"
        )),
        "{out}"
    );
    for (h, v) in package_versions(&lab) {
        assert_eq!(v, ("up".into(), NEXT_VERSION.into()), "{h}");
    }
    for n in 1..=3 {
        let v = lab
            .sh(n, "dpkg-query -W -f '${Version} ${Status}' fleet-agent")
            .unwrap();
        assert_eq!(
            v.trim(),
            format!("{NEXT_VERSION} install ok installed"),
            "host{n}"
        );
        let log = lab
            .sh(n, "journalctl --no-pager -o cat -u fleet-agent-upgrade")
            .unwrap();
        assert!(log.contains("Setting up fleet-agent"), "host{n}: {log}");
    }
    assert_eq!(
        app_pids(&lab),
        before,
        "apps were restarted by the agent upgrade"
    );
    for n in 1..=3 {
        let body = lab.sh(n, "curl -fsS http://127.0.0.1:8000/").unwrap();
        assert!(body.contains("1.0"), "host{n}: {body}");
    }
    let audit = ctl(&lab, &["audit"]);
    for action in [
        "agent.upload",
        "agent.upgrade",
        "agent.upgrade.halted",
        "agent.upgrade.finished",
    ] {
        assert!(audit.contains(action), "{action} missing:\n{audit}");
    }
    // Nothing to do the second time.
    let again = ctl(&lab, &["agent", "upgrade", "--version", NEXT_VERSION]);
    assert!(
        again.contains("finished: fleet-agent") && again.contains("on 0 host(s)"),
        "{again}"
    );
}
