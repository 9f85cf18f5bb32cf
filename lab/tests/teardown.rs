//! Teardown leaves nothing: no mounts under the lab dir, no vb-host* links,
//! no bridge, no cgroup dirs, no nspawn processes — after `down`, after a
//! panic inside a guarded test, and after a lab left running (`detach`,
//! as the CLI does) is ended by `fleet_lab::down`.

mod common;

use fleet_lab::{teardown::leftovers, Fault, Lab, LabOptions, Paths};
use std::time::Duration;

fn assert_clean(when: &str) {
    let left = leftovers(&Paths::from_env());
    assert!(left.is_empty(), "after {when}, left behind: {left:?}");
    assert!(
        !Paths::from_env().lab_json().exists(),
        "lab.json left after {when}"
    );
}

#[test]
fn down_panic_and_detached_labs_leave_nothing() {
    common::init();
    let Some(lab) = fleet_lab::test_lab(&LabOptions::hosts(2)) else {
        return;
    };
    assert!(
        !leftovers(&lab.paths).is_empty(),
        "a running lab must be visible to the check"
    );
    // A frozen host must not block teardown.
    lab.fault(2, Fault::Freeze).unwrap();
    lab.down().unwrap();
    assert_clean("down");

    // Panic inside a guarded region: the unwinding Drop tears down.
    let r = std::panic::catch_unwind(|| {
        let lab = Lab::up(&LabOptions::hosts(2)).unwrap();
        assert!(lab.leader(1).is_some());
        panic!("deliberate panic with a lab up");
    });
    assert!(r.is_err());
    assert_clean("panic");

    // Left running (like `fleet-lab up`), then `down` from outside.
    let lab = Lab::up(&LabOptions::hosts(2)).unwrap();
    lab.detach().unwrap();
    // The lab processes keep the lock: a second lab must not start.
    let mut quick = LabOptions::hosts(1);
    quick.lock_wait = Duration::from_secs(1);
    assert!(
        Lab::up(&quick).is_err(),
        "second lab started while one is up"
    );
    fleet_lab::down(&Paths::from_env()).unwrap();
    assert_clean("down of a detached lab");
    // down is idempotent.
    fleet_lab::down(&Paths::from_env()).unwrap();
    assert_clean("second down");
}
