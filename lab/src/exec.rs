//! Running commands inside a host and copying files into it.
//!
//! `nsenter -t LEADER -a` enters all of the container's namespaces. The
//! leader is looked up afresh on every call (it changes at every reboot), and
//! it must be the container's PID 1: `nsenter -t <nspawn pid>` would silently
//! run on the outer machine.

use crate::config::{host_name, Paths};
use anyhow::{bail, Context, Result};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// nsenter keeps the outer environment; give commands a clean, Debian-like one.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn command(n: u32, argv: &[&str], via_unit: bool) -> Result<Command> {
    if argv.is_empty() {
        bail!("no command given");
    }
    let leader = crate::host::leader(n)
        .with_context(|| format!("{} is not running (no container leader)", host_name(n)))?;
    let mut c = Command::new("nsenter");
    c.args(["-t", &leader.to_string(), "-a", "--"]);
    if via_unit {
        // A transient unit: own cgroup, host's environment, survives us;
        // --wait --pipe passes output and exit code back.
        c.args(["systemd-run", "--wait", "--pipe", "-q", "--"]);
    }
    c.args(argv)
        .env_clear()
        .env("PATH", PATH)
        .env("LANG", "C.UTF-8");
    Ok(c)
}

/// Runs with inherited stdio; returns the exit code (128+signal if killed).
pub fn run(n: u32, argv: &[&str], via_unit: bool) -> Result<i32> {
    let st = command(n, argv, via_unit)?.status()?;
    Ok(code(st))
}

pub fn code(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Runs and captures stdout/stderr (stdin closed).
pub fn output(n: u32, argv: &[&str]) -> Result<Output> {
    Ok(command(n, argv, false)?.stdin(Stdio::null()).output()?)
}

/// Like `output`, inside a transient systemd unit (cgroup-sensitive things).
pub fn output_unit(n: u32, argv: &[&str]) -> Result<Output> {
    Ok(command(n, argv, true)?.stdin(Stdio::null()).output()?)
}

/// `sh -c SCRIPT` inside the host; fails unless it exits 0; returns stdout.
pub fn sh(n: u32, script: &str) -> Result<String> {
    let o = output(n, &["sh", "-c", script])?;
    if !o.status.success() {
        bail!(
            "{}: `{script}` failed ({}): {}",
            host_name(n),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Resolves an absolute in-host path to the outer path under the host's
/// merged root, refusing symlinked components: an absolute symlink would be
/// followed on the outer machine, not inside the host.
pub fn host_path(paths: &Paths, n: u32, inside: &str) -> Result<PathBuf> {
    let p = Path::new(inside);
    if !p.is_absolute() {
        bail!("path inside the host must be absolute: {inside}");
    }
    let mut out = paths.merged(n);
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => {
                out.push(s);
                if out
                    .symlink_metadata()
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false)
                {
                    bail!(
                        "{inside}: {} is a symlink; refusing to write through it",
                        out.display()
                    );
                }
            }
            _ => bail!("path must not contain . or ..: {inside}"),
        }
    }
    Ok(out)
}

/// Copies bytes into the host at `inside` with `mode`, by writing a temp
/// file next to it and renaming: replaces even a running binary (plain cp
/// fails with "Text file busy").
pub fn write_file(paths: &Paths, n: u32, inside: &str, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dst = host_path(paths, n, inside)?;
    let dir = dst.parent().context("no parent")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.fleet-lab-tmp",
        dst.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, data)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, &dst)?;
    Ok(())
}

pub fn copy_into(paths: &Paths, n: u32, src: &Path, inside: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let data = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
    let mode = std::fs::metadata(src)?.permissions().mode() & 0o7777;
    write_file(paths, n, inside, &data, mode)
}
