//! Attacks on the controller, each in small, on loopback against the real binary: every
//! test checks the controller stays within its bounds AND still answers a real fleetctl
//! call afterwards. Attackers use loopback addresses other than 127.0.0.1 where a
//! per-source limit is under test, so that fleetctl (from 127.0.0.1) is a different source.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::transport::{connect, identity_client_config, pinned_client_config};
use fleet_proto::v1::admin_client::AdminClient;
use fleet_proto::v1::agent_channel_client::AgentChannelClient;
use fleet_proto::v1::enrollment_client::EnrollmentClient;
use fleet_proto::v1::{
    agent_message, AgentMessage, AppState, Event, FetchRelease, GetAppRequest, Hello, JoinRequest,
    ListAuditRequest, ListHostsRequest,
};
use rcgen::{CertificateParams, KeyPair};
use support::{http_get, wait_for, Fleet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn config_file(fleet_dir: &Path, toml: &str) -> String {
    let p = fleet_dir.join("abuse.toml");
    std::fs::write(&p, toml).unwrap();
    p.to_str().unwrap().to_owned()
}

/// Starts a controller with `toml` as its config file.
fn start_with(toml: &str) -> (Fleet, tempfile::TempDir) {
    let cfg = tempfile::tempdir().unwrap();
    let path = config_file(cfg.path(), toml);
    (Fleet::start(&["--config", &path]), cfg)
}

fn agent_config(state: &Path) -> Arc<rustls::ClientConfig> {
    identity_client_config(
        &read(&state.join("ca.crt")),
        &read(&state.join("agent.crt")),
        &read(&state.join("agent.key")),
    )
    .unwrap()
}

fn admin_config(dir: &Path) -> Arc<rustls::ClientConfig> {
    identity_client_config(
        &read(&dir.join("ca.crt")),
        &read(&dir.join("admin.crt")),
        &read(&dir.join("admin.key")),
    )
    .unwrap()
}

fn hello() -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Hello(Hello::default())),
    }
}

/// A full TLS connection with `config`, the HTTP/2 preface sent and whatever the server
/// sends first read (session tickets, if it issues any, arrive then); returns how the
/// handshake went.
async fn tls_once(addr: &str, config: Arc<rustls::ClientConfig>) -> rustls::HandshakeKind {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_millis(500), tls.read(&mut buf)).await;
    kind
}

/// Whether an agent client with `config` gets a session: a Hello sent and the first
/// message back (the Welcome) received.
async fn gets_a_session(addr: &str, config: Arc<rustls::ClientConfig>) -> bool {
    let session = async {
        let ch = connect(addr, config, T).await?;
        let mut s = AgentChannelClient::new(ch)
            .session(tokio_stream::iter(vec![hello()]))
            .await?
            .into_inner();
        s.message().await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    session.await.is_ok()
}

/// Finding 2: a removed host's certificate, with whatever TLS session it had, gets no
/// session, not even after its name re-enrolled with a new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tls_resumption_and_revoked_certificates_stay_out() {
    let fleet = Fleet::start(&[]);
    let state = fleet.join("web-1", &fleet.token(&[]));
    let old = agent_config(&state);
    assert_eq!(
        tls_once(&fleet.addr(), old.clone()).await,
        rustls::HandshakeKind::Full
    );
    // The same client config again: it would resume if the controller issued tickets.
    assert_eq!(
        tls_once(&fleet.addr(), old.clone()).await,
        rustls::HandshakeKind::Full,
        "the controller resumed a TLS session: revocation would not be checked"
    );
    let ch = connect(&fleet.addr(), old.clone(), T).await.unwrap();
    let mut s = AgentChannelClient::new(ch)
        .session(tokio_stream::iter(vec![hello()]))
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().expect("Welcome");
    drop(s);

    fleet.ok(&["host", "remove", "web-1"]);
    let again = fleet.dir.path().join("web-1-again");
    let out = fleet.agent_join("web-1", &fleet.token(&[]), &again, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = !gets_a_session(&fleet.addr(), old.clone()).await;
    assert!(refused, "the removed host's old key got a session");
    assert!(fleet.ok(&["hosts"]).contains("web-1"));
}

/// Finding 2, agent renewal: once a host has connected with its renewed certificate, the
/// one it replaced is revoked (while it is still within its lifetime), so a copy of the old
/// key and certificate is worth nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_agent_certificate_is_revoked_once_its_successor_connects() {
    let fleet = Fleet::start(&["--agent-cert-lifetime", "60s"]);
    let state = fleet.join("web-1", &fleet.token(&[]));
    let old = agent_config(&state);
    let first = read(&state.join("agent.crt"));
    let der = fleet_proto::transport::certs_from_pem(&first, "agent cert").unwrap();
    let old_expires = fleet_proto::peer::cert_info(&der[0]).unwrap().not_after;
    let agent = fleet.run_agent("web-1", &state);
    fleet.wait_state("web-1", "up", Duration::from_secs(15));
    // Renewed in-band at 2/3 of the lifetime; the stream stays on the old certificate.
    wait_for("the renewal", Duration::from_secs(60), || {
        (read(&state.join("agent.crt")) != first).then_some(())
    });
    // The agent's next session uses the renewed certificate.
    drop(agent);
    let _agent = fleet.run_agent("web-1", &state);
    wait_for("the new session", Duration::from_secs(15), || {
        fleet
            .controller_log()
            .contains(
                "previous certificate revoked: the host connected with its renewed one host=web-1",
            )
            .then_some(())
    });
    fleet.wait_state("web-1", "up", Duration::from_secs(15));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        now < old_expires,
        "the old certificate expired before the check: this run proves nothing"
    );
    let refused = !gets_a_session(&fleet.addr(), old.clone()).await;
    assert!(refused, "the replaced certificate still opened a session");
    assert_eq!(fleet.host_state("web-1").as_deref(), Some("up"));
}

/// Finding 2: renewing an admin identity revokes the old certificate, and any serial can
/// be revoked by hand.
#[test]
fn admin_certificates_are_revoked_on_renewal_and_on_demand() {
    let fleet = Fleet::start(&[]);
    let old = fleet.dir.path().join("old-admin");
    std::fs::create_dir_all(&old).unwrap();
    for f in ["ca.crt", "admin.crt", "admin.key"] {
        std::fs::copy(fleet.admin_dir().join(f), old.join(f)).unwrap();
    }
    let serial = |dir: &Path| {
        let out = std::process::Command::new(support::bin("fleetctl"))
            .args(["--controller", &fleet.addr(), "--identity"])
            .arg(dir)
            .args(["identity", "show", "--output", "json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["serial"].as_str().unwrap().to_owned()
    };
    let old_serial = serial(&old);
    fleet.ok(&["identity", "renew"]);
    let out = std::process::Command::new(support::bin("fleetctl"))
        .args(["--controller", &fleet.addr(), "--identity"])
        .arg(&old)
        .arg("hosts")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the renewed-away certificate still works"
    );
    assert!(
        fleet
            .ok(&["identity", "revoke", &old_serial])
            .contains("already revoked"),
        "renewal did not revoke {old_serial}"
    );
    // The renewed identity keeps working, and is revocable by serial like any other.
    fleet.ok(&["hosts"]);
    let new_serial = serial(&fleet.admin_dir());
    assert_ne!(new_serial, old_serial);
    assert!(fleet
        .ok(&["identity", "revoke", &new_serial])
        .contains("revoked"));
    assert!(!fleet.fleetctl(&["hosts"]).status.success());
}

/// Finding 3: thousands of invented method names, anonymous and as an admin: one
/// `unknown` label, a few log lines, and the controller keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_cannot_grow_metrics_or_logs() {
    let fleet = Fleet::start(&[]);
    let anon = connect(
        &fleet.addr(),
        pinned_client_config(fleet.pin.parse().unwrap()),
        T,
    )
    .await
    .unwrap();
    let admin = connect(&fleet.addr(), admin_config(&fleet.admin_dir()), T)
        .await
        .unwrap();
    for (i, ch) in [anon, admin].into_iter().enumerate() {
        let mut grpc = tonic::client::Grpc::new(ch);
        for n in 0..1500 {
            grpc.ready().await.unwrap();
            let path = format!("/fleet.v1.Admin/Scan{i}x{n}{}", "y".repeat(200));
            let r: Result<tonic::Response<ListHostsRequest>, _> = grpc
                .unary(
                    tonic::Request::new(ListHostsRequest::default()),
                    path.parse().unwrap(),
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            assert_eq!(r.unwrap_err().code(), tonic::Code::Unimplemented);
        }
    }
    let (status, metrics) = http_get(&fleet.http_addr(), "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        !metrics.contains("Scan"),
        "an invented method became a label"
    );
    assert!(
        metrics.contains("method=\"unknown\""),
        "refused calls are not counted"
    );
    assert!(metrics.len() < 64 * 1024, "{} bytes", metrics.len());
    let refused_lines = fleet
        .controller_log()
        .lines()
        .filter(|l| l.contains("call refused"))
        .count();
    assert!(
        refused_lines < 300,
        "{refused_lines} log lines for 3000 refused calls"
    );
    fleet.ok(&["hosts"]);
}

/// A TCP connection to `addr` from the loopback address `src`.
fn from(src: &str, addr: &str) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = rt.block_on(from_async(src, addr))?.into_std()?;
    s.set_nonblocking(false)?;
    Ok(s)
}

async fn from_async(src: &str, addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src.parse().unwrap(), 0))?;
    sock.connect(addr.parse().unwrap()).await
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_within(mut s: &TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 64];
    let start = Instant::now();
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) if start.elapsed() < within => continue,
            Ok(_) => return false,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Findings 4 and 5: 200 silent sockets from one source against a limit of 20, and
/// TLS connections that never send the HTTP/2 preface: refused or closed fast, and an
/// admin from another source is served at once meanwhile.
#[test]
fn silent_connections_are_capped_per_source_and_timed_out() {
    let (fleet, _cfg) = start_with(
        "max_connections_per_ip = 20\nmax_pending_handshakes_per_ip = 5\n\
         handshake_timeout = \"1s\"\npreface_timeout = \"1s\"\n",
    );
    let held: Vec<TcpStream> = (0..200)
        .map(|_| from("127.0.0.2", &fleet.addr()).unwrap())
        .collect();
    let start = Instant::now();
    fleet.ok(&["hosts"]);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "fleetctl took {:?} next to 200 silent sockets",
        start.elapsed()
    );
    // Beyond the per-source handshake cap, sockets are closed at once; the rest when their
    // handshake times out.
    let closed_fast = held
        .iter()
        .filter(|s| closed_within(s, Duration::from_millis(300)))
        .count();
    assert!(
        closed_fast >= 190,
        "only {closed_fast} of 200 closed at once"
    );
    assert!(
        held.iter()
            .all(|s| closed_within(s, Duration::from_secs(3))),
        "a silent socket outlived the handshake timeout"
    );
    drop(held);

    // TLS done, then silence: closed after the preface timeout.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let silent: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..10 {
            let tcp = from_async("127.0.0.3", &fleet.addr()).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls =
                tokio_rustls::TlsConnector::from(pinned_client_config(fleet.pin.parse().unwrap()))
                    .connect(name, tcp)
                    .await
                    .unwrap();
            v.push(tls);
        }
        v
    });
    let start = Instant::now();
    rt.block_on(async {
        for mut tls in silent {
            let mut b = [0u8; 64];
            loop {
                match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut b)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => continue,
                    Err(_) => panic!("a connection without HTTP/2 preface is still open"),
                }
            }
        }
    });
    assert!(start.elapsed() < Duration::from_secs(5));
    fleet.ok(&["hosts"]);
}

/// Finding 4: the controller caps streams per connection and says so in its HTTP/2
/// SETTINGS, which every client (fleetctl, agents, h2 libraries) honours; a client that
/// ignores it gets its extra streams refused by hyper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_capped() {
    let (fleet, _cfg) = start_with("max_concurrent_streams = 8\n");
    let tcp = tokio::net::TcpStream::connect(fleet.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls =
        tokio_rustls::TlsConnector::from(pinned_client_config(fleet.pin.parse().unwrap()))
            .connect(name, tcp)
            .await
            .unwrap();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    // The server's first frame is its SETTINGS: 9-byte header, then 6-byte entries.
    let mut head = [0u8; 9];
    tokio::time::timeout(T, tls.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[3], 0x4, "first frame is not SETTINGS");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).await.unwrap();
    let max_streams = body.chunks(6).find_map(|e| {
        (u16::from_be_bytes([e[0], e[1]]) == 0x3)
            .then(|| u32::from_be_bytes([e[2], e[3], e[4], e[5]]))
    });
    assert_eq!(
        max_streams,
        Some(8),
        "SETTINGS_MAX_CONCURRENT_STREAMS not sent"
    );
    fleet.ok(&["hosts"]);
}

/// Finding 6: one agent certificate asking for many downloads at once and reporting
/// invented apps: downloads beyond the cap are refused, invented apps are not kept, and
/// states go when the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_cannot_hoard_fetches_or_app_states() {
    let (fleet, _cfg) = start_with("max_fetches_per_session = 2\n");
    let state = fleet.join("web-1", &fleet.token(&[]));
    let spec = fleet.dir.path().join("shop.toml");
    std::fs::write(
        &spec,
        "name = \"shop\"\nserver = \"gunicorn\"\nentry = \"app:application\"\nlisten = \"127.0.0.1:8000\"\nhealth = { path = \"/health\", timeout = \"2s\" }\n",
    )
    .unwrap();
    fleet.ok(&["app", "apply", spec.to_str().unwrap()]);
    // 8 MiB of noise in a tarball: 32 chunks per download, more than the stream buffers.
    let tarball = {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        let mut tar = tar::Builder::new(gz);
        let data: Vec<u8> = (0..8u32 << 20)
            .map(|i| i.wrapping_mul(2654435761) as u8)
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "blob", &data[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap()
    };
    let path = fleet.dir.path().join("r.tar.gz");
    std::fs::write(&path, &tarball).unwrap();
    fleet.ok(&[
        "release",
        "upload",
        "shop",
        path.to_str().unwrap(),
        "--version",
        "1",
    ]);
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&tarball))
    };

    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tx.send(hello()).await.unwrap();
    let ch = connect(&fleet.addr(), agent_config(&state), T)
        .await
        .unwrap();
    let mut down = AgentChannelClient::new(ch)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    down.message().await.unwrap().expect("Welcome");
    let send = |body| {
        let tx = tx.clone();
        async move { tx.send(AgentMessage { body: Some(body) }).await.unwrap() }
    };
    for i in 0..20 {
        send(agent_message::Body::Fetch(FetchRelease {
            request_id: format!("f{i}"),
            sha256: sha.clone(),
            offset: 0,
        }))
        .await;
    }
    for i in 0..500 {
        send(agent_message::Body::AppState(AppState {
            app: format!("invented{i}"),
            ..Default::default()
        }))
        .await;
    }
    send(agent_message::Body::AppState(AppState {
        app: "shop".into(),
        release: "1".into(),
        ..Default::default()
    }))
    .await;
    let mut refused = 0;
    let mut finished = 0;
    while finished + refused < 20 {
        let msg = tokio::time::timeout(T, down.message())
            .await
            .expect("release data keeps coming")
            .unwrap()
            .unwrap();
        if let Some(fleet_proto::v1::controller_message::Body::ReleaseData(d)) = msg.body {
            if d.error.contains("max_fetches_per_session") {
                refused += 1;
            } else if d.last {
                assert!(d.error.is_empty(), "{}", d.error);
                finished += 1;
            }
        }
    }
    assert!(
        refused >= 10,
        "only {refused} of 20 concurrent fetches refused"
    );
    let status = || -> Vec<serde_json::Value> {
        serde_json::from_str(&fleet.ok(&["status", "--output", "json"])).unwrap()
    };
    wait_for("shop's state", T, || {
        (status().iter().any(|e| e["app"] == "shop")).then_some(())
    });
    assert_eq!(status().len(), 1, "invented apps were kept");
    drop(tx);
    drop(down);
    wait_for("the session's states to go", T, || {
        status().is_empty().then_some(())
    });
}

/// Finding 7: lists come in pages, and refused joins are limited fleet-wide and audited
/// only a few at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paged_and_refused_joins_bounded() {
    let (fleet, _cfg) =
        start_with("join_burst = 1000\njoin_per_minute = 1000\njoin_global_per_minute = 40\n");
    for name in ["web-1", "web-2", "web-3"] {
        fleet.join(name, &fleet.token(&[]));
    }
    let mut admin = AdminClient::new(
        connect(&fleet.addr(), admin_config(&fleet.admin_dir()), T)
            .await
            .unwrap(),
    );
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .list_hosts(ListHostsRequest {
                page_token: token,
                limit: 2,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.hosts.len() <= 2);
        names.extend(page.hosts.into_iter().map(|h| h.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, ["web-1", "web-2", "web-3"]);

    let (mut enroll, csr) = join_client(&fleet).await;
    let mut limited = 0;
    for i in 0..100 {
        let err = enroll
            .join(JoinRequest {
                token: format!("fleetjoin_{}", "a".repeat(40)),
                csr_pem: csr.clone(),
                // An enrolled name: the answer must not tell.
                name: if i == 0 {
                    "web-1".into()
                } else {
                    format!("x{i}")
                },
            })
            .await
            .unwrap_err();
        if i == 0 {
            assert!(
                !err.message().contains("already enrolled"),
                "an anonymous join learned that web-1 is enrolled: {}",
                err.message()
            );
        }
        if err.code() == tonic::Code::ResourceExhausted {
            assert!(err.message().contains("all sources"), "{}", err.message());
            limited += 1;
        }
    }
    assert!(
        limited >= 50,
        "only {limited} of 100 joins were rate limited"
    );
    let audit = admin
        .list_audit(ListAuditRequest {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(audit.entries.len(), 2);
    assert!(!audit.next_page_token.is_empty());
    let out = fleet.ok(&["audit", "--output", "json"]);
    let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let refused = all
        .iter()
        .filter(|e| e["action"] == "host.join.refused")
        .count();
    assert!(refused <= 25, "{refused} audit rows for refused joins");
    let limited: Vec<serde_json::Value> =
        serde_json::from_str(&fleet.ok(&["audit", "--limit", "3", "--output", "json"])).unwrap();
    assert_eq!(limited.len(), 3);
}

/// A bulk token (`fleetctl token create --bulk`) enrolls far more hosts from one address
/// than the per-address and fleet-wide limits allow, while guessing from that address,
/// and the bulk token once spent, still meet the per-address limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_token_enrolls_many_hosts_from_one_address() {
    const HOSTS: usize = 700;
    // Defaults, but a fleet-wide budget below HOSTS, so the bulk path must bypass it too.
    let (fleet, _cfg) = start_with("join_global_per_minute = 100\n");
    for (args, says) in [
        (&["--bulk-rate", "100"][..], "--bulk"),
        (&["--bulk", "--bulk-rate", "0"][..], "--bulk-rate"),
        (&["--bulk", "--bulk-rate", "600001"][..], "--bulk-rate"),
    ] {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        let out = fleet.fleetctl(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
    let uses = HOSTS.to_string();
    let bulk = fleet.token(&["--uses", &uses, "--bulk"]);
    let (mut enroll, csr) = join_client(&fleet).await;
    let join = |token: String, name: String| JoinRequest {
        token,
        csr_pem: csr.clone(),
        name,
    };
    for i in 0..HOSTS {
        enroll
            .join(join(bulk.clone(), format!("bulk-{i}")))
            .await
            .unwrap_or_else(|e| panic!("bulk join {i} refused: {e}"));
    }
    // Spent, it is an ordinary (refused) token again: limited per address like a guess.
    let mut limited = 0;
    for i in 0..30 {
        let err = enroll
            .join(join(bulk.clone(), format!("late-{i}")))
            .await
            .unwrap_err();
        match err.code() {
            tonic::Code::ResourceExhausted => limited += 1,
            tonic::Code::PermissionDenied => assert!(err.message().contains("already used")),
            other => panic!("{other:?}: {}", err.message()),
        }
    }
    assert!(limited >= 19, "only {limited} of 30 limited");
    let guess = enroll
        .join(join(
            format!("fleetjoin_{}", "b".repeat(40)),
            "guess".into(),
        ))
        .await
        .unwrap_err();
    assert_eq!(guess.code(), tonic::Code::ResourceExhausted, "{guess}");
    assert!(
        guess.message().contains("from 127.0.0.1"),
        "{}",
        guess.message()
    );
    let hosts = fleet.hosts();
    assert_eq!(hosts.len(), HOSTS);
    let audit = fleet.ok(&["audit", "--limit", "2000"]);
    assert!(
        audit.contains("bulk=60000/min"),
        "token.create audit lacks the rate"
    );
}

/// Finding 8: agent text cannot forge log lines, and a megabyte-long name is not echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_text_is_escaped_and_errors_are_short() {
    let fleet = Fleet::start(&[]);
    let state = fleet.join("web-1", &fleet.token(&[]));
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(hello()).await.unwrap();
    let ch = connect(&fleet.addr(), agent_config(&state), T)
        .await
        .unwrap();
    let mut down = AgentChannelClient::new(ch)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    down.message().await.unwrap().expect("Welcome");
    tx.send(AgentMessage {
        body: Some(agent_message::Body::Event(Event {
            kind: "note".into(),
            message: "fine\n2026-01-01T00:00:00Z ERROR forged line".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    wait_for("the event in the log", T, || {
        fleet.controller_log().contains("agent event").then_some(())
    });
    let log = fleet.controller_log();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR forged")),
        "{log}"
    );

    let mut admin = AdminClient::new(
        connect(&fleet.addr(), admin_config(&fleet.admin_dir()), T)
            .await
            .unwrap(),
    );
    let err = admin
        .get_app(GetAppRequest {
            app: "a".repeat(1 << 20),
        })
        .await
        .unwrap_err();
    assert!(err.message().len() < 2048, "{} bytes", err.message().len());
    fleet.ok(&["hosts"]);
}

/// Finding 8: with a token file, /metrics and service discovery need the bearer token;
/// health stays open.
#[test]
fn http_listener_takes_a_bearer_token() {
    let cfg = tempfile::tempdir().unwrap();
    let token = cfg.path().join("http.token");
    std::fs::write(&token, "s3cr3t-0123456789abcdef\n").unwrap();
    let path = config_file(
        cfg.path(),
        &format!("http_token_file = {:?}\n", token.to_str().unwrap()),
    );
    let fleet = Fleet::start(&["--config", &path]);
    wait_for("HTTP listener", T, || {
        std::net::TcpStream::connect(fleet.http_addr()).ok()
    });
    assert_eq!(http_get(&fleet.http_addr(), "/healthz", None).0, 200);
    for p in ["/metrics", "/v1/sd/prometheus"] {
        assert_eq!(http_get(&fleet.http_addr(), p, None).0, 401, "{p}");
    }
    let mut s = std::net::TcpStream::connect(fleet.http_addr()).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t-0123456789abcdef\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("fleet_controller_agents_connected"));
}

/// Reads HTTP/2 frames from `tls` until a PING with the ACK flag arrives (true), or the
/// connection ends or `within` passes (false). The server's own keepalive PINGs are
/// answered, as any HTTP/2 client does.
async fn ping_acked<S>(tls: &mut S, within: Duration) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if tls.read_exact(&mut head).await.is_err() {
                return false;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut body = vec![0u8; len];
            if tls.read_exact(&mut body).await.is_err() {
                return false;
            }
            if head[3] == 0x6 && head[4] & 0x1 == 0x1 {
                return true;
            }
            if head[3] == 0x6 {
                let mut ack = b"\0\0\x08\x06\x01\0\0\0\0".to_vec();
                ack.extend_from_slice(&body);
                if tls.write_all(&ack).await.is_err() {
                    return false;
                }
            }
        }
    };
    tokio::time::timeout(within, read).await.unwrap_or(false)
}

/// Finding 4, a stalled request: an admin call whose request body never comes is answered
/// DEADLINE_EXCEEDED after request_timeout, and the controller keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_requests_are_cut_after_request_timeout() {
    let (fleet, _cfg) = start_with("request_timeout = \"1s\"\n");

    // A unary call sent as a stream that never yields its message: the headers arrive,
    // the body never does.
    let ch = connect(&fleet.addr(), admin_config(&fleet.admin_dir()), T)
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let start = Instant::now();
    let r: Result<tonic::Response<fleet_proto::v1::ListHostsResponse>, _> = grpc
        .client_streaming(
            tonic::Request::new(tokio_stream::pending::<ListHostsRequest>()),
            "/fleet.v1.Admin/ListHosts".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let err = r.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("request_timeout"), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a stalled request held for {:?}",
        start.elapsed()
    );
    fleet.ok(&["hosts"]);
}

/// Finding 4, silence after the preface: an HTTP/2 connection that keeps talking (its own
/// PINGs, answers to the server's) outlives idle_timeout (30 s, its lower bound); once it
/// goes silent it is closed, by the HTTP/2 keepalive (a PING unanswered 15 s + 10 s) or by
/// idle_timeout, whichever comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_idle_timeout() {
    let idle = Duration::from_secs(30);
    let (fleet, _cfg) = start_with("idle_timeout = \"30s\"\n");
    let tcp = tokio::net::TcpStream::connect(fleet.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(admin_config(&fleet.admin_dir()))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    // Each PING is answered: the connection is live past the idle timeout.
    let ping = b"\0\0\x08\x06\0\0\0\0\0fleet-ok";
    let talking = Instant::now();
    while talking.elapsed() < idle + Duration::from_secs(3) {
        tls.write_all(ping).await.unwrap();
        assert!(
            ping_acked(&mut tls, Duration::from_secs(5)).await,
            "a talking connection was not answered after {:?}",
            talking.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let silent = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(idle + Duration::from_secs(10), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a silent connection is still open 10 s past idle_timeout"),
        }
    }
    assert!(
        silent.elapsed() >= Duration::from_secs(10),
        "closed after {:?} of silence, before any timeout was due",
        silent.elapsed()
    );
    fleet.ok(&["hosts"]);
}

/// A join client that trusts the fleet's CA by pin, and one CSR to send with it.
async fn join_client(fleet: &Fleet) -> (EnrollmentClient<tonic::transport::Channel>, String) {
    let enroll = EnrollmentClient::new(
        connect(
            &fleet.addr(),
            pinned_client_config(fleet.pin.parse().unwrap()),
            T,
        )
        .await
        .unwrap(),
    );
    let csr = CertificateParams::default()
        .serialize_request(&KeyPair::generate().unwrap())
        .unwrap()
        .pem()
        .unwrap();
    (enroll, csr)
}
