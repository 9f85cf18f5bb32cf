//! The `fleet-lab` binary: up/env/exec/fault/status/down as an operator
//! uses them, and SIGTERM during `up` leaving nothing behind.

mod common;

use fleet_lab::{teardown::leftovers, Paths};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-lab");

fn lab(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Registered before any work: whatever happens, the lab goes down.
struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let _ = fleet_lab::down(&Paths::from_env());
    }
}

fn ready() -> bool {
    if std::env::var("FLEET_LAB").as_deref() == Ok("skip") {
        eprintln!("lab test skipped on purpose (FLEET_LAB=skip)");
        return false;
    }
    if let Err(e) = fleet_lab::preconditions() {
        panic!("lab test cannot run: {e:#}. Set FLEET_LAB=skip to skip lab tests on purpose.");
    }
    true
}

#[test]
fn cli_up_env_exec_fault_down() {
    if !ready() {
        return;
    }
    let _down = Down;
    let o = lab(&["up", "2"]);
    assert!(
        o.status.success(),
        "up: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let env = lab(&["env"]);
    assert!(env.status.success());
    let env = String::from_utf8(env.stdout).unwrap();
    let want = format!(
        "export FLEET_CONTROLLER=198.18.0.1:7443 FLEET_IDENTITY={} FLEET_CA_PIN=sha256:",
        Paths::from_env().admin_identity().display()
    );
    assert!(env.starts_with(&want), "{env}");
    let pin = env[want.len()..].strip_suffix('\n').expect("one line");
    assert!(
        pin.len() == 64 && pin.chars().all(|c| c.is_ascii_hexdigit()),
        "{env}"
    );
    // eval "$(fleet-lab env)"; fleetctl hosts
    let fleetctl = fleet_lab::fleet::binaries().unwrap().fleetctl;
    let script = format!(
        "eval \"$({BIN} env)\" && {} hosts --output json",
        fleetctl.display()
    );
    let o = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hosts: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(hosts.len(), 2);
    assert!(hosts.iter().all(|h| h["state"] == "up"), "{hosts:?}");

    // Exit codes pass through, plain and via a transient unit.
    assert_eq!(
        lab(&["exec", "host1", "--", "sh", "-c", "exit 9"])
            .status
            .code(),
        Some(9)
    );
    assert_eq!(
        lab(&["exec", "--unit", "host2", "--", "sh", "-c", "exit 4"])
            .status
            .code(),
        Some(4)
    );
    let o = lab(&["exec", "host2", "--", "hostname"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "host2");

    // power-cut keeps the host off until `start`.
    assert!(lab(&["fault", "power-cut", "host2"]).status.success());
    let st = String::from_utf8(lab(&["status"]).stdout).unwrap();
    assert!(
        st.lines()
            .any(|l| l.starts_with("host2") && l.ends_with("off")),
        "{st}"
    );
    assert!(lab(&["start", "host2"]).status.success());
    let st = String::from_utf8(lab(&["status"]).stdout).unwrap();
    assert!(
        st.lines()
            .any(|l| l.starts_with("host2") && l.contains("running")),
        "{st}"
    );
    assert!(
        !lab(&["fault", "melt", "host1"]).status.success(),
        "unknown fault accepted"
    );

    assert!(lab(&["down"]).status.success());
    assert!(leftovers(&Paths::from_env()).is_empty());
    assert!(
        !lab(&["env"]).status.success(),
        "env must fail with no lab up"
    );
    assert!(lab(&["down"]).status.success(), "down must be idempotent");
}

#[test]
fn sigterm_during_up_tears_down() {
    if !ready() {
        return;
    }
    let _down = Down;
    let mut child = Command::new(BIN)
        .args(["up", "10", "--no-fleet"])
        .spawn()
        .unwrap();
    // Mid-boot: the first host's nspawn runs (others are still being started).
    let paths = Paths::from_env();
    assert!(
        common::eventually(Duration::from_secs(60), || leftovers(&paths)
            .iter()
            .any(|l| l.starts_with("nspawn process"))),
        "up never started a host"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(130), "up must report the interruption");
    let left = leftovers(&paths);
    assert!(left.is_empty(), "SIGTERM during up left: {left:?}");
}
