//! An app's log lines: its journal read with `journalctl` (the journal has no D-Bus API;
//! the binary format is not ours to parse), or its log files (`logs.mode = "files"`) read
//! with `tail`. Lines are bounded, and a follow is ended by killing the child it started,
//! by its pid, never by name.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// Longer lines are cut (journald itself keeps up to 48 KiB per line).
pub const MAX_LINE: usize = 4096;
pub const MAX_LINES: u32 = 10_000;

/// Starts `journalctl` for `unit`: the last `lines` lines, then new ones with `follow`.
pub fn spawn(unit: &str, lines: u32, follow: bool) -> std::io::Result<Child> {
    let mut cmd = Command::new("journalctl");
    cmd.args(["-u", unit, "-n"])
        .arg(lines.min(MAX_LINES).to_string())
        .args(["-o", "short-iso", "--no-pager", "-q"]);
    if follow {
        cmd.arg("-f");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// Starts `tail` on an app's log files (`mode = "files"`): the last `lines` lines of
/// each, then, with `follow`, new ones, by name across rotations (`-F`).
pub fn spawn_files(
    paths: &[std::path::PathBuf],
    lines: u32,
    follow: bool,
) -> std::io::Result<Child> {
    let mut cmd = Command::new("tail");
    cmd.args(["-q", "-n"]).arg(lines.min(MAX_LINES).to_string());
    if follow {
        cmd.arg("-F");
    }
    cmd.arg("--")
        .args(paths)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// Reads lines of at most `MAX_LINE` bytes (cut, lossily decoded); None at EOF.
pub async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    buf.clear();
    // `take` bounds memory even for a line without end; the rest of such a line is then
    // skipped up to its newline.
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
        let mut skip = Vec::new();
        loop {
            skip.clear();
            let m = r.take(64 * 1024).read_until(b'\n', &mut skip).await?;
            if m == 0 || skip.last() == Some(&b'\n') {
                break;
            }
        }
        buf.truncate(MAX_LINE);
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(buf).into_owned()))
}

/// The unit's last `lines` lines as one string (message text only), for failure reports.
pub async fn recent(unit: &str, lines: u32) -> String {
    let run = async {
        let out = Command::new("journalctl")
            .args(["-u", unit, "-n"])
            .arg(lines.to_string())
            .args(["-o", "cat", "--no-pager", "-q"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .ok()?;
        let mut text = String::new();
        let mut reader = BufReader::new(out.stdout.as_slice());
        let mut buf = Vec::new();
        while let Ok(Some(l)) = next_line(&mut reader, &mut buf).await {
            let l: String = l.chars().take(300).collect();
            text.push_str("\n  ");
            text.push_str(&l);
        }
        Some(text)
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_trimmed() {
        let long = "x".repeat(MAX_LINE * 3);
        let input = format!("a\r\n{long}\nb\n");
        let mut r = BufReader::new(input.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(next_line(&mut r, &mut buf).await.unwrap().unwrap(), "a");
        let cut = next_line(&mut r, &mut buf).await.unwrap().unwrap();
        assert_eq!(cut.len(), MAX_LINE);
        assert_eq!(next_line(&mut r, &mut buf).await.unwrap().unwrap(), "b");
        assert_eq!(next_line(&mut r, &mut buf).await.unwrap(), None);
    }
}
