//! `/metrics` over TLS with client certificates, checked with a real client (curl) on
//! loopback: a scraper with a certificate from the configured CA gets the metrics, one
//! without a certificate or with a certificate from another CA gets nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_agent::config::MetricsTls;
use fleet_agent::metrics::{server, tls, Metrics};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        issuer: Issuer::new(params, key),
        pem: cert.pem(),
    }
}

/// Writes `NAME.crt` and `NAME.key` signed by `ca` into `dir`.
fn leaf(dir: &Path, name: &str, ca: &Ca, sans: Vec<SanType>) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.subject_alt_names = sans;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (crt, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (crt, k)
}

struct Setup {
    dir: tempfile::TempDir,
    files: MetricsTls,
    scraper_ca: Ca,
    server_ca_pem: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("host CA");
    let scraper_ca = ca("scraper CA");
    let (cert, key) = leaf(
        dir.path(),
        "server",
        &server_ca,
        vec![SanType::IpAddress("127.0.0.1".parse().unwrap())],
    );
    let client_ca = dir.path().join("scraper-ca.crt");
    std::fs::write(&client_ca, &scraper_ca.pem).unwrap();
    let server_ca_pem = dir.path().join("host-ca.crt");
    std::fs::write(&server_ca_pem, &server_ca.pem).unwrap();
    Setup {
        dir,
        files: MetricsTls {
            cert,
            key,
            client_ca,
        },
        scraper_ca,
        server_ca_pem,
    }
}

async fn start(files: &MetricsTls) -> SocketAddr {
    let config = tls::server_config(files).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server::router(Arc::new(Metrics::new(None)));
    tokio::spawn(tls::serve(listener, config, app));
    addr
}

/// curl's exit code and body.
async fn curl(addr: SocketAddr, cacert: &Path, client: Option<(&Path, &Path)>) -> (i32, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "--cacert"]).arg(cacert);
    if let Some((crt, key)) = client {
        cmd.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    cmd.arg(format!("https://{addr}/metrics"));
    let out = cmd.output().await.expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn only_scrapers_with_a_certificate_from_the_client_ca_get_metrics() {
    let s = setup();
    let addr = start(&s.files).await;

    let (crt, key) = leaf(s.dir.path(), "prometheus", &s.scraper_ca, vec![]);
    let (code, body) = curl(addr, &s.server_ca_pem, Some((&crt, &key))).await;
    assert_eq!(code, 0, "trusted scraper refused: {body}");
    assert!(body.contains("node_load1 "), "{body}");
    assert!(body.contains("fleet_agent_build_info"), "{body}");

    let (code, body) = curl(addr, &s.server_ca_pem, None).await;
    assert_ne!(
        code, 0,
        "a scraper without a certificate got an answer: {body}"
    );
    assert!(body.is_empty(), "{body}");

    let stranger = ca("someone else");
    let (crt, key) = leaf(s.dir.path(), "stranger", &stranger, vec![]);
    let (code, body) = curl(addr, &s.server_ca_pem, Some((&crt, &key))).await;
    assert_ne!(
        code, 0,
        "a certificate from another CA was accepted: {body}"
    );
    assert!(body.is_empty(), "{body}");

    // The refused clients did not take the listener down.
    let (crt, key) = leaf(s.dir.path(), "prometheus-2", &s.scraper_ca, vec![]);
    assert_eq!(curl(addr, &s.server_ca_pem, Some((&crt, &key))).await.0, 0);
}

#[test]
fn bad_files_are_refused_with_the_file_named() {
    let s = setup();
    let missing = MetricsTls {
        client_ca: s.dir.path().join("nope.crt"),
        ..s.files.clone()
    };
    let err = format!("{:#}", tls::server_config(&missing).unwrap_err());
    assert!(
        err.contains("metrics_tls.client_ca") && err.contains("nope.crt"),
        "{err}"
    );

    let (_, other_key) = leaf(s.dir.path(), "other", &s.scraper_ca, vec![]);
    let mismatched = MetricsTls {
        key: other_key,
        ..s.files.clone()
    };
    let err = format!("{:#}", tls::server_config(&mismatched).unwrap_err());
    assert!(err.contains("does not match"), "{err}");

    let not_pem = MetricsTls {
        cert: s.files.key.clone(),
        ..s.files.clone()
    };
    let err = format!("{:#}", tls::server_config(&not_pem).unwrap_err());
    assert!(err.contains("metrics_tls.cert"), "{err}");
}
