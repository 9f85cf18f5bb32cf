//! Starting the lab's long-lived processes (host restart loops, controller).
//!
//! Each is a `sh` that first moves itself into its own lab cgroup and then
//! runs the real command, so everything it starts is findable (and only it)
//! at teardown. It runs in a new session (a Ctrl-C on the terminal that ran
//! `fleet-lab up` must not reach the hosts) and carries a duplicate of the
//! lab lock on fd 9: the lock stays held as long as any lab process lives,
//! even after the `fleet-lab up` that created it has exited.

use crate::cgroup;
use crate::proc::ProcRec;
use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const LOCK_FD: RawFd = 9;

/// Script prologue: `$1` and `$2` are the cgroup.procs files to join.
const JOIN: &str = r#"echo $$ > "$1" && echo $$ > "$2" || { echo "fleet-lab: cannot join cgroup" >&2; exit 97; }; shift 2;"#;

pub fn spawn(
    cgroup_name: &str,
    script: &str,
    args: &[String],
    log: &Path,
    lock: &File,
) -> Result<(Child, ProcRec)> {
    cgroup::create(cgroup_name)?;
    let files = cgroup::procs_files(cgroup_name);
    let logf = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let lock_fd = lock.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("{JOIN} {script}"))
        .arg(format!("fleet-lab-{cgroup_name}"))
        .args(&files)
        .args(args)
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears close-on-exec on the new descriptor.
            if libc::dup2(lock_fd, LOCK_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("spawn lab process")?;
    let rec = ProcRec::of(child.id() as i32).context("lab process vanished at start")?;
    Ok((child, rec))
}
