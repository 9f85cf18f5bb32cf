//! Shared helpers for lab tests. Each test file boots its own lab through
//! `fleet_lab::test_lab`, which checks preconditions first (FLEET_LAB=skip
//! skips on purpose, otherwise a missing precondition fails the test) and
//! returns a guard whose Drop tears the lab down, even on panic.
#![allow(dead_code)]

pub mod prometheus;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub fn init() {
    fleet_lab::init_logging();
}

pub fn tcp_ok(addr: &str, port: u16) -> bool {
    fleet_lab::net::tcp_reachable(addr, port, Duration::from_secs(2))
}

/// Reads sshd's banner: unlike a TCP connect (answered by the kernel even
/// when the host is frozen), this needs the host's userspace to run.
pub fn ssh_banner(addr: &str, timeout: Duration) -> Option<String> {
    let sa: SocketAddr = format!("{addr}:22").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sa, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Polls `f` until true or the timeout passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// fleetctl against the lab's controller; panics with fleetctl's error.
pub fn ctl(lab: &fleet_lab::Lab, args: &[&str]) -> String {
    lab.fleetctl(args)
        .unwrap_or_else(|e| panic!("fleetctl {args:?}: {e:#}"))
}

/// Polls `f` until true; panics naming `what` after `timeout`.
pub fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    assert!(
        eventually(timeout, &mut f),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Runs fleetctl against the lab's controller and returns (exit code, stdout, stderr),
/// echoed for the test's log: rollouts speak through the exit code.
pub fn run(lab: &fleet_lab::Lab, args: &[&str]) -> (i32, String, String) {
    use std::process::{Command, Stdio};
    let out = Command::new(lab.binaries().unwrap().fleetctl.clone())
        .args(["--controller", "198.18.0.1:7443", "--identity"])
        .arg(fleet_lab::Paths::from_env().admin_identity())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let r = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!(
        "$ fleetctl {} -> exit {}\n{}{}",
        args.join(" "),
        r.0,
        r.1,
        r.2
    );
    r
}
