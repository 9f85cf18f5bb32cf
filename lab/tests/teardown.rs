//! Teardown leaves nothing: no mounts under the lab dir, no vb-host* links,
//! no bridge, no cgroup dirs, no nspawn processes — after `down`, after a
//! panic inside a guarded test, after a lab left running (`detach`,
//! as the CLI does) is ended by `fleet_lab::down`, and after the process that
//! started a lab died without tearing it down (the next lab reaps it).

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

/// A test killed with SIGKILL leaves its hosts running and holding the lab lock they
/// inherited. The next lab must not wait out its lock timeout for them: it sees that the
/// lab's owner is dead, tears the orphan down and starts.
#[test]
fn a_lab_whose_owner_died_is_reaped_by_the_next_one() {
    common::init();
    let Some(lab) = fleet_lab::test_lab(&LabOptions::hosts(1)) else {
        return;
    };
    let paths = lab.paths.clone();
    // Leave it running as the CLI does, then make it look like a test's lab whose process
    // is gone: not detached, and owned by a process that has exited.
    lab.detach().unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = fleet_lab::proc::ProcRec::of(child.id() as i32);
    child.wait().unwrap();
    let mut st = fleet_lab::state::load(&paths).unwrap();
    st.detached = false;
    st.owner = Some(dead.unwrap_or(fleet_lab::proc::ProcRec {
        pid: i32::MAX,
        start: 0,
    }));
    fleet_lab::state::save(&paths, &st).unwrap();
    assert!(
        fleet_lab::state::try_lock(&paths).unwrap().is_none(),
        "the orphan's hosts must hold the lock for this test to mean anything"
    );

    // Far less than the 30 min a waiting lab normally allows: without the reaping, this
    // times out on the lock.
    let mut next = LabOptions::hosts(1);
    next.lock_wait = Duration::from_secs(20);
    let lab = Lab::up(&next).unwrap_or_else(|e| panic!("the next lab did not start: {e:#}"));
    assert!(lab.leader(1).is_some());
    lab.down().unwrap();
    assert_clean("an orphan reaped and its successor torn down");
}
