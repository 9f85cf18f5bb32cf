//! Exec and CancelExec: one run of an operator's argv as the app, streamed back.
//!
//! The run is a transient unit made by `systemd-run --wait --pipe`, like the pre-start
//! hook (`crate::hook`): the app's user, env file (secrets included, as the app sees
//! them), sandbox and current release, and systemd kills the whole process tree at
//! `RuntimeMaxSec=`. No shell: the argv goes to systemd-run after `--` as it came.
//!
//! Unlike the hook the unit is not `--collect`ed: when the program fails, the failed unit
//! is what says how it ended (exit status, signal, timeout), which systemd-run's own exit
//! status folds together. The agent reads that and then resets the unit, so nothing is
//! left behind; a clean exit unloads the unit by itself.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use fleet_proto::spec::AppName;
use fleet_proto::v1::{
    agent_message, command_result, exec_output, CancelExec, CommandResult, Exec, ExecOutput,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command as Process;
use tokio::sync::oneshot;

use super::{lock, AppError, Inner};
use crate::hook::{self, Transient};
use crate::systemd::{JobKind, MainExit};
use crate::units;

/// Bytes per ExecOutput message (a read is never bigger).
pub const CHUNK: usize = 16 * 1024;
/// Output sent per run, both streams together; the rest is read and dropped, so the
/// program never blocks on a full pipe.
pub const MAX_OUTPUT: usize = 8 * 1024 * 1024;
/// How long output is gathered into one chunk after its first bytes.
const COALESCE: Duration = Duration::from_millis(20);
/// Runs at once on this host; more are refused rather than queued.
const MAX_RUNNING: usize = 16;
/// When the controller sends no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest run the agent accepts (the controller bounds it the same way).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// For systemd to stop the unit at `RuntimeMaxSec=` before the agent stops it itself.
const STOP_SLACK: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(90);
/// Hex digits of the exec id in the unit name.
const ID_IN_UNIT: usize = 16;

/// The transient unit of exec `id` of `app`. The id comes from the controller: only
/// lowercase hex of a bounded length gets into a unit name.
pub fn unit_name(app: &AppName, id: &str) -> Result<String, AppError> {
    let ok = (8..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(AppError::ExecId(id.chars().take(70).collect()));
    }
    let short = &id[..id.len().min(ID_IN_UNIT)];
    Ok(format!("fleet-exec-{app}-{short}.service"))
}

/// The exit code reported for a main process that ended (ExecMainCode, ExecMainStatus):
/// its status when it exited, 128+signal when a signal ended it, as shells report it.
pub fn exit_code(e: &MainExit) -> Option<i32> {
    match e.code {
        // CLD_EXITED
        1 => Some(e.status),
        // CLD_KILLED, CLD_DUMPED
        2 | 3 => Some(128 + e.status),
        _ => None,
    }
}

/// Counts what one run sent, so both streams together stay under `MAX_OUTPUT`.
#[derive(Default)]
pub struct Budget {
    sent: AtomicUsize,
    dropped: AtomicUsize,
}

impl Budget {
    /// How much of a chunk of `n` bytes may still be sent; the rest is counted as dropped.
    pub fn take(&self, n: usize) -> usize {
        let mut sent = self.sent.load(Ordering::Relaxed);
        loop {
            let allowed = n.min(MAX_OUTPUT.saturating_sub(sent));
            match self.sent.compare_exchange(
                sent,
                sent + allowed,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.dropped.fetch_add(n - allowed, Ordering::Relaxed);
                    return allowed;
                }
                Err(now) => sent = now,
            }
        }
    }

    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// How the run ended, before it is told to the controller.
enum End {
    Exited(std::io::Result<std::process::ExitStatus>),
    Cancelled,
    SessionGone,
    Stuck,
}

fn result(id: String, outcome: Result<i32, String>, note: &str) -> CommandResult {
    match outcome {
        Ok(code) => CommandResult {
            id,
            status: command_result::Status::Ok as i32,
            message: note.trim().to_owned(),
            request_stats: None,
            exit_code: code,
        },
        Err(m) => CommandResult {
            id,
            status: command_result::Status::Failed as i32,
            message: format!("{m}{note}"),
            request_stats: None,
            exit_code: 0,
        },
    }
}

impl Inner {
    /// Runs the exec and returns its one result (after all its output was sent).
    pub(super) async fn exec(&self, id: String, e: Exec, session: Option<u64>) -> CommandResult {
        match self.exec_inner(&id, e, session).await {
            Ok((code, note)) => result(id, Ok(code), &note),
            Err(err) => {
                tracing::warn!(command = %id, "exec failed: {err}");
                result(id, Err(err.to_string()), "")
            }
        }
    }

    async fn exec_inner(
        &self,
        id: &str,
        e: Exec,
        session: Option<u64>,
    ) -> Result<(i32, String), AppError> {
        let app = self.known(&e.app)?;
        let Some(session) = session else {
            return Err(AppError::NoSession);
        };
        let unit = unit_name(&app.name, id)?;
        let Some(program) = e.argv.first() else {
            return Err(AppError::ExecArgv("empty argv".into()));
        };
        if e.argv.iter().any(|a| a.contains('\0')) {
            return Err(AppError::ExecArgv("an argument holds a NUL byte".into()));
        }
        let timeout = match e.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        if timeout > MAX_TIMEOUT {
            return Err(AppError::ExecArgv(format!(
                "timeout {} is above the maximum {}",
                humantime::format_duration(timeout),
                humantime::format_duration(MAX_TIMEOUT)
            )));
        }
        let spec = lock(&app.data).spec.clone();
        // The spec refuses root; this holds whatever the host's passwd says.
        match nix::unistd::User::from_name(&spec.user) {
            Ok(Some(u)) if !u.uid.is_root() => {}
            Ok(Some(_)) => return Err(AppError::ExecAsRoot(spec.user.clone())),
            Ok(None) | Err(_) => return Err(AppError::ExecNoUser(spec.user.clone())),
        }
        let version = self
            .releases
            .current(&app.name)?
            .ok_or_else(|| AppError::NotDeployed(app.name.clone()))?;
        let release_dir = self.releases.release_dir(&app.name, &version);
        let env_file = units::env_path(&self.env_dir, &app.name);
        if !env_file.is_file() {
            return Err(AppError::NotDeployed(app.name.clone()));
        }
        let program = hook::resolve_program(program, &release_dir)?;
        let t = Transient {
            spec: &spec,
            unit: &unit,
            description: format!("fleet: exec in {}", spec.name),
            release_dir: &release_dir,
            env_file: &env_file,
            timeout,
            collect: false,
        };
        let args = hook::transient_args(&t, &program, &e.argv[1..]);
        let (stop_tx, stop_rx) = oneshot::channel();
        {
            let mut execs = lock(&self.execs);
            if execs.len() >= MAX_RUNNING {
                return Err(AppError::ExecBusy(MAX_RUNNING));
            }
            execs.insert(id.to_owned(), stop_tx);
        }
        let ran = self
            .run_unit(id, &unit, args, timeout, session, stop_rx)
            .await;
        lock(&self.execs).remove(id);
        let (end, budget, lost) = ran?;
        let mut note = String::new();
        if budget.dropped() > 0 {
            note.push_str(&format!(
                "; {} bytes of output dropped after the first {} MiB",
                budget.dropped(),
                MAX_OUTPUT / (1024 * 1024)
            ));
        }
        if lost {
            note.push_str("; some output could not be sent to the controller");
        }
        let took = humantime::format_duration(timeout);
        let outcome = match end {
            End::Exited(Ok(s)) if s.success() => Ok(0),
            End::Exited(Ok(s)) => {
                let ended = self.bus().await?.main_exit(&unit).await;
                self.reset_unit(&unit).await;
                match ended? {
                    Some(m) if m.result == "timeout" => {
                        Err(AppError::ExecTimedOut(took.to_string()))
                    }
                    Some(m) => exit_code(&m).ok_or_else(|| {
                        AppError::Failed(format!("{unit} ended with result {}", m.result))
                    }),
                    // The unit never existed: systemd-run itself failed (its stderr said why).
                    None => Err(AppError::Failed(format!(
                        "systemd-run could not run the command ({s})"
                    ))),
                }
            }
            End::Exited(Err(e)) => Err(AppError::Failed(format!("waiting for systemd-run: {e}"))),
            End::Cancelled => Err(AppError::ExecCancelled),
            End::SessionGone => Err(AppError::ExecSessionGone),
            End::Stuck => Err(AppError::ExecTimedOut(took.to_string())),
        }?;
        Ok((outcome, note))
    }

    /// Runs systemd-run and streams its output until it ends, is cancelled, loses its
    /// session or outlives its timeout; in the last three cases the unit is stopped.
    async fn run_unit(
        &self,
        id: &str,
        unit: &str,
        args: Vec<String>,
        timeout: Duration,
        session: u64,
        stop_rx: oneshot::Receiver<()>,
    ) -> Result<(End, Budget, bool), AppError> {
        let mut child = Process::new("systemd-run")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AppError::Failed(format!("cannot run systemd-run: {e}")))?;
        tracing::info!(command = %id, %unit, "exec started");
        let budget = Budget::default();
        let lost = AtomicBool::new(false);
        let out = child.stdout.take();
        let err = child.stderr.take();
        let ended = self.outbox.session_ended(session);
        let end = {
            let pump = async {
                tokio::join!(
                    self.pump(
                        id,
                        session,
                        out,
                        exec_output::Stream::Stdout,
                        &budget,
                        &lost
                    ),
                    self.pump(
                        id,
                        session,
                        err,
                        exec_output::Stream::Stderr,
                        &budget,
                        &lost
                    ),
                );
                child.wait().await
            };
            tokio::select! {
                status = pump => End::Exited(status),
                _ = stop_rx => End::Cancelled,
                _ = ended => End::SessionGone,
                _ = tokio::time::sleep(timeout + STOP_SLACK) => End::Stuck,
            }
        };
        if !matches!(end, End::Exited(_)) {
            self.stop_unit(unit).await;
            // systemd-run returns once the unit is gone; a stuck one is killed on drop.
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            self.reset_unit(unit).await;
        }
        tracing::info!(command = %id, %unit, "exec ended");
        Ok((end, budget, lost.load(Ordering::Relaxed)))
    }

    /// Sends one stream's output in chunks of at most `CHUNK` bytes, within the budget.
    async fn pump(
        &self,
        id: &str,
        session: u64,
        r: Option<impl AsyncRead + Unpin>,
        stream: exec_output::Stream,
        budget: &Budget,
        lost: &AtomicBool,
    ) {
        let Some(mut r) = r else { return };
        let mut buf = vec![0u8; CHUNK];
        loop {
            let mut n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // A program writing line by line (Python here runs unbuffered) would cost a
            // message per line: what follows within a moment goes into the same chunk.
            let mut eof = false;
            let until = tokio::time::Instant::now() + COALESCE;
            while n < CHUNK {
                match tokio::time::timeout_at(until, r.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        eof = true;
                        break;
                    }
                    Ok(Ok(more)) => n += more,
                    Err(_) => break,
                }
            }
            let keep = budget.take(n);
            if keep == 0 || lost.load(Ordering::Relaxed) {
                continue;
            }
            let msg = agent_message::Body::ExecOutput(ExecOutput {
                exec_id: id.to_owned(),
                stream: stream as i32,
                data: buf[..keep].to_vec(),
            });
            if !self.outbox.send_to(Some(session), msg).await {
                // Nothing after a gap: the reader would take it for the whole output.
                lost.store(true, Ordering::Relaxed);
            }
            if eof {
                return;
            }
        }
    }

    async fn stop_unit(&self, unit: &str) {
        match self.bus().await {
            Ok(bus) => {
                if let Err(e) = bus.job(JobKind::Stop, unit, STOP_TIMEOUT).await {
                    tracing::warn!(%unit, "cannot stop exec unit: {e}");
                }
            }
            Err(e) => tracing::warn!(%unit, "cannot stop exec unit: {e}"),
        }
    }

    /// Unloads a failed exec unit (it is not `--collect`ed).
    async fn reset_unit(&self, unit: &str) {
        if let Ok(bus) = self.bus().await {
            if let Err(e) = bus.reset_failed(unit).await {
                tracing::warn!(%unit, "cannot reset exec unit: {e}");
            }
        }
    }

    pub(super) fn cancel_exec(&self, c: CancelExec) -> String {
        match lock(&self.execs).remove(&c.exec_id) {
            Some(stop) => {
                let _ = stop.send(());
                format!("exec {} stopping", c.exec_id)
            }
            None => format!("no exec {} running", c.exec_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_come_from_validated_ids_only() {
        let app: AppName = "shop".parse().unwrap();
        assert_eq!(
            unit_name(&app, "0123456789abcdef0123abcd").unwrap(),
            "fleet-exec-shop-0123456789abcdef.service"
        );
        assert_eq!(
            unit_name(&app, "deadbeef").unwrap(),
            "fleet-exec-shop-deadbeef.service"
        );
        for bad in [
            "",
            "abc",
            "0123456789ABCDEF",
            "../../etc/x0000",
            "deadbeef.service",
            "deadbeef deadbeef",
            &"a".repeat(65),
        ] {
            let e = unit_name(&app, bad).unwrap_err();
            assert!(e.to_string().contains("invalid exec id"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let ended = |code, status| MainExit {
            result: "exit-code".into(),
            code,
            status,
        };
        assert_eq!(exit_code(&ended(1, 3)), Some(3));
        assert_eq!(exit_code(&ended(1, 0)), Some(0));
        // SIGKILL, and SIGSEGV with a core.
        assert_eq!(exit_code(&ended(2, 9)), Some(137));
        assert_eq!(exit_code(&ended(3, 11)), Some(139));
        assert_eq!(exit_code(&ended(0, 0)), None);
    }

    #[test]
    fn output_budget_caps_both_streams_together() {
        let b = Budget::default();
        let mut sent = 0;
        for _ in 0..(MAX_OUTPUT / CHUNK) {
            sent += b.take(CHUNK);
        }
        assert_eq!(sent, MAX_OUTPUT);
        assert_eq!(b.dropped(), 0);
        assert_eq!(b.take(10), 0);
        assert_eq!(b.take(CHUNK), 0);
        assert_eq!(b.dropped(), 10 + CHUNK);
        let b = Budget::default();
        b.take(MAX_OUTPUT - 5);
        assert_eq!(b.take(8), 5, "the tail that still fits");
        assert_eq!(b.dropped(), 3);
    }

    #[test]
    fn failures_say_what_happened_and_keep_the_note() {
        let r = result("ab".into(), Err("timed out".into()), "; 3 bytes dropped");
        assert_eq!(r.status, command_result::Status::Failed as i32);
        assert_eq!(r.message, "timed out; 3 bytes dropped");
        let r = result("ab".into(), Ok(3), "");
        assert_eq!(
            (r.status, r.exit_code),
            (command_result::Status::Ok as i32, 3)
        );
        assert!(r.message.is_empty());
    }
}
