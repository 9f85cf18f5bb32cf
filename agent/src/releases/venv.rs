//! A per-release virtualenv, built offline from the wheels the release ships.
//!
//! A release with `requirements.txt` and a `wheels/` directory gets `<release>/.venv`,
//! built where it will be used (a venv's scripts carry its absolute path, so it cannot be
//! built elsewhere and moved). Only wheels are installed (`--only-binary :all:`): pip
//! never runs a package's build code, as root, on the host. A release without them runs
//! on the system python with Debian's gunicorn/uvicorn.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

pub(super) const REQUIREMENTS: &str = "requirements.txt";
pub(super) const WHEELS: &str = "wheels";
/// Lines of pip's output kept in an error: enough for its actual complaint.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 4096;

/// The venv's `bin/` (holding `python`, `gunicorn`...) if this release has one.
pub fn venv_bin(release_dir: &Path) -> Option<PathBuf> {
    let bin = release_dir.join(super::VENV_DIR).join("bin");
    bin.join("python").exists().then_some(bin)
}

/// Whether the release asks for a venv.
pub(super) fn wanted(release: &Path) -> bool {
    release.join(REQUIREMENTS).is_file() && release.join(WHEELS).is_dir()
}

#[derive(Debug)]
pub(super) struct VenvError {
    /// The command that failed, as an operator would type it.
    pub step: String,
    /// "failed (exit status: 1)", "timed out after 10m", "could not start: ...".
    pub outcome: String,
    /// The end of its output.
    pub tail: String,
}

pub(super) async fn build(python: &Path, release: &Path, limit: Duration) -> Result<(), VenvError> {
    let venv = release.join(super::VENV_DIR);
    run(
        Command::new(python).arg("-m").arg("venv").arg(&venv),
        release,
        limit,
    )
    .await?;
    run(
        Command::new(venv.join("bin").join("pip"))
            .args([
                "install",
                "--no-index",
                "--only-binary",
                ":all:",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--no-input",
                "--find-links",
            ])
            .arg(release.join(WHEELS))
            .arg("-r")
            .arg(release.join(REQUIREMENTS)),
        release,
        limit,
    )
    .await
}

async fn run(cmd: &mut Command, cwd: &Path, limit: Duration) -> Result<(), VenvError> {
    let step = describe(cmd);
    // A clean environment: the agent's own (or a stray PIP_INDEX_URL, PIP_USER...) must
    // not change what gets installed. PIP_CONFIG_FILE=/dev/null skips pip.conf files.
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C.UTF-8")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let fail = |outcome: String, tail: String| VenvError {
        step: step.clone(),
        outcome,
        tail,
    };
    let child = cmd
        .spawn()
        .map_err(|e| fail(format!("could not start: {e}"), String::new()))?;
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(fail(format!("failed: {e}"), String::new())),
        Err(_) => {
            return Err(fail(
                format!("timed out after {}", humantime::format_duration(limit)),
                String::new(),
            ))
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(fail(format!("failed ({})", out.status), tail(&text)))
}

fn describe(cmd: &Command) -> String {
    let std = cmd.as_std();
    let mut s = std.get_program().to_string_lossy().into_owned();
    for a in std.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last lines of `text`, at most `TAIL_BYTES` of them.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if out.len() > TAIL_BYTES {
        let mut cut = out.len() - TAIL_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = out[cut..].to_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (0..50).map(|i| format!("line {i}\n\n")).collect();
        let t = tail(&text);
        assert!(t.starts_with("line 30\n"), "{t}");
        assert!(t.ends_with("line 49"));
        assert!(tail(&"é".repeat(5000)).len() <= TAIL_BYTES);
    }
}
