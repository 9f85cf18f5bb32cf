//! Every way of calling the controller with the wrong identity is refused, each with the
//! error an operator would see. The controller is the real binary on loopback.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::transport::{
    classify, connect, identity_client_config, pinned_client_config, Failure,
};
use fleet_proto::v1::admin_client::AdminClient;
use fleet_proto::v1::agent_channel_client::AgentChannelClient;
use fleet_proto::v1::enrollment_client::EnrollmentClient;
use fleet_proto::v1::{agent_message, AgentMessage, Hello, JoinRequest, ListHostsRequest};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use rustls::AlertDescription;
use support::Fleet;

const T: Duration = Duration::from_secs(10);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

struct Ident {
    ca: String,
    cert: String,
    key: String,
}

impl Ident {
    fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("ca.crt"), &self.ca).unwrap();
        std::fs::write(dir.join("admin.crt"), &self.cert).unwrap();
        std::fs::write(dir.join("admin.key"), &self.key).unwrap();
    }

    fn config(&self) -> Arc<rustls::ClientConfig> {
        identity_client_config(&self.ca, &self.cert, &self.key).unwrap()
    }
}

fn admin_ident(fleet: &Fleet) -> Ident {
    let d = fleet.admin_dir();
    Ident {
        ca: read(&d.join("ca.crt")),
        cert: read(&d.join("admin.crt")),
        key: read(&d.join("admin.key")),
    }
}

fn client_params(uri: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, uri);
    p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

/// Enrolls over the wire the way an agent does, returning its identity.
async fn join(fleet: &Fleet, name: &str, token: &str) -> Result<Ident, tonic::Status> {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let channel = connect(
        &fleet.addr(),
        pinned_client_config(fleet.pin.parse().unwrap()),
        T,
    )
    .await
    .unwrap();
    let resp = EnrollmentClient::new(channel)
        .join(JoinRequest {
            token: token.into(),
            csr_pem: csr,
            name: name.into(),
        })
        .await?
        .into_inner();
    Ok(Ident {
        ca: resp.ca_pem,
        cert: resp.cert_pem,
        key: key.serialize_pem(),
    })
}

async fn list_hosts(addr: &str, cfg: Arc<rustls::ClientConfig>) -> Result<(), tonic::Status> {
    let channel = match connect(addr, cfg, T).await {
        Ok(c) => c,
        Err(e) => return Err(tonic::Status::from_error(Box::new(e))),
    };
    AdminClient::new(channel)
        .list_hosts(ListHostsRequest::default())
        .await
        .map(|_| ())
}

async fn open_session(addr: &str, cfg: Arc<rustls::ClientConfig>) -> Result<(), tonic::Status> {
    let channel = connect(addr, cfg, T)
        .await
        .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
    let hello = AgentMessage {
        body: Some(agent_message::Body::Hello(Hello::default())),
    };
    let mut stream = AgentChannelClient::new(channel)
        .session(tokio_stream::iter(vec![hello]))
        .await?
        .into_inner();
    stream.message().await.map(|_| ())
}

fn alert_of(status: &tonic::Status) -> Option<AlertDescription> {
    match classify(status) {
        Failure::CertificateRefused(a) => Some(a),
        _ => None,
    }
}

fn fleetctl_err(fleet: &Fleet, identity: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(support::bin("fleetctl"))
        .args(["--controller", &fleet.addr()])
        .arg("--identity")
        .arg(identity)
        .args(args)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "fleetctl {args:?} unexpectedly succeeded"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test]
async fn no_client_certificate_is_refused_for_admin_calls() {
    let fleet = Fleet::start(&[]);
    // The pinned config presents no certificate: fine for join, not for anything else.
    let cfg = pinned_client_config(fleet.pin.parse().unwrap());
    let status = list_hosts(&fleet.addr(), cfg).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("client certificate required"),
        "{status:?}"
    );
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let fleet = Fleet::start(&[]);
    let other_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = ca_params.self_signed(&other_key).unwrap();
    let issuer = Issuer::new(ca_params, other_key);
    let key = KeyPair::generate().unwrap();
    let cert = client_params("spiffe://fleet.local/admin/admin")
        .signed_by(&key, &issuer)
        .unwrap();
    let _ = other_ca;
    let dir = fleet.dir.path().join("other-ca-admin");
    Ident {
        ca: admin_ident(&fleet).ca,
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
    .write(&dir);
    let err = fleetctl_err(&fleet, &dir, &["hosts"]);
    assert!(err.contains("certificate refused by controller"), "{err}");
    assert!(err.contains("issued by another CA"), "{err}");
    support::wait_for("a warn log of the refused handshake", T, || {
        fleet
            .controller_log()
            .contains("TLS handshake refused")
            .then_some(())
    });
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let fleet = Fleet::start(&[]);
    let data = fleet.data_dir();
    let issuer = Issuer::from_ca_cert_pem(
        &read(&data.join("ca.crt")),
        KeyPair::from_pem(&read(&data.join("ca.key"))).unwrap(),
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = client_params("spiffe://fleet.local/admin/admin");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = fleet.dir.path().join("expired-admin");
    Ident {
        ca: read(&data.join("ca.crt")),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
    .write(&dir);
    let err = fleetctl_err(&fleet, &dir, &["hosts"]);
    assert!(err.contains("certificate refused by controller"), "{err}");
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn revoked_identity_is_refused_also_after_a_restart() {
    let mut fleet = Fleet::start(&[]);
    let agent = join(&fleet, "gone", &fleet.token(&[])).await.unwrap();
    // Before removal the agent may open its channel.
    open_session(&fleet.addr(), agent.config())
        .await
        .expect("an enrolled agent may open its channel");
    let out = fleet.ok(&["host", "remove", "gone"]);
    assert!(out.contains("removed host gone"), "{out}");

    let status = open_session(&fleet.addr(), agent.config())
        .await
        .unwrap_err();
    assert_eq!(
        alert_of(&status),
        Some(AlertDescription::CertificateRevoked),
        "{status:?}"
    );

    fleet.restart_controller();
    let status = open_session(&fleet.addr(), agent.config())
        .await
        .unwrap_err();
    assert_eq!(
        alert_of(&status),
        Some(AlertDescription::CertificateRevoked),
        "{status:?}"
    );
    let audit = fleet.ok(&["audit"]);
    assert!(audit.contains("host.remove"), "{audit}");
}

#[tokio::test]
async fn agent_identity_cannot_call_admin_rpcs() {
    let fleet = Fleet::start(&[]);
    let agent = join(&fleet, "web-1", &fleet.token(&[])).await.unwrap();
    let dir = fleet.dir.path().join("agent-as-admin");
    agent.write(&dir);
    let err = fleetctl_err(&fleet, &dir, &["hosts"]);
    assert!(
        err.contains("spiffe://fleet.local/agent/web-1 may not call /fleet.v1.Admin/ListHosts"),
        "{err}"
    );
    assert!(err.contains("requires the admin role"), "{err}");
}

#[tokio::test]
async fn admin_identity_cannot_open_an_agent_channel() {
    let fleet = Fleet::start(&[]);
    let status = open_session(&fleet.addr(), admin_ident(&fleet).config())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("requires the agent role"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_single_use_token_cannot_be_reused() {
    let fleet = Fleet::start(&[]);
    let token = fleet.token(&[]);
    join(&fleet, "first", &token).await.unwrap();
    let status = join(&fleet, "second", &token)
        .await
        .err()
        .expect("reuse accepted");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("already used"), "{status:?}");
    assert!(
        status.message().contains("fleetctl token create"),
        "{status:?}"
    );
    let audit = fleet.ok(&["audit"]);
    assert!(audit.contains("host.join.refused"), "{audit}");
    assert!(
        !audit.contains(&token),
        "the audit log must not hold the token"
    );
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let fleet = Fleet::start(&[]);
    let token = fleet.token(&["--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = join(&fleet, "late", &token)
        .await
        .err()
        .expect("expired token accepted");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("expired"), "{status:?}");
}

#[tokio::test]
async fn a_tls12_client_is_refused_and_logged() {
    let fleet = Fleet::start(&[]);
    let mut roots = rustls::RootCertStore::empty();
    for c in fleet_proto::transport::certs_from_pem(&admin_ident(&fleet).ca, "ca").unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(fleet_proto::transport::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(fleet.addr()).await.unwrap();
    let err = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .expect_err("TLS 1.2 handshake accepted");
    assert!(err.to_string().contains("ProtocolVersion"), "{err}");
    support::wait_for("a warn log of the refused handshake", T, || {
        let log = fleet.controller_log();
        (log.contains("WARN")
            && log.contains("TLS handshake refused")
            && log.contains("127.0.0.1:"))
        .then_some(())
    });
}

#[tokio::test]
async fn a_wrong_pin_stops_the_join_before_the_token_is_sent() {
    let fleet = Fleet::start(&[]);
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let channel = connect(
        &fleet.addr(),
        pinned_client_config(wrong.parse().unwrap()),
        T,
    )
    .await;
    let status = match channel {
        Err(e) => tonic::Status::from_error(Box::new(e)),
        Ok(ch) => EnrollmentClient::new(ch)
            .join(JoinRequest::default())
            .await
            .unwrap_err(),
    };
    assert!(
        matches!(classify(&status), Failure::ControllerUntrusted(m) if m.contains("pinned")),
        "{status:?}"
    );
    // Nothing reached the join handler, so nothing was audited.
    assert!(!fleet.ok(&["audit"]).contains("host.join"));
}

#[tokio::test]
async fn join_attempts_are_rate_limited_per_source() {
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("controller.toml");
    std::fs::write(&path, "join_burst = 3\njoin_per_minute = 1\n").unwrap();
    let fleet = Fleet::start(&["--config", path.to_str().unwrap()]);
    let bogus = "fleetjoin_guessing";
    for _ in 0..3 {
        let status = join(&fleet, "guess", bogus).await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }
    let status = join(&fleet, "guess", bogus).await.err().unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("too many join attempts"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_dropped() {
    let cfg = tempfile::tempdir().unwrap();
    let path = cfg.path().join("controller.toml");
    std::fs::write(&path, "handshake_timeout = \"500ms\"\n").unwrap();
    let fleet = Fleet::start(&["--config", path.to_str().unwrap()]);
    let mut tcp = tokio::net::TcpStream::connect(fleet.addr()).await.unwrap();
    // Send nothing: the server must give up on us instead of holding the slot forever.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await
    .expect("the controller kept a silent connection open for 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    support::wait_for("a warn log of the timed-out handshake", T, || {
        fleet
            .controller_log()
            .contains("handshake not completed within")
            .then_some(())
    });
}
