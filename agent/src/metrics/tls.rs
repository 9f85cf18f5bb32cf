//! Optional TLS on `/metrics` with client certificates, for sites whose Prometheus scrapes
//! across untrusted networks: only scrapers presenting a certificate that chains to the
//! configured CA get an answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use fleet_proto::transport::{certs_from_pem, key_from_pem};

/// A scraper that connects and never finishes its handshake must not pin a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Prometheus keeps one connection per target; this only bounds what misbehaving clients
/// can make the agent hold.
const MAX_CONNECTIONS: usize = 32;

/// Files for TLS on `/metrics`; all three are required, so a half-configured listener
/// never silently serves plain HTTP or accepts any client.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// Reads and checks the three files once at startup, so a bad path or PEM stops the agent
/// with a message naming the file instead of failing every scrape.
pub fn server_config(files: &MetricsTls) -> anyhow::Result<Arc<ServerConfig>> {
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read metrics_tls.{what} {}", path.display()))
    };
    let certs = certs_from_pem(&read(&files.cert, "cert")?, "metrics_tls.cert")?;
    let key = key_from_pem(&read(&files.key, "key")?)
        .with_context(|| format!("no private key in metrics_tls.key {}", files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem(
        &read(&files.client_ca, "client_ca")?,
        "metrics_tls.client_ca",
    )? {
        roots.add(ca).with_context(|| {
            format!(
                "metrics_tls.client_ca {} holds an unusable certificate",
                files.client_ca.display()
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("cannot build the client certificate verifier for metrics_tls.client_ca")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        // Prometheus (Go) speaks TLS 1.3; 1.2 stays for older scrapers behind proxies.
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "metrics_tls.key {} does not match metrics_tls.cert {}",
                files.key.display(),
                files.cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` over TLS on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, config: Arc<ServerConfig>, app: Router) {
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "metrics listener cannot accept");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "metrics TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "metrics TLS handshake timed out");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}
