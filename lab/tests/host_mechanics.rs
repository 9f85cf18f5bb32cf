//! Booting hosts: real systemd reaching `running`, distinct identities, a
//! shared lab network, and exit codes passed back from `exec`.

mod common;

use fleet_lab::{host_addr, LabOptions};
use std::collections::HashSet;

#[test]
fn three_hosts_boot_with_distinct_identities_and_talk_over_tcp() {
    common::init();
    let Some(lab) = fleet_lab::test_lab(&LabOptions::hosts(3)) else {
        return;
    };

    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    for &n in lab.hosts() {
        let state = lab.sh(n, "systemctl is-system-running").unwrap();
        assert_eq!(state.trim(), "running", "host{n} state");
        names.insert(lab.sh(n, "hostname").unwrap().trim().to_string());
        let id = lab.sh(n, "cat /etc/machine-id").unwrap().trim().to_string();
        assert_eq!(id.len(), 32, "host{n} machine-id {id:?}");
        ids.insert(id);
        // No default route: nothing may leave the lab bridge.
        let routes = lab.sh(n, "ip -4 route show default").unwrap();
        assert!(
            routes.trim().is_empty(),
            "host{n} has a default route: {routes}"
        );
        assert!(common::tcp_ok(&host_addr(n), 22), "outer -> host{n}:22");
    }
    assert_eq!(
        names,
        HashSet::from(["host1".into(), "host2".into(), "host3".into()])
    );
    assert_eq!(ids.len(), 3, "machine-ids must differ");

    // host1 -> host2 over TCP (sshd), from inside host1.
    let probe = format!(
        "import socket; socket.create_connection(('{}', 22), 3).close(); print('ok')",
        host_addr(2)
    );
    assert_eq!(
        lab.sh(1, &format!("python3 -c \"{probe}\""))
            .unwrap()
            .trim(),
        "ok"
    );
}

#[test]
fn exec_passes_exit_codes_back() {
    common::init();
    let Some(lab) = fleet_lab::test_lab(&LabOptions::hosts(1)) else {
        return;
    };
    assert_eq!(lab.exec(1, &["true"]).unwrap(), 0);
    assert_eq!(lab.exec(1, &["sh", "-c", "exit 7"]).unwrap(), 7);
    let o = lab
        .exec_output(1, &["sh", "-c", "echo out; exit 3"])
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "out");
    // Via a transient unit: runs in its own cgroup inside the host.
    let o = lab
        .exec_unit(
            1,
            &[
                "sh",
                "-c",
                "cat /proc/self/cgroup | grep -q run-; echo unit; exit 5",
            ],
        )
        .unwrap();
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "unit");
    // Files written through the merged root are visible inside (not under
    // /tmp or /run: the host mounts its own tmpfs over those).
    fleet_lab::exec::write_file(&lab.paths, 1, "/root/lab-file", b"hello\n", 0o644).unwrap();
    assert_eq!(lab.sh(1, "cat /root/lab-file").unwrap(), "hello\n");
    // Writing through a symlink would escape the host: refused.
    lab.sh(1, "ln -sfn / /root/escape").unwrap();
    assert!(fleet_lab::exec::write_file(&lab.paths, 1, "/root/escape/x", b"", 0o644).is_err());
}
