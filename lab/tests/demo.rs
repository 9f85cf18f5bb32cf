//! README's first command ends in `fleet-lab demo`: it must boot the lab, deploy the sample
//! app to every host, roll a new release of it out live across them and leave it serving,
//! and `fleet-lab down` must remove it all.

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn demo_deploys_the_sample_app_and_down_removes_everything() {
    common::init();
    if std::env::var("FLEET_LAB").as_deref() == Ok("skip") {
        eprintln!("FLEET_LAB=skip: lab test skipped on purpose");
        return;
    }
    fleet_lab::preconditions().expect("lab preconditions");
    let lab = env!("CARGO_BIN_EXE_fleet-lab");
    let out = Command::new(lab).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Whatever happened, leave nothing behind.
    let down = Command::new(lab).arg("down").status().unwrap();
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(down.success());
    let at = |needle: &str| {
        stdout
            .find(needle)
            .unwrap_or_else(|| panic!("missing {needle:?} in the demo's output:\n{stdout}"))
    };
    let rollout = at("$ fleetctl rollout shop --version 1.1 --canary 1 --max-parallel 2");
    for n in 1..=3 {
        assert!(
            at(&format!("curl http://198.18.0.1{n}:8000/  ->  release=1.0")) < rollout,
            "host{n} did not serve 1.0 before the rollout:\n{stdout}"
        );
    }
    // The rollout's own live lines (plain, as stdout is a pipe here): every host switched
    // and turned healthy, the canary (host1) before the others, then the summary.
    let healthy = |n: u32| {
        stdout
            .lines()
            .position(|l| l.contains(&format!(" host{n} ")) && l.contains(" healthy "))
            .unwrap_or_else(|| panic!("no healthy line for host{n}:\n{stdout}"))
    };
    let switching = |n: u32| {
        stdout
            .lines()
            .position(|l| l.contains(&format!(" host{n} ")) && l.contains(" switching "))
            .unwrap_or_else(|| panic!("no switching line for host{n}:\n{stdout}"))
    };
    for n in 2..=3 {
        assert!(
            healthy(1) < switching(n),
            "host{n} switched before the canary was healthy:\n{stdout}"
        );
        assert!(switching(n) < healthy(n), "{stdout}");
    }
    let summary = at(" to 1.1 succeeded in ");
    assert!(
        stdout[summary..].contains("3 updated, 0 reverted"),
        "{stdout}"
    );
    for n in 1..=3 {
        assert!(
            at(&format!("curl http://198.18.0.1{n}:8000/  ->  release=1.1")) > summary,
            "host{n} does not serve 1.1 after the rollout:\n{stdout}"
        );
    }
    assert!(stdout.contains("fleet-lab down"), "{stdout}");
    assert!(
        common::eventually(Duration::from_secs(10), || fleet_lab::teardown::leftovers(
            &fleet_lab::Paths::from_env()
        )
        .is_empty()),
        "demo + down left something behind"
    );
}
