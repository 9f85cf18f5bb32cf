//! End to end with the real binaries: the controller on the outer machine,
//! an enrolled fleet-agent running as a systemd service on every host.
//! Heartbeat 1 s and WatchdogSec=3s come from lab drop-ins.

mod common;

use fleet_lab::{Fault, Lab, LabOptions};
use std::time::{Duration, Instant};

const HEARTBEAT: Duration = Duration::from_secs(1);

fn opts() -> LabOptions {
    let mut o = LabOptions::fleet(3);
    o.agent.heartbeat = Some("1s".into());
    o.agent.watchdog_sec = Some("3s".into());
    o
}

fn show(lab: &Lab, n: u32, prop: &str) -> String {
    lab.sh(
        n,
        &format!("systemctl show -p {prop} --value fleet-agent.service"),
    )
    .unwrap()
    .trim()
    .to_string()
}

fn nrestarts(lab: &Lab, n: u32) -> u32 {
    show(lab, n, "NRestarts").parse().unwrap()
}

/// Waits until the agent unit is active again with a MainPID other than `old`.
fn wait_new_main_pid(lab: &Lab, n: u32, old: &str, timeout: Duration) -> String {
    let mut last = String::new();
    let ok = common::eventually(timeout, || {
        last = show(lab, n, "MainPID");
        last != old && last != "0" && show(lab, n, "ActiveState") == "active"
    });
    assert!(ok, "host{n}: agent not restarted (MainPID {old} -> {last})");
    last
}

fn all_up(lab: &Lab, timeout: Duration) {
    lab.wait_fleet_state(&["host1", "host2", "host3"], "up", timeout)
        .unwrap();
}

#[test]
fn agents_enroll_and_systemd_restarts_killed_or_hung_agents() {
    common::init();
    let Some(lab) = fleet_lab::test_lab(&opts()) else {
        return;
    };
    // `up` returned only after all three were up; check the listing itself.
    let hosts = lab.fleet_hosts().unwrap();
    for name in ["host1", "host2", "host3"] {
        let h = hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("{name} missing: {hosts:?}"));
        assert_eq!(h.state, "up", "{h:?}");
    }
    // The shipped unit (plus the lab drop-in) verifies cleanly on a real
    // host: `systemd-analyze verify` exits 0 even on warnings, so any output
    // at all is a failure (docs/host.md). `--man=no`: lab hosts have no man-db to
    // resolve the unit's Documentation= pages; lab/tests/packages.rs checks the package
    // ships them.
    let o = lab
        .exec_output(
            1,
            &[
                "systemd-analyze",
                "verify",
                "--man=no",
                "fleet-agent.service",
            ],
        )
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success() && said.is_empty(), "verify: {said}");
    for n in 1..=3 {
        assert_eq!(show(&lab, n, "ActiveState"), "active");
        assert_eq!(show(&lab, n, "Type"), "notify");
    }

    // kill -9: systemd restarts it (Restart=always) and it reconnects.
    let before = nrestarts(&lab, 1);
    let pid = show(&lab, 1, "MainPID");
    lab.sh(1, &format!("kill -9 {pid}")).unwrap();
    wait_new_main_pid(&lab, 1, &pid, Duration::from_secs(15));
    assert!(nrestarts(&lab, 1) > before);
    all_up(&lab, Duration::from_secs(30));

    // SIGSTOP: no more watchdog pings; after WatchdogSec=3s systemd kills it
    // (Result=watchdog) and starts it again.
    let before = nrestarts(&lab, 2);
    let pid = show(&lab, 2, "MainPID");
    lab.sh(2, &format!("kill -STOP {pid}")).unwrap();
    let new = wait_new_main_pid(&lab, 2, &pid, Duration::from_secs(30));
    assert_ne!(new, pid);
    assert!(nrestarts(&lab, 2) > before, "NRestarts did not increase");
    let journal = lab
        .sh(
            2,
            "journalctl -u fleet-agent.service --no-pager -o cat | grep -i watchdog || true",
        )
        .unwrap();
    assert!(
        !journal.trim().is_empty(),
        "no watchdog entry in the journal"
    );
    all_up(&lab, Duration::from_secs(30));
}

#[test]
fn reboot_cut_heal_and_controller_restart() {
    common::init();
    let Some(mut lab) = fleet_lab::test_lab(&opts()) else {
        return;
    };

    // Reboot: the enabled unit starts at boot and the host is up again.
    lab.fault(3, Fault::Reboot).unwrap();
    assert_eq!(show(&lab, 3, "ActiveState"), "active");
    all_up(&lab, Duration::from_secs(60));

    // Cut: down within 3 heartbeats (plus polling slack); heal: up again.
    lab.fault(2, Fault::Cut).unwrap();
    let t = Instant::now();
    lab.wait_fleet_state(&["host2"], "down", 3 * HEARTBEAT + Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("host2 not down within 3 heartbeats: {e:#}"));
    eprintln!("host2 down {:?} after cut", t.elapsed());
    lab.wait_fleet_state(&["host1", "host3"], "up", Duration::from_secs(1))
        .unwrap();
    lab.fault(2, Fault::Heal).unwrap();
    all_up(&lab, Duration::from_secs(60));

    // Controller restart: agents reconnect by themselves.
    let old = lab.controller().unwrap();
    lab.restart_controller().unwrap();
    assert_ne!(lab.controller().unwrap(), old);
    all_up(&lab, Duration::from_secs(90));
}
