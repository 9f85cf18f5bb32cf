//! `fleetctl exec APP (--host H | --all) [--timeout DUR] -- CMD ARGS…`: one command on
//! hosts as the app, output streamed back.
//!
//! With `--host` the output is passed through as it comes, byte for byte (stdout to
//! stdout, stderr to stderr), so `fleetctl exec … > file` works, and fleetctl exits with
//! the program's exit code. With `--all` every line is prefixed `host | `, still on the
//! stream it came from, and fleetctl exits 1 if any host failed or exited non-zero.
//! `--output json` prints one document at the end instead: per host its exit code or
//! error and its stdout and stderr (as text, invalid UTF-8 replaced). Ctrl-C ends the
//! call, which stops the command on every host.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::Duration;

use clap::Args;
use fleet_proto::spec::AppName;
use fleet_proto::v1::{exec_event, exec_output, ExecRequest};
use fleet_proto::values::parse_duration;
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};
use crate::rollout::Exit;

/// A partial line longer than this is printed as a line of its own.
const MAX_LINE: usize = 64 * 1024;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["host", "all"])))]
pub struct ExecArgs {
    pub app: AppName,
    /// The host to run on.
    #[arg(long)]
    pub host: Option<String>,
    /// Every host the app runs on (output lines prefixed `host | `).
    #[arg(long)]
    pub all: bool,
    /// Stop the command after this long [default: 10m; at most 24h].
    #[arg(long, value_parser = |v: &str| parse_duration("--timeout", v))]
    pub timeout: Option<Duration>,
    /// The program and its arguments, after `--`; no shell unless you write `sh -c`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub argv: Vec<String>,
}

/// How one host's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Exit(i32),
    Error(String),
}

/// The process exit code for these outcomes: the program's own with one host, else 0
/// only when every host exited 0. A code outside 0..=255 (none should be) is 1.
pub fn exit_status(single: bool, ended: &BTreeMap<String, Ended>) -> u8 {
    match (single, ended.values().next()) {
        (true, Some(Ended::Exit(c))) if ended.len() == 1 => u8::try_from(*c).unwrap_or(1),
        _ if !ended.is_empty() && ended.values().all(|e| *e == Ended::Exit(0)) => 0,
        _ => 1,
    }
}

/// Splits chunks into `host | line` lines per host and stream (a chunk may end mid-line).
#[derive(Default)]
pub struct Prefixer {
    partial: HashMap<(String, i32), Vec<u8>>,
}

impl Prefixer {
    /// The complete lines of `data` after what was pending, each prefixed and ending in
    /// a newline; the rest waits for the next chunk (or `flush`).
    pub fn push(&mut self, host: &str, stream: i32, data: &[u8]) -> Vec<u8> {
        let buf = self.partial.entry((host.to_owned(), stream)).or_default();
        buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            prefix(&mut out, host, &line);
        }
        if buf.len() > MAX_LINE {
            let mut line = std::mem::take(buf);
            line.push(b'\n');
            prefix(&mut out, host, &line);
        }
        out
    }

    /// What is left of `host`'s output, as lines (its run ended).
    pub fn flush(&mut self, host: &str, stream: i32) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(mut rest) = self.partial.remove(&(host.to_owned(), stream)) {
            if !rest.is_empty() {
                rest.push(b'\n');
                prefix(&mut out, host, &rest);
            }
        }
        out
    }
}

fn prefix(out: &mut Vec<u8>, host: &str, line: &[u8]) {
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b" | ");
    out.extend_from_slice(line);
}

fn write(stream: i32, data: &[u8]) {
    // A closed stdout (`| head`) must not stop the others' output or the exit code.
    let _ = if stream == exec_output::Stream::Stdout as i32 {
        let mut o = std::io::stdout().lock();
        o.write_all(data).and_then(|()| o.flush())
    } else {
        let mut e = std::io::stderr().lock();
        e.write_all(data).and_then(|()| e.flush())
    };
}

#[derive(Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

pub async fn run(conn: &Conn, args: ExecArgs, format: Format) -> anyhow::Result<()> {
    let single = !args.all;
    let mut stream = conn
        .admin()
        .await?
        .exec(ExecRequest {
            app: args.app.to_string(),
            hosts: args.host.into_iter().collect(),
            all: args.all,
            argv: args.argv,
            timeout_ms: args.timeout.map_or(0, |t| t.as_millis() as u64),
        })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    let mut ended: BTreeMap<String, Ended> = BTreeMap::new();
    let mut collected: BTreeMap<String, Collected> = BTreeMap::new();
    let mut lines = Prefixer::default();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        let ev = tokio::select! {
            m = stream.message() => m.map_err(|s| conn.status(s))?,
            _ = &mut interrupt => {
                // Dropping the call is what stops the command on the hosts.
                drop(stream);
                eprintln!("interrupted: the command is being stopped on the hosts");
                return Err(Exit(130).into());
            }
        };
        let Some(ev) = ev else { break };
        let host = ev.host;
        match ev.body {
            Some(exec_event::Body::Output(o)) => match format {
                Format::Json => {
                    let c = collected.entry(host).or_default();
                    if o.stream == exec_output::Stream::Stdout as i32 {
                        c.stdout.extend_from_slice(&o.data);
                    } else {
                        c.stderr.extend_from_slice(&o.data);
                    }
                }
                Format::Table if single => write(o.stream, &o.data),
                Format::Table => write(o.stream, &lines.push(&host, o.stream, &o.data)),
            },
            Some(exec_event::Body::ExitCode(c)) => {
                flush_host(&mut lines, &host, format, single);
                ended.insert(host, Ended::Exit(c));
            }
            Some(exec_event::Body::Error(e)) => {
                flush_host(&mut lines, &host, format, single);
                ended.insert(host, Ended::Error(e));
            }
            None => {}
        }
    }
    match format {
        Format::Json => {
            let hosts: Vec<serde_json::Value> = ended
                .iter()
                .map(|(host, end)| {
                    let c = collected.remove(host).unwrap_or_default();
                    let (code, error) = match end {
                        Ended::Exit(c) => (Some(*c), None),
                        Ended::Error(e) => (None, Some(e.clone())),
                    };
                    json!({
                        "host": host,
                        "exit_code": code,
                        "error": error,
                        "stdout": String::from_utf8_lossy(&c.stdout),
                        "stderr": String::from_utf8_lossy(&c.stderr),
                    })
                })
                .collect();
            output::json(&json!(hosts));
        }
        Format::Table => report(single, &ended),
    }
    match exit_status(single, &ended) {
        0 => Ok(()),
        code => Err(Exit(code).into()),
    }
}

/// A host's run ended: its last partial lines, prefixed.
fn flush_host(lines: &mut Prefixer, host: &str, format: Format, single: bool) {
    if format == Format::Table && !single {
        for s in [
            exec_output::Stream::Stdout as i32,
            exec_output::Stream::Stderr as i32,
        ] {
            write(s, &lines.flush(host, s));
        }
    }
}

/// What went wrong, on stderr, after the output.
fn report(single: bool, ended: &BTreeMap<String, Ended>) {
    let bad: Vec<String> = ended
        .iter()
        .filter_map(|(host, end)| match end {
            Ended::Exit(0) => None,
            Ended::Exit(c) if !single => Some(format!("{host}: exited {c}")),
            Ended::Exit(_) => None,
            Ended::Error(e) => Some(format!("{host}: {e}")),
        })
        .collect();
    if bad.is_empty() {
        return;
    }
    if single {
        eprintln!("error: {}", bad.join("; "));
    } else {
        eprintln!(
            "exec failed on {} of {} host(s):\n  {}",
            bad.len(),
            ended.len(),
            bad.join("\n  ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: i32 = exec_output::Stream::Stdout as i32;
    const ERR: i32 = exec_output::Stream::Stderr as i32;

    #[test]
    fn exec_needs_one_target_and_a_command() {
        use clap::Parser;
        let parse = |a: &[&str]| {
            crate::Cli::try_parse_from(std::iter::once("fleetctl").chain(a.iter().copied()))
        };
        for bad in [
            &["exec", "shop", "--", "id"][..],
            &["exec", "shop", "--host", "h", "--all", "--", "id"],
            &["exec", "shop", "--host", "h"],
            &[
                "exec",
                "shop",
                "--host",
                "h",
                "--timeout",
                "soon",
                "--",
                "id",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let Ok(crate::Cli {
            command: crate::Command::Exec(e),
            ..
        }) = parse(&[
            "exec",
            "shop",
            "--all",
            "--timeout",
            "2s",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        else {
            panic!("valid exec refused");
        };
        assert_eq!(e.argv, ["sh", "-c", "exit 3"]);
        assert!(e.all && e.host.is_none());
        assert_eq!(e.timeout, Some(Duration::from_secs(2)));
        // Flags after `--` belong to the command.
        let Ok(crate::Cli {
            command: crate::Command::Exec(e),
            ..
        }) = parse(&["exec", "shop", "--host", "web-1", "--", "ls", "--all"])
        else {
            panic!("valid exec refused");
        };
        assert_eq!(e.argv, ["ls", "--all"]);
        assert_eq!(e.host.as_deref(), Some("web-1"));
        assert!(!e.all);
    }

    #[test]
    fn lines_are_prefixed_per_host_and_stream_across_chunks() {
        let mut p = Prefixer::default();
        assert_eq!(p.push("web-1", OUT, b"hel"), b"");
        assert_eq!(p.push("web-2", OUT, b"other\n"), b"web-2 | other\n");
        assert_eq!(p.push("web-1", ERR, b"oops\n"), b"web-1 | oops\n");
        assert_eq!(
            p.push("web-1", OUT, b"lo\nwor"),
            b"web-1 | hello\n".to_vec()
        );
        assert_eq!(p.flush("web-1", OUT), b"web-1 | wor\n");
        assert_eq!(p.flush("web-1", OUT), b"");
        let long = vec![b'x'; MAX_LINE + 1];
        let out = p.push("web-1", OUT, &long);
        assert_eq!(out.len(), "web-1 | ".len() + MAX_LINE + 2);
    }

    #[test]
    fn exit_status_is_the_programs_with_one_host_else_any_failure_is_1() {
        let m = |v: &[(&str, Ended)]| {
            v.iter()
                .map(|(h, e)| (h.to_string(), e.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(exit_status(true, &m(&[("a", Ended::Exit(3))])), 3);
        assert_eq!(exit_status(true, &m(&[("a", Ended::Exit(0))])), 0);
        assert_eq!(exit_status(true, &m(&[("a", Ended::Exit(300))])), 1);
        assert_eq!(
            exit_status(true, &m(&[("a", Ended::Error("down".into()))])),
            1
        );
        assert_eq!(exit_status(true, &m(&[])), 1, "no outcome at all");
        assert_eq!(
            exit_status(false, &m(&[("a", Ended::Exit(0)), ("b", Ended::Exit(0))])),
            0
        );
        assert_eq!(
            exit_status(false, &m(&[("a", Ended::Exit(0)), ("b", Ended::Exit(3))])),
            1
        );
        assert_eq!(
            exit_status(
                false,
                &m(&[
                    ("a", Ended::Exit(0)),
                    ("b", Ended::Error("timed out".into()))
                ])
            ),
            1
        );
    }
}
