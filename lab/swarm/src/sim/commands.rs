//! The answers to the controller's commands: what fleet-agent's apps, firewall and upgrade
//! modules send, with the host work replaced by state kept in memory.

use std::time::Duration;

use fleet_proto::v1::{
    agent_message, command, command_result, AgentMessage, Command, CommandResult, FetchRelease,
    LogLine, ReleaseData,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep;

use super::{app_state, lock, msg, now_ms, sha, Agent, App, Traffic, CALL_TIMEOUT, MAX_TAIL_LINES};

impl Agent {
    /// The one result of `c`, after the state reports the real agent sends on the way.
    pub(super) async fn command(
        &self,
        c: Command,
        tx: &mpsc::Sender<AgentMessage>,
        fetch: bool,
        traffic: &Traffic,
    ) -> CommandResult {
        let id = c.id.clone();

        let outcome: Result<String, String> = match c.kind {
            Some(command::Kind::Ping(_)) => Ok(String::new()),
            Some(command::Kind::Stage(s)) => match self.stage(&s.sha256, s.size, tx, fetch).await {
                Ok(()) => Ok(format!("{} {} staged", s.app, s.version)),
                Err(e) => Err(e),
            },
            Some(command::Kind::Activate(a)) => self.activate(a, tx, fetch).await,
            Some(command::Kind::Restart(r)) => {
                let state = {
                    let mut h = lock(&self.host);
                    h.apps.get_mut(&r.app).map(|app| {
                        app.since = (now_ms() / 1000) as i64;
                        app.pid = 1000 + (rand::random::<u32>() % 60_000);
                        app_state(&r.app, app)
                    })
                };
                match state {
                    Some(s) => {
                        let _ = tx.send(msg(agent_message::Body::AppState(s))).await;
                        Ok(if r.reload { "reloaded" } else { "restarted" }.into())
                    }
                    None => Err(format!("app {} is not deployed on this host", r.app)),
                }
            }
            Some(command::Kind::TailLogs(t)) => self.tail(&id, t, tx).await,
            Some(command::Kind::StopLogs(s)) => {
                let stop = lock(&self.host).tails.remove(&s.tail_id);
                Ok(match stop {
                    Some(stop) => {
                        let _ = stop.send(());
                        "stopped".into()
                    }
                    None => "not tailing".into(),
                })
            }
            Some(command::Kind::RunPreStart(p)) => Ok(format!("pre_start of {} ok", p.version)),
            Some(command::Kind::ApplyFirewall(a)) => {
                match fleet_proto::firewall::Policy::parse(&a.policy_toml) {
                    Err(e) => Err(format!("invalid policy: {e}")),
                    Ok(p) => {
                        let secs = p.confirm_timeout.as_secs();
                        let state = {
                            let mut h = lock(&self.host);
                            h.pending = Some((a.apply_id.clone(), sha(&a.policy_toml)));
                            h.firewall.state = "pending".into();
                            h.firewall.detail = format!("reverts in {secs}s unless confirmed");
                            h.firewall.time_ms = now_ms() as i64;
                            h.firewall.clone()
                        };
                        let _ = tx.send(msg(agent_message::Body::Firewall(state))).await;
                        Ok(format!("applied; reverts in {secs}s unless confirmed"))
                    }
                }
            }
            Some(command::Kind::ConfirmFirewall(cf)) => {
                let state = {
                    let mut h = lock(&self.host);
                    match h.pending.take() {
                        Some((id, sha)) if id == cf.apply_id => {
                            h.firewall.state = "confirmed".into();
                            h.firewall.policy_sha256 = sha;
                            h.firewall.detail = String::new();
                            h.firewall.time_ms = now_ms() as i64;
                            Some(h.firewall.clone())
                        }
                        other => {
                            h.pending = other;
                            None
                        }
                    }
                };
                match state {
                    Some(s) => {
                        let _ = tx.send(msg(agent_message::Body::Firewall(s))).await;
                        Ok("confirmed".into())
                    }
                    None => Err(format!(
                        "no firewall change {} is waiting for confirmation",
                        cf.apply_id
                    )),
                }
            }
            Some(command::Kind::UpgradeAgent(u)) => {
                lock(&self.host).package_version = u.version.clone();
                Ok(format!("installing fleet-agent {}", u.version))
            }
            // The only answer with a payload besides the message.
            Some(command::Kind::QueryRequests(q)) => {
                return self.query_requests(id, &q.app, traffic)
            }
            // Not simulated: the swarm measures the controller's fan-out, not these.
            Some(
                command::Kind::Exec(_)
                | command::Kind::CancelExec(_)
                | command::Kind::StopApp(_)
                | command::Kind::StartApp(_)
                | command::Kind::RemoveApp(_),
            )
            | None => Err(format!(
                "fleet-agent {} does not support this command",
                env!("CARGO_PKG_VERSION")
            )),
        };
        let (status, message) = match outcome {
            Ok(m) => (command_result::Status::Ok, m),
            Err(m) => (command_result::Status::Failed, m),
        };
        CommandResult {
            id,
            status: status as i32,
            message,
            request_stats: None,
            exit_code: 0,
        }
    }

    /// Counts as fleet-agent's access-log reader would have them (see `traffic`).
    fn query_requests(&self, id: String, app: &str, traffic: &Traffic) -> CommandResult {
        let h = lock(&self.host);
        let (status, message, stats) = match h.apps.get(app) {
            Some(a) => (
                command_result::Status::Ok,
                String::new(),
                Some(traffic.stats(self.epoch, &a.served, now_ms())),
            ),
            None => (
                command_result::Status::Failed,
                format!("app {app} is not deployed on this host"),
                None,
            ),
        };
        CommandResult {
            id,
            status: status as i32,
            message,
            request_stats: stats,
            exit_code: 0,
        }
    }

    /// Makes the release present, downloading it through the stream like the agent's
    /// fetcher (sha256 and size checked, bytes not kept).
    async fn stage(
        &self,
        sha256: &str,
        size: u64,
        tx: &mpsc::Sender<AgentMessage>,
        fetch: bool,
    ) -> Result<(), String> {
        if !fetch || lock(&self.host).staged.contains(sha256) {
            return Ok(());
        }
        let id = hex::encode(rand::random::<[u8; 16]>());
        let (data_tx, mut data_rx) = mpsc::channel(16);
        lock(&self.fetches).insert(id.clone(), data_tx);
        let got = self.download(&id, sha256, tx, &mut data_rx).await;
        lock(&self.fetches).remove(&id);
        let (len, digest) = got?;
        if len != size || digest != sha256 {
            return Err(format!(
                "release {sha256}: got {len} bytes with sha256 {digest}, expected {size}"
            ));
        }
        lock(&self.host).staged.insert(sha256.to_owned());
        Ok(())
    }

    async fn download(
        &self,
        id: &str,
        sha256: &str,
        tx: &mpsc::Sender<AgentMessage>,
        data: &mut mpsc::Receiver<ReleaseData>,
    ) -> Result<(u64, String), String> {
        use sha2::{Digest, Sha256};
        let ask = FetchRelease {
            request_id: id.to_owned(),
            sha256: sha256.to_owned(),
            offset: 0,
        };
        tx.send(msg(agent_message::Body::Fetch(ask)))
            .await
            .map_err(|_| "session ended".to_owned())?;
        let mut hash = Sha256::new();
        let mut pos = 0u64;
        loop {
            let chunk = tokio::time::timeout(CALL_TIMEOUT, data.recv())
                .await
                .map_err(|_| "release download stalled".to_owned())?
                .ok_or_else(|| "session ended".to_owned())?;
            if !chunk.error.is_empty() {
                return Err(chunk.error);
            }
            if chunk.offset != pos {
                return Err(format!(
                    "chunk at {} where {pos} was expected",
                    chunk.offset
                ));
            }
            hash.update(&chunk.data);
            pos += chunk.data.len() as u64;
            if chunk.last {
                return Ok((pos, hex::encode(hash.finalize())));
            }
        }
    }

    async fn tail(
        &self,
        id: &str,
        t: fleet_proto::v1::TailLogs,
        tx: &mpsc::Sender<AgentMessage>,
    ) -> Result<String, String> {
        if !lock(&self.host).apps.contains_key(&t.app) {
            return Err(format!("app {} is not deployed on this host", t.app));
        }
        let lines = t.lines.min(MAX_TAIL_LINES);
        for n in 0..lines {
            let line = LogLine {
                tail_id: id.to_owned(),
                host: String::new(),
                line: format!("{} simulated log line {n}", self.name),
                time_ms: now_ms() as i64,
            };
            if tx
                .send(msg(agent_message::Body::LogLine(line)))
                .await
                .is_err()
            {
                return Ok(format!("{n} lines (session ended)"));
            }
        }
        if !t.follow {
            return Ok(format!("{lines} lines (end of log)"));
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        lock(&self.host).tails.insert(id.to_owned(), stop_tx);
        tokio::select! {
            _ = stop_rx => Ok(format!("{lines} lines (stopped)")),
            _ = tx.closed() => Ok(format!("{lines} lines (session ended)")),
        }
    }

    async fn activate(
        &self,
        a: fleet_proto::v1::Activate,
        tx: &mpsc::Sender<AgentMessage>,
        fetch: bool,
    ) -> Result<String, String> {
        let spec = fleet_proto::spec::AppSpec::parse(&a.spec_toml)
            .map_err(|e| format!("invalid app spec: {e}"))?;
        self.stage(&a.sha256, a.size, tx, fetch)
            .await
            .map_err(|e| format!("cannot stage release {}: {e}", a.version))?;
        let name = spec.name.to_string();
        let state = {
            let mut h = lock(&self.host);
            let app = h.apps.entry(name.clone()).or_insert(App {
                release: String::new(),
                served: Default::default(),
                restarts: 0,
                since: 0,
                pid: 0,
            });
            app.release = a.version.clone();
            app.served.switch(&a.version, now_ms());
            app.since = (now_ms() / 1000) as i64;
            app.pid = 1000 + (rand::random::<u32>() % 60_000);
            app_state(&name, app)
        };
        let _ = tx.send(msg(agent_message::Body::AppState(state))).await;
        // The agent answers once the app stayed healthy for min_healthy.
        sleep(Duration::from_millis(a.min_healthy_ms)).await;
        Ok(format!("{name} {} active and healthy", a.version))
    }
}
