//! The fleet.fleet Ansible collection (ansible/): lint-clean under ansible-lint's
//! production profile with the pinned toolchain, and `site.yml` against bare lab hosts:
//! installs and enrolls them, changes nothing on a re-run, fails with the reason on a
//! wrong CA pin or a spent token, upgrades when the pinned version changes, and never
//! shows the token (`-vvv`, hosts' journals).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fleet_lab::{ansible, packages, Lab, LabOptions};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn collection_is_clean_under_the_production_profile() {
    common::init();
    let work = tempfile::tempdir().unwrap();
    let out = ansible::command("ansible-lint", work.path())
        .unwrap_or_else(|e| panic!("{e:#}"))
        // Never reach Galaxy: the collection has no dependencies to fetch.
        .args(["--offline", "--profile", "production", "--strict"])
        .current_dir(ansible::collection_dir())
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "ansible-lint failed:\n{t}");
    assert!(
        t.contains("Profile 'production' was required, and it passed"),
        "{t}"
    );

    let out = ansible::command("ansible-playbook", work.path())
        .unwrap()
        .args(["--syntax-check", "-i", "localhost,", "fleet.fleet.site"])
        .output()
        .unwrap();
    assert!(out.status.success(), "syntax check failed:\n{}", text(&out));
}

/// The lab's own inventory (`fleet-lab inventory`, as an operator would use it) plus a
/// file that makes its hosts the playbook's `fleet_agents`.
fn inventories(work: &Path) -> (PathBuf, PathBuf) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-lab"))
        .arg("inventory")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fleet-lab inventory: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lab = work.join("lab.yml");
    std::fs::write(&lab, &out.stdout).unwrap();
    let groups = ansible::agents_group(work).unwrap();
    (lab, groups)
}

fn vars(work: &Path, name: &str, token: &str, pin: Option<&str>) -> PathBuf {
    ansible::agent_vars(work, name, packages::DEB_VERSION, token, pin).unwrap()
}

fn run(work: &Path, inv: &(PathBuf, PathBuf), vars: &Path, limit: &str) -> (bool, String) {
    let out = ansible::site(
        work,
        &[&inv.0, &inv.1],
        &[vars],
        &["-vvv", "--limit", limit],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    (out.status.success(), text(&out))
}

fn token(lab: &Lab, uses: &str) -> String {
    let t = lab
        .fleetctl(&["token", "create", "--uses", uses])
        .unwrap()
        .trim()
        .to_owned();
    // What the leak checks grep for must be what tokens look like.
    assert!(t.starts_with(LEAK), "{t}");
    t
}

const LEAK: &str = "fleetjoin_";

fn journal_leaks(lab: &Lab, n: u32) -> String {
    lab.sh(
        n,
        "journalctl --no-pager -o cat | grep -c fleetjoin_ || true",
    )
    .unwrap()
    .trim()
    .to_owned()
}

#[test]
fn site_playbook_enrolls_bare_hosts_once_and_never_shows_the_token() {
    common::init();
    let Some(lab) = fleet_lab::test_lab(&LabOptions::no_agents(4)) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let inv = inventories(w);
    let t = token(&lab, "3");
    let v = vars(w, "vars.json", &t, None);

    let (ok, first) = run(w, &inv, &v, "host1,host2,host3");
    assert!(ok, "first run failed:\n{first}");
    assert!(!first.contains(LEAK), "a token leaked into -vvv output");
    let r = ansible::recap(&first);
    for h in ["host1", "host2", "host3"] {
        assert!(r[h].changed > 0 && r[h].failed == 0, "{h}: {:?}", r[h]);
    }
    lab.wait_fleet_state(&["host1", "host2", "host3"], "up", Duration::from_secs(60))
        .unwrap();
    for h in lab.fleet_hosts().unwrap() {
        assert_eq!(h.state, "up", "{h:?}");
    }
    let hosts: Vec<serde_json::Value> =
        serde_json::from_str(&lab.fleetctl(&["hosts", "--output", "json"]).unwrap()).unwrap();
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    for h in &hosts {
        assert_eq!(h["package_version"], packages::DEB_VERSION, "{h}");
    }

    let (ok, second) = run(w, &inv, &v, "host1,host2,host3");
    assert!(ok, "second run failed:\n{second}");
    let r = ansible::recap(&second);
    assert_eq!(r.len(), 3, "{second}");
    for (h, rec) in &r {
        assert_eq!(
            (rec.changed, rec.failed),
            (0, 0),
            "{h} changed on a re-run:\n{second}"
        );
    }
    assert!(!second.contains(LEAK));

    // A changed version upgrades: host1 to the newer package from the same repository,
    // once (a re-run at that version changes nothing), the other hosts left as they are.
    let b = lab.binaries().unwrap().clone();
    fleet_lab::agentpkg::next_package(&b).unwrap();
    let next = fleet_lab::agentpkg::NEXT_VERSION;
    let newer = ansible::agent_vars(w, "newer.json", next, &t, None).unwrap();
    let (ok, up) = run(w, &inv, &newer, "host1");
    assert!(ok, "upgrade run failed:\n{up}");
    assert!(ansible::recap(&up)["host1"].changed > 0, "{up}");
    let installed = |n: u32| {
        lab.sh(n, "dpkg-query -W -f '${Version}' fleet-agent")
            .unwrap()
    };
    assert_eq!(installed(1), next);
    assert_eq!(installed(2), packages::DEB_VERSION);
    assert!(
        common::eventually(Duration::from_secs(30), || {
            let hosts: Vec<serde_json::Value> =
                serde_json::from_str(&lab.fleetctl(&["hosts", "--output", "json"]).unwrap())
                    .unwrap();
            hosts
                .iter()
                .any(|h| h["name"] == "host1" && h["state"] == "up" && h["package_version"] == next)
        }),
        "host1 did not come back up with fleet-agent {next}"
    );
    let (ok, again) = run(w, &inv, &newer, "host1");
    assert!(ok, "{again}");
    let r = ansible::recap(&again);
    assert_eq!((r["host1"].changed, r["host1"].failed), (0, 0), "{again}");

    // host4 is bare. A wrong pin stops the join before the (valid) token is sent.
    let t2 = token(&lab, "1");
    let wrong = vars(
        w,
        "wrong-pin.json",
        &t2,
        Some(&format!("sha256:{}", "0".repeat(64))),
    );
    let (ok, out) = run(w, &inv, &wrong, "host4");
    assert!(!ok, "a wrong pin must fail:\n{out}");
    assert!(
        out.contains("fleet-agent join failed on host4") && out.contains("does not match --ca-pin"),
        "{out}"
    );
    assert!(
        !out.contains(LEAK),
        "token in the output of a failed run:\n{out}"
    );
    // The first token is spent (3 uses, 3 hosts).
    let spent = vars(w, "spent.json", &t, None);
    let (ok, out) = run(w, &inv, &spent, "host4");
    assert!(!ok, "a spent token must fail:\n{out}");
    assert!(
        out.contains("fleet-agent join failed on host4")
            && out.contains("join token refused by the controller"),
        "{out}"
    );
    assert!(
        !out.contains(LEAK),
        "token in the output of a failed run:\n{out}"
    );
    assert!(lab.fleet_hosts().unwrap().iter().all(|h| h.name != "host4"));

    for n in 1..=4 {
        assert_eq!(journal_leaks(&lab, n), "0", "token in host{n}'s journal");
    }
}

#[test]
fn site_playbook_sets_up_a_controller_and_its_agents_from_the_repository() {
    common::init();
    let Some(lab) = fleet_lab::test_lab(&LabOptions::no_agents(3)) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let inv = ansible::lab_inventory(&lab, w).unwrap();
    // host1 runs the controller (from the lab's repository), host2 and host3 its agents.
    let groups = w.join("groups.yml");
    std::fs::write(
        &groups,
        "all:\n  children:\n    fleet_controllers:\n      hosts:\n        host1:\n    \
         fleet_agents:\n      hosts:\n        host2:\n        host3:\n",
    )
    .unwrap();
    let vars = w.join("vars.json");
    let write_vars = |token: &str| {
        let v = serde_json::json!({
            "controller_apt_repo_url": "{{ fleet_repo_url }}",
            "controller_apt_keyring_src": "{{ fleet_repo_keyring }}",
            "controller_package_version": packages::DEB_VERSION,
            "agent_package_version": packages::DEB_VERSION,
            "agent_apt_repo_url": "{{ fleet_repo_url }}",
            "agent_apt_keyring_src": "{{ fleet_repo_keyring }}",
            "agent_join_token": token,
        });
        std::fs::write(&vars, v.to_string()).unwrap();
    };
    let play = |limit: &str| {
        let out = ansible::site(w, &[&inv, &groups], &[&vars], &["--limit", limit]).unwrap();
        (out.status.success(), text(&out))
    };

    write_vars("");
    let (ok, out) = play("host1");
    assert!(ok, "controller play failed:\n{out}");
    let pin = lab
        .sh(1, "cat /etc/fleet/ca.pin")
        .unwrap()
        .trim()
        .to_owned();
    assert!(pin.starts_with("sha256:") && pin.len() == 71, "{pin}");
    let active = lab.sh(1, "systemctl is-active fleet-controller").unwrap();
    assert_eq!(active.trim(), "active");
    let token = lab
        .sh(
            1,
            "fleetctl --controller 127.0.0.1:7443 --identity /var/lib/fleet-controller/admin \
             token create --uses 2",
        )
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.starts_with(LEAK), "{token}");

    // Agents take the controller's address and CA pin from the controller play.
    write_vars(&token);
    let (ok, out) = play("all");
    assert!(ok, "site.yml failed:\n{out}");
    let ctl = "fleetctl --controller 127.0.0.1:7443 --identity /var/lib/fleet-controller/admin";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let hosts = lab.sh(1, &format!("{ctl} hosts --output json")).unwrap();
        let hosts: Vec<serde_json::Value> = serde_json::from_str(&hosts).unwrap();
        if hosts.len() == 2 && hosts.iter().all(|h| h["state"] == "up") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agents not up on the Ansible-made controller: {hosts:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (ok, again) = play("all");
    assert!(ok, "re-run failed:\n{again}");
    for (h, r) in ansible::recap(&again) {
        assert_eq!(
            (r.changed, r.failed),
            (0, 0),
            "{h} changed on a re-run:\n{again}"
        );
    }
    // init ran once: the CA (and so the pin) is the same after the re-run.
    assert_eq!(lab.sh(1, "cat /etc/fleet/ca.pin").unwrap().trim(), pin);
}
