//! What the controller does for its service manager: the open-files limit, readiness and
//! the watchdog (`Type=notify`, systemd/fleet-controller.service). Notifications are
//! no-ops without `NOTIFY_SOCKET`, so the controller behaves the same outside systemd.

use std::time::Duration;

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use sd_notify::NotifyState;

/// Raises the soft RLIMIT_NOFILE to the hard limit. Every agent holds one TCP connection
/// (one descriptor), and a soft limit of 1,024 (systemd's default for services, and many
/// shells') makes the controller stop accepting at about a thousand agents. The unit sets
/// `LimitNOFILE=` for 100k agents; this covers a controller started any other way.
/// Returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit");
            0
        }
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// READY=1 once both listeners are bound: a unit ordered after fleet-controller (or an
/// operator's `systemctl start`, which waits for it) can connect right away.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Pings WATCHDOG=1 at half of `WATCHDOG_USEC` from a task on the controller's runtime: a
/// runtime that stops scheduling tasks stops the pings, and systemd restarts the
/// controller (which resumes rollouts and sessions from its store).
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let period = sd_notify::watchdog_enabled()?;
    let every = (period / 2).max(Duration::from_millis(100));
    tracing::debug!(?every, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_soft_limit_ends_at_the_hard_limit() {
        let soft = raise_nofile_limit();
        let (now_soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, now_soft);
        assert_eq!(now_soft, hard);
    }
}
