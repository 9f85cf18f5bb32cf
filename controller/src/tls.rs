//! The controller's TLS listener: TLS 1.3 only, client certificates verified against the
//! fleet CA and the revocation list, handshakes bounded in time and refused ones logged.
//!
//! tonic's `ServerTlsConfig` accepts TLS 1.2 and has no revocation hook, so the listener
//! owns its rustls config and accept loop and hands finished streams to tonic.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fleet_proto::transport::{certs_from_pem, provider, TlsSetupError};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::servercert::ServingCert;

/// Serials of revoked certificates, consulted in every handshake. Shared with the admin
/// service, which adds to it when a host is removed.
#[derive(Debug, Default)]
pub struct Revocations(RwLock<HashSet<String>>);

impl Revocations {
    pub fn new(serials: impl IntoIterator<Item = String>) -> Self {
        Revocations(RwLock::new(serials.into_iter().collect()))
    }

    pub fn insert(&self, serial: String) {
        self.0.write().expect("revocations lock").insert(serial);
    }

    pub fn contains(&self, serial: &str) -> bool {
        self.0.read().expect("revocations lock").contains(serial)
    }
}

#[derive(Debug)]
struct RevocationAwareVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<Revocations>,
}

impl ClientCertVerifier for RevocationAwareVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Optional at the TLS layer only because the join call has no certificate yet; every
    /// other RPC is refused without one by the authorization layer.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.revoked.contains(&hex::encode(cert.raw_serial())) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The listener's rustls config: TLS 1.3, the revocation-aware client verifier, and the
/// serving certificate from `serving`, which renewal swaps without a restart.
pub fn server_config(
    ca_pem: &str,
    serving: Arc<ServingCert>,
    revoked: Arc<Revocations>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let ca = certs_from_pem(ca_pem, "the CA certificate")?;
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c)?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsSetupError::Rustls(rustls::Error::General(e.to_string())))?;
    let verifier = Arc::new(RevocationAwareVerifier { inner, revoked });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Handshakes at most this many clients at once; more wait in the kernel backlog.
const MAX_PENDING_HANDSHAKES: usize = 512;

/// Accepts TCP connections, completes TLS within `timeout`, and forwards established
/// streams to tonic. Ends when the receiver is dropped.
pub async fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    timeout: Duration,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, io::Error>>,
) {
    let acceptor = TlsAcceptor::from(config);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let permit = pending
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => log_refused(peer, &e.to_string()),
                Err(_) => log_refused(peer, &format!("handshake not completed within {timeout:?}")),
            }
        });
    }
}

fn log_refused(peer: SocketAddr, reason: &str) {
    tracing::warn!(peer = %peer, reason, "TLS handshake refused");
}
