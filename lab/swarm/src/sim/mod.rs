//! One simulated agent: enrolls through the real Join RPC with its own key and CSR, then
//! holds a real mTLS `AgentChannel.Session` from its own loopback address, forever, the
//! way fleet-agent's `channel` does: Hello first, a heartbeat every interval, exactly one
//! CommandResult per command, app and firewall state after every Welcome, and a jittered
//! backoff before it comes back. Host work (systemd, nft, venvs) is replaced by state kept
//! in memory; everything on the wire is what a real agent sends.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use fleet_proto::peer::CaPin;
use fleet_proto::transport::{connect_from, identity_client_config, pinned_client_config};
use fleet_proto::v1::agent_channel_client::AgentChannelClient;
use fleet_proto::v1::enrollment_client::EnrollmentClient;
use fleet_proto::v1::{
    agent_message, command, controller_message, AgentMessage, AppState, Command, ControllerMessage,
    FirewallState, Heartbeat, Hello, HostFacts, JoinRequest, ReleaseData,
};
use rcgen::{CertificateParams, DnType, KeyPair};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;

use crate::reconnect::Reconnect;
use fleet_proto::reconnect::{self, retry_spread, Backoff};

mod commands;
mod traffic;

pub use traffic::Traffic;

/// The agent's own bounds (agent/src/channel).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const OUTBOX: usize = 64;
const CAPABILITIES: &[&str] = &["renew", "agent-upgrade"];
/// Journal lines a simulated TailLogs sends at most.
const MAX_TAIL_LINES: u32 = 20;

/// What every agent of a worker shares.
pub struct Common {
    pub controller: String,
    pub heartbeat: Duration,
    pub reconnect: Reconnect,
    /// Download releases through the stream (FetchRelease) before Stage/Activate succeed.
    pub fetch: bool,
    /// The agent's `reconnect_spread`.
    pub spread: Duration,
    /// Agents with a Welcomed stream right now.
    pub up: AtomicUsize,
    pub receipts: mpsc::UnboundedSender<Receipt>,
    /// What the simulated apps serve (QueryRequests).
    pub traffic: Arc<Traffic>,
}

/// A command as it reached an agent, for fan-out latencies.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// Global host index.
    pub a: u64,
    /// Command kind (snake case, as in the proto).
    pub k: String,
    /// Wall clock, Unix milliseconds (same machine as the orchestrator).
    pub ms: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct Agent {
    pub index: u64,
    pub name: String,
    pub source: IpAddr,
    tls: Arc<rustls::ClientConfig>,
    /// Stream attempts since start, and since the last `mark` (one reconnect wave).
    pub attempts: AtomicU32,
    pub wave_attempts: AtomicU32,
    /// The reconnect window (ms) the last Welcome named, as the agent keeps it.
    spread_hint: std::sync::atomic::AtomicU64,
    up: AtomicBool,
    host: Mutex<Host>,
    /// Release downloads waiting for their ReleaseData, by request id.
    fetches: Mutex<HashMap<String, mpsc::Sender<ReleaseData>>>,
    /// The request counters' epoch: when this agent "process" started.
    epoch: u64,
}

#[derive(Default)]
struct Host {
    apps: BTreeMap<String, App>,
    firewall: FirewallState,
    /// apply_id and policy sha256 of the change waiting for its confirmation.
    pending: Option<(String, String)>,
    package_version: String,
    tails: HashMap<String, oneshot::Sender<()>>,
    /// sha256 of the releases present on this host.
    staged: std::collections::BTreeSet<String>,
}

#[derive(Clone)]
struct App {
    release: String,
    /// How long each release served, for the request counts.
    served: traffic::Served,
    restarts: u32,
    since: i64,
    pid: u32,
}

/// Why a session ended, and whether the agent must come back at once.
#[derive(Clone, Copy)]
enum End {
    /// With the reconnect window a shutting-down controller advertised, if it did.
    Lost(Option<Duration>),
    Upgraded,
}

pub struct Enrollment {
    pub controller: String,
    pub pin: CaPin,
    pub token: String,
}

impl Agent {
    /// Makes a key and CSR and joins as `name` from `join_source`.
    pub async fn enroll(
        index: u64,
        name: String,
        source: IpAddr,
        join_source: IpAddr,
        e: &Enrollment,
    ) -> Result<Arc<Agent>> {
        let key = KeyPair::generate().context("generate a key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, &name);
        let csr = params.serialize_request(&key)?.pem()?;
        let channel = connect_from(
            &e.controller,
            Some(join_source),
            pinned_client_config(e.pin),
            CONNECT_TIMEOUT,
        )
        .await
        .with_context(|| format!("{name}: connect for Join from {join_source}"))?;
        let resp = tokio::time::timeout(
            CALL_TIMEOUT,
            EnrollmentClient::new(channel).join(JoinRequest {
                token: e.token.clone(),
                csr_pem: csr,
                name: name.clone(),
            }),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{name}: Join not answered within {CALL_TIMEOUT:?}"))?
        .map_err(JoinRefused)?
        .into_inner();
        let tls = identity_client_config(&resp.ca_pem, &resp.cert_pem, &key.serialize_pem())
            .with_context(|| format!("{name}: the issued certificate is not usable"))?;
        Ok(Arc::new(Agent {
            index,
            name,
            source,
            tls,
            attempts: AtomicU32::new(0),
            wave_attempts: AtomicU32::new(0),
            spread_hint: Default::default(),
            up: AtomicBool::new(false),
            fetches: Mutex::new(HashMap::new()),
            epoch: now_ms(),
            host: Mutex::new(Host {
                firewall: FirewallState {
                    state: "none".into(),
                    ..Default::default()
                },
                ..Default::default()
            }),
        }))
    }

    /// One session after another, forever (like `Agent::supervise`).
    pub async fn supervise(self: Arc<Self>, common: Arc<Common>) {
        let mut backoff =
            Backoff::new(reconnect::INITIAL, reconnect::DEFAULT_MAX).with_spread(common.spread);
        loop {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            self.wave_attempts.fetch_add(1, Ordering::Relaxed);
            let mut welcomed = false;
            let end = self.session(&common, &mut welcomed).await;
            if self.up.swap(false, Ordering::SeqCst) {
                common.up.fetch_sub(1, Ordering::SeqCst);
            }
            match end {
                End::Lost(Some(advertised)) => backoff.session_lost_within(advertised),
                _ if welcomed => backoff.session_lost_within(Duration::from_millis(
                    self.spread_hint.load(Ordering::Relaxed),
                )),
                _ => {}
            }
            let delay = match (end, common.reconnect) {
                (End::Upgraded, _) | (_, Reconnect::Immediate) => Duration::ZERO,
                (End::Lost(_), Reconnect::Agent) => backoff.next_delay(),
            };
            sleep(delay).await;
        }
    }

    fn hello(&self) -> Hello {
        let package_version = lock(&self.host).package_version.clone();
        Hello {
            facts: Some(HostFacts {
                hostname: self.name.clone(),
                os: "Debian GNU/Linux 12 (bookworm)".into(),
                kernel: "6.1.0-28-amd64".into(),
                cores: 2,
                memory_bytes: 4 << 30,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                metrics_port: 9101,
                package_version,
            }),
            heartbeat_interval_ms: 10_000,
            capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    async fn session(self: &Arc<Self>, common: &Common, welcomed: &mut bool) -> End {
        let Ok(channel) = connect_from(
            &common.controller,
            Some(self.source),
            self.tls.clone(),
            CONNECT_TIMEOUT,
        )
        .await
        else {
            return End::Lost(None);
        };
        let (tx, rx) = mpsc::channel(OUTBOX);
        let mut hello = self.hello();
        hello.heartbeat_interval_ms = common.heartbeat.as_millis().min(u32::MAX as u128) as u32;
        if tx.try_send(msg(agent_message::Body::Hello(hello))).is_err() {
            return End::Lost(None);
        }
        let mut client = AgentChannelClient::new(channel);
        let resp = match tokio::time::timeout(OPEN_TIMEOUT, client.session(ReceiverStream::new(rx)))
            .await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(status)) => return End::Lost(retry_spread(&status)),
            Err(_) => return End::Lost(None),
        };
        let mut inbound = resp.into_inner();
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + common.heartbeat, common.heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let welcome_by = Instant::now() + WELCOME_TIMEOUT;
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    seq += 1;
                    // Dropped, not queued, when the controller does not read (as the agent).
                    let _ = tx.try_send(msg(agent_message::Body::Heartbeat(Heartbeat { seq })));
                }
                m = inbound.message() => match m {
                    Ok(Some(m)) => {
                        if let Some(end) = self.handle(m, common, &tx, welcomed).await {
                            return end;
                        }
                    }
                    Ok(None) => return End::Lost(None),
                    Err(status) => return End::Lost(retry_spread(&status)),
                },
                _ = tokio::time::sleep_until(welcome_by), if !*welcomed => return End::Lost(None),
            }
        }
    }

    async fn handle(
        self: &Arc<Self>,
        m: ControllerMessage,
        common: &Common,
        tx: &mpsc::Sender<AgentMessage>,
        welcomed: &mut bool,
    ) -> Option<End> {
        match m.body {
            Some(controller_message::Body::Welcome(w)) if !*welcomed => {
                *welcomed = true;
                self.spread_hint
                    .store(w.reconnect_spread_ms, Ordering::Relaxed);
                if !self.up.swap(true, Ordering::SeqCst) {
                    common.up.fetch_add(1, Ordering::SeqCst);
                }
                // Everything again: the controller may have missed changes meanwhile.
                let (apps, fw) = {
                    let h = lock(&self.host);
                    let apps: Vec<AppState> = h.apps.iter().map(|(n, a)| app_state(n, a)).collect();
                    let fw = (h.firewall.state != "none").then(|| h.firewall.clone());
                    (apps, fw)
                };
                for s in apps {
                    let _ = tx.send(msg(agent_message::Body::AppState(s))).await;
                }
                if let Some(fw) = fw {
                    let _ = tx.send(msg(agent_message::Body::Firewall(fw))).await;
                }
                None
            }
            Some(controller_message::Body::Command(c)) => {
                let _ = common.receipts.send(Receipt {
                    a: self.index,
                    k: kind_name(&c).into(),
                    ms: now_ms(),
                });
                let fetch = common.fetch;
                let traffic = common.traffic.clone();
                let upgrade = matches!(c.kind, Some(command::Kind::UpgradeAgent(_)));
                let agent = self.clone();
                let tx2 = tx.clone();
                if upgrade {
                    // dpkg would restart the agent: answer, then come back as the new version.
                    let result = agent.command(c, &tx2, fetch, &traffic).await;
                    let _ = tx.send(msg(agent_message::Body::Result(result))).await;
                    sleep(Duration::from_millis(200)).await;
                    return Some(End::Upgraded);
                }
                // Commands may take a while (min_healthy): each answers from its own task,
                // so heartbeats go on meanwhile.
                tokio::spawn(async move {
                    let result = agent.command(c, &tx2, fetch, &traffic).await;
                    let _ = tx2.send(msg(agent_message::Body::Result(result))).await;
                });
                None
            }
            Some(controller_message::Body::ReleaseData(d)) => {
                let waiting = lock(&self.fetches).get(&d.request_id).cloned();
                if let Some(w) = waiting {
                    let _ = w.send(d).await;
                }
                None
            }
            // Renewal is never asked for: runs are far shorter than 2/3 of the
            // certificate's lifetime.
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Join refused: {:?}: {}", .0.code(), .0.message())]
pub struct JoinRefused(pub tonic::Status);

fn app_state(name: &str, a: &App) -> AppState {
    AppState {
        app: name.to_owned(),
        release: a.release.clone(),
        active_state: "active".into(),
        sub_state: "running".into(),
        result: "success".into(),
        healthy: true,
        restarts: a.restarts,
        main_pid: a.pid,
        since: a.since,
        crash_loop: false,
        time_ms: now_ms() as i64,
        health_detail: String::new(),
        stopped: false,
    }
}

fn kind_name(c: &Command) -> &'static str {
    match &c.kind {
        Some(command::Kind::Ping(_)) => "ping",
        Some(command::Kind::Stage(_)) => "stage",
        Some(command::Kind::Activate(_)) => "activate",
        Some(command::Kind::Restart(_)) => "restart",
        Some(command::Kind::TailLogs(_)) => "tail_logs",
        Some(command::Kind::StopLogs(_)) => "stop_logs",
        Some(command::Kind::ApplyFirewall(_)) => "apply_firewall",
        Some(command::Kind::ConfirmFirewall(_)) => "confirm_firewall",
        Some(command::Kind::RunPreStart(_)) => "run_pre_start",
        Some(command::Kind::UpgradeAgent(_)) => "upgrade_agent",
        Some(command::Kind::QueryRequests(_)) => "query_requests",
        Some(command::Kind::Exec(_)) => "exec",
        Some(command::Kind::CancelExec(_)) => "cancel_exec",
        Some(command::Kind::StopApp(_)) => "stop_app",
        Some(command::Kind::StartApp(_)) => "start_app",
        Some(command::Kind::RemoveApp(_)) => "remove_app",
        None => "unknown",
    }
}

fn sha(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn msg(body: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
