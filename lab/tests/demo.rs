//! README's first command ends in `fleet-lab demo`: it must boot the lab, deploy the sample
//! app to every host and leave it serving, and `fleet-lab down` must remove it all.

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
    for n in 1..=3 {
        assert!(
            stdout.contains(&format!("curl http://198.18.0.1{n}:8000/  ->  release=1.0")),
            "host{n} did not serve the sample app:\n{stdout}"
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
