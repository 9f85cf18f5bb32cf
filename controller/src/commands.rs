//! Commands to agents and their answers: each command gets a correlation id, is sent down
//! the host's stream, and is answered by exactly one CommandResult routed back here. Log
//! tails and exec output are routed the same way by their command id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::v1::controller_message::Body as Down;
use fleet_proto::v1::{command, Command, CommandResult, ControllerMessage, ExecOutput, LogLine};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use crate::sessions::Sessions;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("host is down")]
    HostDown,
    #[error("host disconnected before answering")]
    Disconnected,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Why a command did not succeed on a host, as rollout records, the audit log and the
/// operator read it.
#[derive(Debug, thiserror::Error)]
pub enum CommandFailed {
    /// The agent ran it and refused or failed; its message says why and what to do.
    #[error("{0}")]
    Agent(String),
    #[error("the agent on this host is too old for this command: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Call(#[from] CommandError),
}

struct Pending {
    host: String,
    reply: oneshot::Sender<CommandResult>,
}

/// Commands awaiting an answer, by id and by host: a session's end fails that host's
/// commands without walking everyone's (thousands are in flight during a fan-out).
#[derive(Default)]
struct PendingTable {
    by_id: HashMap<String, Pending>,
    by_host: HashMap<String, HashSet<String>>,
}

impl PendingTable {
    fn insert(&mut self, id: String, p: Pending) {
        self.by_host
            .entry(p.host.clone())
            .or_default()
            .insert(id.clone());
        self.by_id.insert(id, p);
    }

    fn get(&self, id: &str) -> Option<&Pending> {
        self.by_id.get(id)
    }

    fn remove(&mut self, id: &str) -> Option<Pending> {
        let p = self.by_id.remove(id)?;
        if let Some(ids) = self.by_host.get_mut(&p.host) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_host.remove(&p.host);
            }
        }
        Some(p)
    }

    fn remove_host(&mut self, host: &str) {
        for id in self.by_host.remove(host).unwrap_or_default() {
            self.by_id.remove(&id);
        }
    }
}

/// Chunks of one exec's output buffered between the agent's stream and the caller; past
/// this the caller reads too slowly and chunks are dropped (and counted), because waiting
/// would hold back everything else on the host's stream. The agent sends at most 8 MiB
/// per run in chunks of up to 16 KiB, gathered for a moment each: this holds a whole
/// run's output of full chunks.
const EXEC_BUFFER: usize = 1024;

/// Where an exec's output and result go.
struct ExecRoute {
    host: String,
    output: mpsc::Sender<ExecOutput>,
    done: oneshot::Sender<CommandResult>,
    dropped: Arc<AtomicU64>,
}

/// A running exec, as its caller sees it: output until the agent's result arrives (the
/// output channel then ends), then the result; a dropped result means the host went
/// away first.
pub struct ExecCall {
    pub id: String,
    pub output: mpsc::Receiver<ExecOutput>,
    pub done: oneshot::Receiver<CommandResult>,
    /// Output bytes dropped because the caller read too slowly.
    pub dropped: Arc<AtomicU64>,
}

#[derive(Default)]
pub struct Commands {
    pending: Mutex<PendingTable>,
    tails: Mutex<HashMap<String, (String, mpsc::Sender<LogLine>)>>,
    execs: Mutex<HashMap<String, ExecRoute>>,
}

pub fn new_id() -> String {
    let mut b = [0u8; 12];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

async fn send_raw(
    sessions: &Sessions,
    host: &str,
    id: &str,
    kind: command::Kind,
) -> Result<(), CommandError> {
    let tx = sessions.outbound(host).ok_or(CommandError::HostDown)?;
    let msg = ControllerMessage {
        body: Some(Down::Command(Command {
            id: id.to_owned(),
            kind: Some(kind),
        })),
    };
    tx.send(Ok(Box::new(msg)))
        .await
        .map_err(|_| CommandError::Disconnected)
}

/// A command sent and not yet answered.
pub struct Sent {
    id: String,
    rx: oneshot::Receiver<CommandResult>,
}

impl Sent {
    /// Waits up to `timeout` for the answer.
    pub async fn wait(
        self,
        commands: &Commands,
        timeout: Duration,
    ) -> Result<CommandResult, CommandError> {
        match tokio::time::timeout(timeout, self.rx).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(CommandError::Disconnected),
            Err(_) => {
                commands
                    .pending
                    .lock()
                    .expect("pending lock")
                    .remove(&self.id);
                Err(CommandError::Timeout(timeout))
            }
        }
    }
}

impl Commands {
    /// Sends `kind` to `host` and waits up to `timeout` for its result.
    pub async fn call(
        &self,
        sessions: &Sessions,
        host: &str,
        kind: command::Kind,
        timeout: Duration,
    ) -> Result<CommandResult, CommandError> {
        self.start(sessions, host, kind)
            .await?
            .wait(self, timeout)
            .await
    }

    /// Like `call`, under id `id` rather than a new one: a rollout step's stable id, which
    /// the agent answers once however often it is sent (a controller taking over a
    /// rollout re-sends the step in flight).
    pub async fn call_as(
        &self,
        sessions: &Sessions,
        host: &str,
        id: &str,
        kind: command::Kind,
        timeout: Duration,
    ) -> Result<CommandResult, CommandError> {
        let rx = self.send(sessions, host, id, kind).await?;
        Sent {
            id: id.to_owned(),
            rx,
        }
        .wait(self, timeout)
        .await
    }

    /// Sends `kind` to `host`; the answer is awaited separately, so a fan-out can report
    /// progress between sending and waiting.
    pub async fn start(
        &self,
        sessions: &Sessions,
        host: &str,
        kind: command::Kind,
    ) -> Result<Sent, CommandError> {
        let id = new_id();
        let rx = self.send(sessions, host, &id, kind).await?;
        Ok(Sent { id, rx })
    }

    async fn send(
        &self,
        sessions: &Sessions,
        host: &str,
        id: &str,
        kind: command::Kind,
    ) -> Result<oneshot::Receiver<CommandResult>, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(
            id.to_owned(),
            Pending {
                host: host.to_owned(),
                reply,
            },
        );
        if let Err(e) = send_raw(sessions, host, id, kind).await {
            self.pending.lock().expect("pending lock").remove(id);
            return Err(e);
        }
        Ok(rx)
    }

    /// Sends a command whose answer nobody waits for (e.g. StopLogs).
    pub async fn send_only(&self, sessions: &Sessions, host: &str, kind: command::Kind) {
        let _ = send_raw(sessions, host, &new_id(), kind).await;
    }

    /// Routes a CommandResult from `host`; results for unknown ids (late, or another
    /// host's) are dropped.
    pub fn resolve(&self, host: &str, result: CommandResult) {
        {
            let mut pending = self.pending.lock().expect("pending lock");
            if pending.get(&result.id).is_some_and(|p| p.host == host) {
                if let Some(p) = pending.remove(&result.id) {
                    let _ = p.reply.send(result);
                }
                return;
            }
        }
        // Like a tail's, an exec's result comes after all its output on the same stream.
        let exec = self.execs.lock().expect("execs lock").remove(&result.id);
        if let Some(route) = exec {
            if route.host == host {
                let _ = route.done.send(result);
            } else {
                // Another host's id: not this one's to end.
                self.execs
                    .lock()
                    .expect("execs lock")
                    .insert(result.id.clone(), route);
            }
            return;
        }
        // A tail's result means the agent has sent all it will (lines come first on the
        // same stream); a failed one says why there are no lines.
        let tail = self.tails.lock().expect("tails lock").remove(&result.id);
        if let Some((h, tx)) = tail {
            if h == host && result.status != fleet_proto::v1::command_result::Status::Ok as i32 {
                let _ = tx.try_send(LogLine {
                    tail_id: result.id,
                    host: h,
                    line: format!("[fleet] no logs from this host: {}", result.message),
                    time_ms: 0,
                });
            }
        }
    }

    /// Fails every command in flight to `host` (its stream ended).
    pub fn host_gone(&self, host: &str) {
        self.pending.lock().expect("pending lock").remove_host(host);
        self.tails
            .lock()
            .expect("tails lock")
            .retain(|_, (h, _)| h != host);
        // Execs are operators' calls, a handful at a time: a scan is cheap.
        self.execs
            .lock()
            .expect("execs lock")
            .retain(|_, r| r.host != host);
    }

    /// Sends an Exec to `host`; its output and result arrive on the returned call.
    pub async fn exec(
        &self,
        sessions: &Sessions,
        host: &str,
        kind: command::Kind,
    ) -> Result<ExecCall, CommandError> {
        let id = new_id();
        let (out_tx, output) = mpsc::channel(EXEC_BUFFER);
        let (done_tx, done) = oneshot::channel();
        let dropped = Arc::new(AtomicU64::new(0));
        self.execs.lock().expect("execs lock").insert(
            id.clone(),
            ExecRoute {
                host: host.to_owned(),
                output: out_tx,
                done: done_tx,
                dropped: dropped.clone(),
            },
        );
        match send_raw(sessions, host, &id, kind).await {
            Ok(()) => Ok(ExecCall {
                id,
                output,
                done,
                dropped,
            }),
            Err(e) => {
                self.end_exec(&id);
                Err(e)
            }
        }
    }

    /// Forgets an exec: later output and its result are dropped.
    pub fn end_exec(&self, id: &str) {
        self.execs.lock().expect("execs lock").remove(id);
    }

    /// Routes a chunk of exec output to its call; dropped (and counted) when the call
    /// reads too slowly, ignored when the id is unknown or another host's.
    pub fn deliver_exec_output(&self, host: &str, out: ExecOutput) {
        let execs = self.execs.lock().expect("execs lock");
        let Some(route) = execs.get(&out.exec_id).filter(|r| r.host == host) else {
            return;
        };
        let len = out.data.len() as u64;
        if route.output.try_send(out).is_err() {
            route.dropped.fetch_add(len, Ordering::Relaxed);
        }
    }

    /// Starts a log tail on `host`; lines arrive on the returned receiver.
    pub async fn tail(
        &self,
        sessions: &Sessions,
        host: &str,
        kind: command::Kind,
        lines: mpsc::Sender<LogLine>,
    ) -> Result<String, CommandError> {
        let id = new_id();
        self.tails
            .lock()
            .expect("tails lock")
            .insert(id.clone(), (host.to_owned(), lines));
        match send_raw(sessions, host, &id, kind).await {
            Ok(()) => Ok(id),
            Err(e) => {
                self.tails.lock().expect("tails lock").remove(&id);
                Err(e)
            }
        }
    }

    pub fn end_tail(&self, id: &str) {
        self.tails.lock().expect("tails lock").remove(id);
    }

    /// Routes a log line to its tail; false when nobody listens any more.
    pub fn deliver_line(&self, host: &str, line: LogLine) -> bool {
        let tx = {
            let tails = self.tails.lock().expect("tails lock");
            match tails.get(&line.tail_id) {
                Some((h, tx)) if h == host => tx.clone(),
                _ => return false,
            }
        };
        tx.try_send(line).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(host: &str) -> (Pending, oneshot::Receiver<CommandResult>) {
        let (reply, rx) = oneshot::channel();
        (
            Pending {
                host: host.into(),
                reply,
            },
            rx,
        )
    }

    #[test]
    fn a_host_gone_fails_only_its_own_commands() {
        let mut t = PendingTable::default();
        let (a1, mut ra1) = pending("a");
        let (a2, _ra2) = pending("a");
        let (b1, _rb1) = pending("b");
        t.insert("1".into(), a1);
        t.insert("2".into(), a2);
        t.insert("3".into(), b1);
        t.remove_host("a");
        assert!(t.get("1").is_none() && t.get("2").is_none());
        assert!(t.get("3").is_some());
        // Dropped, so a waiter sees the disconnect.
        assert!(ra1.try_recv().is_err());
        assert!(t.remove("3").is_some());
        assert!(t.by_host.is_empty() && t.by_id.is_empty());
    }
}
