//! The real binary against a minimal in-process stand-in for the controller (loopback only):
//! join with pinning, then `run` — Hello first, heartbeats, commands answered, renewal over
//! the same stream, SIGTERM. The controller's real behaviour is tested in controller/tests;
//! this pins down what the agent sends and when.

use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_proto::peer::CaPin;
use fleet_proto::v1::agent_channel_server::{AgentChannel, AgentChannelServer};
use fleet_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use fleet_proto::v1::{
    agent_message, command, command_result, controller_message, AgentMessage, Command,
    ControllerMessage, JoinRequest, JoinResponse, Ping, QueryRequests, RenewResponse, Welcome,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");
const TOKEN: &str = "good-token";

struct Ca {
    pem: String,
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An agent certificate for the CSR's key, valid from `from` for `secs` seconds.
    fn issue_agent(&self, csr_pem: &str, name: &str, from: i64, secs: i64) -> String {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://fleet.local/agent/{name}")
                .try_into()
                .unwrap(),
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = time_at(from);
        params.not_after = time_at(from + secs);
        params
            .signed_by(&csr.public_key, &self.issuer)
            .unwrap()
            .pem()
    }
}

fn time_at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One open stream: what the agent sent, and a way to send to it.
type Session = (
    mpsc::Receiver<AgentMessage>,
    mpsc::Sender<Result<ControllerMessage, Status>>,
);

/// What the stand-in controller saw, and a way to talk to the connected agent.
#[derive(Default)]
struct Shared {
    /// Certificates issued at join: (seconds already elapsed, lifetime).
    join_validity: (i64, i64),
    sessions: Vec<Session>,
}

#[derive(Clone)]
struct Controller {
    ca: Arc<Ca>,
    shared: Arc<Mutex<Shared>>,
}

#[tonic::async_trait]
impl Enrollment for Controller {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = req.into_inner();
        if req.token != TOKEN {
            return Err(Status::permission_denied("token expired"));
        }
        let (elapsed, lifetime) = self.shared.lock().unwrap().join_validity;
        let not_before = now() - elapsed;
        let cert_pem = self
            .ca
            .issue_agent(&req.csr_pem, &req.name, not_before, lifetime);
        Ok(Response::new(JoinResponse {
            cert_pem,
            ca_pem: self.ca.pem.clone(),
            identity: format!("spiffe://fleet.local/agent/{}", req.name),
            not_after: not_before + lifetime,
        }))
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentChannel for Controller {
    type SessionStream = OutStream;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let mut inbound = req.into_inner();
        let (in_tx, in_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                if in_tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        self.shared.lock().unwrap().sessions.push((in_rx, out_tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// Starts the stand-in on a loopback port: TLS 1.3, h2, client certificate optional (join
/// is anonymous), the CA sent in the chain so the agent's pin can find it.
async fn start(ca: Arc<Ca>, shared: Arc<Mutex<Shared>>) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
        SanType::URI("spiffe://fleet.local/controller".try_into().unwrap()),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der.clone())).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![
                CertificateDer::from(cert.der().to_vec()),
                CertificateDer::from(ca.der.clone()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (conn_tx, conn_rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let conn_tx = conn_tx.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = conn_tx.send(Ok::<_, std::io::Error>(tls)).await;
                }
            });
        }
    });
    let controller = Controller { ca, shared };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EnrollmentServer::new(controller.clone()))
            .add_service(AgentChannelServer::new(controller))
            .serve_with_incoming(ReceiverStream::new(conn_rx)),
    );
    addr
}

async fn fleet_agent(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .await
        .unwrap()
}

async fn next_session(shared: &Arc<Mutex<Shared>>) -> Session {
    for _ in 0..200 {
        if let Some(s) = shared.lock().unwrap().sessions.pop() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent never opened a session");
}

async fn recv(rx: &mut mpsc::Receiver<AgentMessage>) -> agent_message::Body {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("agent sent nothing for 10s")
        .expect("agent closed the stream")
        .body
        .expect("empty message")
}

fn to_agent(body: controller_message::Body) -> Result<ControllerMessage, Status> {
    Ok(ControllerMessage { body: Some(body) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_then_run_speaks_the_protocol() {
    let ca = Arc::new(Ca::new());
    let shared = Arc::new(Mutex::new(Shared {
        join_validity: (1, 3600),
        ..Shared::default()
    }));
    let addr = start(ca.clone(), shared.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let state_s = state.to_str().unwrap();
    let pin = CaPin::of_der(&ca.der).to_string();
    let wrong_pin = CaPin::of_der(b"another ca").to_string();

    // Wrong pin: refused in the handshake, before the token is sent.
    let out = fleet_agent(&[
        "join",
        "--controller",
        &addr,
        "--token",
        TOKEN,
        "--ca-pin",
        &wrong_pin,
        "--state-dir",
        state_s,
        "--name",
        "web-1",
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not match --ca-pin"), "{err}");
    assert!(!state.exists());

    // Refused token: the controller's reason is passed through.
    let out = fleet_agent(&[
        "join",
        "--controller",
        &addr,
        "--token",
        "bad",
        "--ca-pin",
        &pin,
        "--state-dir",
        state_s,
        "--name",
        "web-1",
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("join token refused by the controller: token expired"),
        "{err}"
    );
    assert!(!state.exists());

    // Join: a certificate that is already past 2/3 of its life, so `run` renews at once.
    shared.lock().unwrap().join_validity = (25, 30);
    let out = fleet_agent(&[
        "join",
        "--controller",
        &addr,
        "--token",
        TOKEN,
        "--ca-pin",
        &pin,
        "--state-dir",
        state_s,
        "--name",
        "web-1",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "enrolled as spiffe://fleet.local/agent/web-1; start the agent: systemctl enable --now fleet-agent"
    );
    let cert_before = std::fs::read_to_string(state.join("agent.crt")).unwrap();

    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, "max_backoff = \"1s\"\n").unwrap();
    let mut agent = tokio::process::Command::new(BIN)
        .args(["run", "--state-dir", state_s, "--heartbeat-interval", "1s"])
        .args(["--config", config.to_str().unwrap()])
        // Tests stay on loopback and must not contend for the default port 9437.
        .args(["--metrics-listen", "off"])
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (mut rx, tx) = next_session(&shared).await;

    // Hello first, with facts and capabilities.
    let agent_message::Body::Hello(hello) = recv(&mut rx).await else {
        panic!("first message is not Hello");
    };
    assert_eq!(hello.heartbeat_interval_ms, 1000);
    assert_eq!(
        hello.capabilities,
        vec!["renew".to_string(), "agent-upgrade".to_string()]
    );
    let facts = hello.facts.unwrap();
    assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(facts.cores >= 1 && facts.memory_bytes > 0);

    tx.send(to_agent(controller_message::Body::Welcome(Welcome {
        controller_version: "test".into(),
        server_time: now(),
        reconnect_spread_ms: 0,
        // Not a usable list: the agent keeps the address it joined with.
        controllers: vec![addr.clone(), "nope".into()],
    })))
    .await
    .unwrap();
    tx.send(to_agent(controller_message::Body::Command(Command {
        id: "p1".into(),
        kind: Some(command::Kind::Ping(Ping {})),
    })))
    .await
    .unwrap();
    tx.send(to_agent(controller_message::Body::Command(Command {
        id: "future".into(),
        kind: None,
    })))
    .await
    .unwrap();
    // Answered by the app manager (from a task of its own, so maybe after the others):
    // this agent runs no app, so it has no counts to give.
    tx.send(to_agent(controller_message::Body::Command(Command {
        id: "q1".into(),
        kind: Some(command::Kind::QueryRequests(QueryRequests {
            app: "shop".into(),
        })),
    })))
    .await
    .unwrap();
    // An empty oneof (a message kind from the future) is ignored.
    tx.send(Ok(ControllerMessage { body: None })).await.unwrap();

    let mut results = Vec::new();
    let mut renew = None;
    let mut heartbeats = Vec::new();
    let mut query = None;
    while results.len() < 2 || query.is_none() || renew.is_none() || heartbeats.is_empty() {
        match recv(&mut rx).await {
            agent_message::Body::Result(r) if r.id == "q1" => query = Some(r),
            agent_message::Body::Result(r) => results.push((r.id.clone(), r.status())),
            agent_message::Body::Renew(r) => renew = Some(r),
            agent_message::Body::Heartbeat(h) => heartbeats.push(h.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        results,
        vec![
            ("p1".to_string(), command_result::Status::Ok),
            ("future".to_string(), command_result::Status::Unsupported),
        ]
    );
    let query = query.unwrap();
    assert_eq!(query.status(), command_result::Status::Failed, "{query:?}");
    assert_eq!(query.message, "app shop is not deployed on this host");
    assert!(query.request_stats.is_none());
    assert_eq!(heartbeats[0], 1);

    // Renewal on the same stream: same key, new certificate written in place.
    let renew = renew.unwrap();
    let renewed = ca.issue_agent(&renew.csr_pem, "web-1", now() - 1, 3600);
    tx.send(to_agent(controller_message::Body::Renewed(RenewResponse {
        request_id: renew.request_id,
        cert_pem: renewed.clone(),
        ca_pem: ca.pem.clone(),
        not_after: now() + 3600,
        error: String::new(),
    })))
    .await
    .unwrap();
    let mut written = false;
    for _ in 0..100 {
        if std::fs::read_to_string(state.join("agent.crt")).unwrap() == renewed {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(written, "renewed certificate not written");
    assert_ne!(cert_before, renewed);
    // The stream is still up: heartbeats keep coming, numbered on.
    let last = *heartbeats.last().unwrap();
    loop {
        if let agent_message::Body::Heartbeat(h) = recv(&mut rx).await {
            assert!(h.seq > last);
            break;
        }
    }

    // The controller addresses change while the stream is up: a later Welcome brings them,
    // and the agent keeps them for its next sessions (it was welcomed before).
    let controller_line = || {
        let text = std::fs::read_to_string(state.join("agent.toml")).unwrap();
        text.parse::<toml::Table>().unwrap()["controller"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        controller_line(),
        addr,
        "an unusable list changed agent.toml"
    );
    let other = "127.0.0.1:1";
    tx.send(to_agent(controller_message::Body::Welcome(Welcome {
        controllers: vec![addr.clone(), other.into()],
        ..Default::default()
    })))
    .await
    .unwrap();
    let want = format!("{addr},{other}");
    for _ in 0..100 {
        if controller_line() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(controller_line(), want);

    // The controller goes away: the agent comes back with a new session, Hello first
    // (after trying the other address, where nothing listens).
    tx.send(Err(Status::unavailable("restarting")))
        .await
        .unwrap();
    drop((rx, tx));
    let (mut rx, tx) = next_session(&shared).await;
    assert!(matches!(recv(&mut rx).await, agent_message::Body::Hello(_)));

    // The controller refuses this identity: logged as an operator problem, and the agent
    // keeps trying (at the max backoff, 1 s here) instead of exiting.
    tx.send(Err(Status::permission_denied("host removed")))
        .await
        .unwrap();
    drop((rx, tx));
    let (mut rx, _tx) = next_session(&shared).await;
    assert!(matches!(recv(&mut rx).await, agent_message::Body::Hello(_)));

    // SIGTERM: prompt, clean exit.
    let pid = nix::unistd::Pid::from_raw(agent.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), agent.wait())
        .await
        .expect("agent did not stop within 5s after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    use tokio::io::AsyncReadExt;
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(log.contains("connected to controller"), "{log}");
    assert!(log.contains("certificate renewed"), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    assert!(
        log.contains(&format!(
            "certificate refused by controller: host removed — re-enroll with a new token: \
             fleet-agent join --force --controller {want} --token TOKEN --ca-pin {pin} --state-dir {state_s}"
        )),
        "{log}"
    );
}
