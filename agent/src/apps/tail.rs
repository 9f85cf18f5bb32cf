//! TailLogs and StopLogs: stream an app's journal (or its log files) to one session.

use fleet_proto::spec::LogMode;
use fleet_proto::v1::{agent_message, LogLine, StopLogs, TailLogs};
use tokio::io::BufReader;
use tokio::sync::oneshot;

use super::{lock, AppError, Inner, Outcome};
use crate::clock::now_ms;
use crate::host_paths;
use crate::journal;

impl Inner {
    pub(super) async fn tail(&self, id: &str, t: TailLogs, session: Option<u64>) -> Outcome {
        let app = self.known(&t.app)?;
        let Some(session) = session else {
            return Err(AppError::NoSession);
        };
        let unit = host_paths::service_name(&app.name);
        let files = lock(&app.data).spec.logs.mode == LogMode::Files;
        let mut child = if files {
            let paths = [
                host_paths::access_log(&app.name),
                host_paths::error_log(&app.name),
            ];
            journal::spawn_files(&paths, t.lines, t.follow).map_err(|source| {
                AppError::LogReader {
                    program: "tail",
                    source,
                }
            })?
        } else {
            journal::spawn(&unit, t.lines, t.follow).map_err(|source| AppError::LogReader {
                program: "journalctl",
                source,
            })?
        };
        let stdout = child.stdout.take().ok_or(AppError::LogReaderStdout)?;
        let (stop_tx, mut stop_rx) = oneshot::channel();
        lock(&self.tails).insert(id.to_owned(), stop_tx);
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        let mut sent = 0u64;
        let ended = self.outbox.session_ended(session);
        tokio::pin!(ended);
        let why = loop {
            tokio::select! {
                line = journal::next_line(&mut reader, &mut buf) => match line {
                    Ok(Some(line)) => {
                        let msg = agent_message::Body::LogLine(LogLine {
                            tail_id: id.to_owned(),
                            host: String::new(),
                            line,
                            time_ms: now_ms(),
                        });
                        if !self.outbox.send_to(Some(session), msg).await {
                            break "session ended";
                        }
                        sent += 1;
                    }
                    Ok(None) => break "end of log",
                    Err(_) => break "log output unreadable",
                },
                _ = &mut stop_rx => break "stopped",
                _ = &mut ended => break "session ended",
            }
        };
        lock(&self.tails).remove(id);
        // Our own child, by its pid (tokio's Child); then reaped.
        let _ = child.start_kill();
        let _ = child.wait().await;
        Ok(format!("{sent} lines ({why})"))
    }

    pub(super) fn stop_tail(&self, s: StopLogs) -> String {
        match lock(&self.tails).remove(&s.tail_id) {
            Some(stop) => {
                let _ = stop.send(());
                format!("tail {} stopped", s.tail_id)
            }
            None => format!("no tail {} running", s.tail_id),
        }
    }
}
