//! `Exec`: one operator command on one host or on every host an app runs on, as the app
//! (the agent runs it in a transient unit with the app's user, env, sandbox and current
//! release). Output is streamed back per host as it comes; the call's end — the client
//! going away — stops the command on every host still running it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::v1::command::Kind;
use fleet_proto::v1::command_result::Status as CmdStatus;
use fleet_proto::v1::{
    exec_event, exec_output, CancelExec, Exec, ExecEvent, ExecOutput, ExecRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::apps::{app_name, hosts_summary, load_app};
use crate::commands::CommandError;
use crate::shared::{internal, Shared};

pub const MAX_ARGS: usize = 256;
pub const MAX_ARGV_BYTES: usize = 64 * 1024;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Hosts running the command at once with `all`; the others wait for a slot.
const PARALLEL: usize = 32;
/// Beyond the timeout, for the agent to stop the unit and answer (it allows itself 30 s
/// for systemd and up to 90 s for the stop).
const RESULT_SLACK: Duration = Duration::from_secs(180);

/// Why an argv is refused, before anything is sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgvError {
    #[error("no command given: put it after `--`, e.g. `fleetctl exec APP --host H -- id`")]
    Empty,
    #[error("{0} arguments; at most {MAX_ARGS}")]
    TooMany(usize),
    #[error("the command line is {0} bytes; at most {MAX_ARGV_BYTES}")]
    TooLong(usize),
    #[error("argument {0} holds a NUL byte")]
    Nul(usize),
    #[error("the program name is empty")]
    EmptyProgram,
}

/// An argv checked for size and NUL bytes (a NUL would cut it short on the host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Argv(Vec<String>);

impl Argv {
    pub fn parse(argv: Vec<String>) -> Result<Argv, ArgvError> {
        if argv.is_empty() {
            return Err(ArgvError::Empty);
        }
        if argv.len() > MAX_ARGS {
            return Err(ArgvError::TooMany(argv.len()));
        }
        let bytes: usize = argv.iter().map(String::len).sum();
        if bytes > MAX_ARGV_BYTES {
            return Err(ArgvError::TooLong(bytes));
        }
        if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
            return Err(ArgvError::Nul(i));
        }
        if argv[0].is_empty() {
            return Err(ArgvError::EmptyProgram);
        }
        Ok(Argv(argv))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// The run's bound: 0 is the default, more than `MAX_TIMEOUT` is refused.
pub fn timeout(ms: u64) -> Result<Duration, Status> {
    let t = match ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    if t > MAX_TIMEOUT {
        return Err(Status::invalid_argument(format!(
            "timeout {} is above the maximum {}",
            humantime::format_duration(t),
            humantime::format_duration(MAX_TIMEOUT)
        )));
    }
    Ok(t)
}

/// What the request names: one host, or every host the app runs on.
pub fn hosts(
    shared: &Shared,
    app: &str,
    hosts: &[String],
    all: bool,
) -> Result<Vec<String>, Status> {
    match (hosts, all) {
        ([], false) => Err(Status::invalid_argument(
            "name the host with --host H, or use --all for every host the app runs on",
        )),
        ([_, ..], true) => Err(Status::invalid_argument(
            "--host and --all exclude each other",
        )),
        ([_, _, ..], false) => Err(Status::invalid_argument(
            "exec runs on one host (--host H) or on every host the app runs on (--all)",
        )),
        ([host], false) => {
            // Cordoned or not: running a command on a cordoned host is how it is repaired.
            let enrolled = shared.store.host_names().map_err(internal)?;
            if !enrolled.iter().any(|h| h == host) {
                return Err(Status::invalid_argument(format!(
                    "unknown host {host:?}: see `fleetctl hosts`"
                )));
            }
            Ok(vec![host.clone()])
        }
        ([], true) => {
            let running = shared.app_states.hosts_running(app);
            if running.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "{app} runs on no host that is up: deploy it first (see `fleetctl status {app}`)"
                )));
            }
            Ok(running)
        }
    }
}

/// How a host's part ended, for the audit entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Failed,
    Cancelled,
}

type Events = mpsc::Sender<Result<ExecEvent, Status>>;

pub fn exec(
    shared: Arc<Shared>,
    actor: String,
    req: ExecRequest,
) -> Result<ReceiverStream<Result<ExecEvent, Status>>, Status> {
    let app = app_name(&req.app)?;
    load_app(&shared, app.as_str())?;
    let argv = Argv::parse(req.argv).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let timeout = timeout(req.timeout_ms)?;
    let hosts = hosts(&shared, app.as_str(), &req.hosts, req.all)?;
    let kind = Kind::Exec(Exec {
        app: app.to_string(),
        argv: argv.as_slice().to_vec(),
        timeout_ms: timeout.as_millis() as u64,
    });
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut tasks = tokio::task::JoinSet::new();
        let mut not_started = 0usize;
        for (i, host) in hosts.iter().enumerate() {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p,
                // The client is gone: start nothing more.
                _ = tx.closed() => {
                    not_started = hosts.len() - i;
                    break;
                }
            };
            let Ok(permit) = permit else { break };
            let (shared, tx, kind, host) = (shared.clone(), tx.clone(), kind.clone(), host.clone());
            tasks.spawn(async move {
                let o = run_host(&shared, &host, kind, timeout, &tx).await;
                drop(permit);
                o
            });
        }
        let (mut zero, mut nonzero, mut failed, mut cancelled) = (0, 0, 0, not_started);
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Outcome::Exited(0)) => zero += 1,
                Ok(Outcome::Exited(_)) => nonzero += 1,
                Ok(Outcome::Cancelled) => cancelled += 1,
                Ok(Outcome::Failed) | Err(_) => failed += 1,
            }
        }
        let _ = shared.audit(
            &actor,
            "app.exec",
            app.as_str(),
            &format!(
                "{}: argv {:?}: {zero} exited 0, {nonzero} exited non-zero, {failed} failed, \
                 {cancelled} cancelled",
                hosts_summary(&hosts),
                argv.as_slice()
            ),
        );
    });
    Ok(ReceiverStream::new(rx))
}

fn event(host: &str, body: exec_event::Body) -> Result<ExecEvent, Status> {
    Ok(ExecEvent {
        host: host.to_owned(),
        body: Some(body),
    })
}

fn note(host: &str, text: String) -> Result<ExecEvent, Status> {
    event(
        host,
        exec_event::Body::Output(ExecOutput {
            exec_id: String::new(),
            stream: exec_output::Stream::Stderr as i32,
            data: format!("[fleet] {text}\n").into_bytes(),
        }),
    )
}

/// One host's run: its output, then its exit code or why there is none.
async fn run_host(
    shared: &Shared,
    host: &str,
    kind: Kind,
    timeout: Duration,
    tx: &Events,
) -> Outcome {
    let mut call = match shared.commands.exec(&shared.sessions, host, kind).await {
        Ok(c) => c,
        Err(e) => {
            let why = match e {
                CommandError::HostDown => "host is down: nothing ran on it".to_owned(),
                e => e.to_string(),
            };
            let _ = tx.send(event(host, exec_event::Body::Error(why))).await;
            return Outcome::Failed;
        }
    };
    let cancel = |id: String| async move {
        shared.commands.end_exec(&id);
        shared
            .commands
            .send_only(
                &shared.sessions,
                host,
                Kind::CancelExec(CancelExec { exec_id: id }),
            )
            .await;
    };
    let deadline = tokio::time::sleep(timeout + RESULT_SLACK);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            out = call.output.recv() => match out {
                Some(out) => {
                    if tx.send(event(host, exec_event::Body::Output(out))).await.is_err() {
                        cancel(call.id).await;
                        return Outcome::Cancelled;
                    }
                }
                // The result is in (or the host is gone).
                None => break,
            },
            _ = tx.closed() => {
                cancel(call.id).await;
                return Outcome::Cancelled;
            }
            _ = &mut deadline => {
                cancel(call.id).await;
                let why = format!(
                    "no result from the host within {} of the timeout; asked it to stop the command",
                    humantime::format_duration(RESULT_SLACK)
                );
                let _ = tx.send(event(host, exec_event::Body::Error(why))).await;
                return Outcome::Failed;
            }
        }
    }
    let dropped = call.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        let _ = tx
            .send(note(
                host,
                format!("{dropped} bytes of output dropped: the client read too slowly"),
            ))
            .await;
    }
    let (body, outcome) = match call.done.await {
        Ok(r) if r.status == CmdStatus::Ok as i32 => {
            if !r.message.is_empty() {
                let _ = tx
                    .send(note(host, r.message.trim_start_matches("; ").to_owned()))
                    .await;
            }
            (
                exec_event::Body::ExitCode(r.exit_code),
                Outcome::Exited(r.exit_code),
            )
        }
        Ok(r) if r.status == CmdStatus::Unsupported as i32 => (
            exec_event::Body::Error(format!(
                "the agent on this host is too old for exec: {}",
                r.message
            )),
            Outcome::Failed,
        ),
        Ok(r) => (exec_event::Body::Error(r.message), Outcome::Failed),
        Err(_) => (
            exec_event::Body::Error(
                "host disconnected before the command ended: its outcome is unknown (the \
                 agent stops it when its session ends)"
                    .into(),
            ),
            Outcome::Failed,
        ),
    };
    let _ = tx.send(event(host, body)).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn argv_is_bounded_and_checked() {
        assert_eq!(
            Argv::parse(v(&["sh", "-c", "exit 3"])).unwrap().as_slice(),
            v(&["sh", "-c", "exit 3"])
        );
        assert_eq!(Argv::parse(vec![]), Err(ArgvError::Empty));
        assert_eq!(Argv::parse(v(&[""])), Err(ArgvError::EmptyProgram));
        assert_eq!(Argv::parse(v(&["echo", "a\0b"])), Err(ArgvError::Nul(1)));
        let many = vec!["x".to_owned(); MAX_ARGS + 1];
        assert_eq!(Argv::parse(many), Err(ArgvError::TooMany(MAX_ARGS + 1)));
        assert!(Argv::parse(vec!["x".to_owned(); MAX_ARGS]).is_ok());
        let long = vec!["echo".to_owned(), "y".repeat(MAX_ARGV_BYTES)];
        assert_eq!(
            Argv::parse(long),
            Err(ArgvError::TooLong(MAX_ARGV_BYTES + 4))
        );
        assert!(ArgvError::Empty.to_string().contains("after `--`"));
    }

    #[test]
    fn timeouts_default_and_are_bounded() {
        assert_eq!(timeout(0).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(timeout(2000).unwrap(), Duration::from_secs(2));
        assert_eq!(
            timeout(MAX_TIMEOUT.as_millis() as u64).unwrap(),
            MAX_TIMEOUT
        );
        let e = timeout(MAX_TIMEOUT.as_millis() as u64 + 1).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("maximum 1day"), "{}", e.message());
    }
}
