//! Fault injection: cut/heal, freeze/thaw, power-cut/start, reboot.

mod common;

use fleet_lab::{host_addr, Fault, LabOptions};
use std::time::Duration;

#[test]
fn faults_take_effect_and_revert() {
    common::init();
    let Some(mut lab) = fleet_lab::test_lab(&LabOptions::hosts(2)) else {
        return;
    };
    let h2 = host_addr(2);

    // cut: unreachable from the outer machine and from host1; heal restores.
    assert!(common::tcp_ok(&h2, 22));
    lab.fault(2, Fault::Cut).unwrap();
    assert!(!common::tcp_ok(&h2, 22), "host2 reachable while cut");
    let from1 = format!("python3 -c \"import socket; socket.create_connection(('{h2}', 22), 2)\"");
    assert!(lab.sh(1, &from1).is_err(), "host1 reached host2 while cut");
    lab.fault(2, Fault::Heal).unwrap();
    assert!(common::eventually(Duration::from_secs(10), || {
        common::tcp_ok(&h2, 22)
    }));
    lab.sh(1, &from1).unwrap();

    // freeze: the kernel still accepts TCP, but sshd cannot answer.
    lab.fault(2, Fault::Freeze).unwrap();
    assert!(
        common::ssh_banner(&h2, Duration::from_secs(2)).is_none(),
        "frozen host answered"
    );
    lab.fault(2, Fault::Thaw).unwrap();
    let banner = common::ssh_banner(&h2, Duration::from_secs(5)).expect("banner after thaw");
    assert!(banner.starts_with("SSH-2.0-"), "{banner:?}");

    // reboot: back with a new PID 1, booted, same identity.
    let id = lab.sh(2, "cat /etc/machine-id").unwrap();
    let old = lab.leader(2).unwrap();
    lab.fault(2, Fault::Reboot).unwrap();
    let new = lab.leader(2).unwrap();
    assert_ne!(old, new, "leader must change across reboot");
    assert_eq!(
        lab.sh(2, "systemctl is-system-running").unwrap().trim(),
        "running"
    );
    assert_eq!(lab.sh(2, "cat /etc/machine-id").unwrap(), id);
    assert!(common::eventually(Duration::from_secs(10), || {
        common::tcp_ok(&h2, 22)
    }));

    // power-cut: off (no leader, unreachable) until started again; the
    // disk survives (a file written before the cut is still there).
    lab.sh(2, "echo before > /root/marker && sync").unwrap();
    lab.fault(2, Fault::PowerCut).unwrap();
    assert!(lab.leader(2).is_none());
    assert!(!common::tcp_ok(&h2, 22));
    assert!(
        lab.exec(2, &["true"]).is_err(),
        "exec into a powered-off host must fail"
    );
    // The lookup that must find nothing finds the untouched host.
    assert!(
        lab.leader(1).is_some(),
        "host1 has no leader: the lookup is broken"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        lab.leader(2).is_none(),
        "power-cut host came back by itself"
    );
    lab.start_host(2).unwrap();
    assert_eq!(lab.sh(2, "cat /root/marker").unwrap().trim(), "before");
    assert!(common::eventually(Duration::from_secs(10), || {
        common::tcp_ok(&h2, 22)
    }));

    // host1 was never affected.
    assert_eq!(
        lab.sh(1, "systemctl is-system-running").unwrap().trim(),
        "running"
    );
}
