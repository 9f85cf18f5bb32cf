//! Client side of fleet's TLS: TLS 1.3 only, HTTP/2 over rustls, with either a full
//! identity (agents after enrollment, fleetctl) or only a CA pin (the join call). tonic's
//! own TLS config cannot pin a CA or refuse TLS 1.2, so channels are built on our own
//! rustls config through a custom connector.

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::peer::CaPin;

/// The single crypto provider fleet uses. Passed explicitly everywhere so that no
/// process-wide default has to be installed (see rust-stack notes on provider panics).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("no certificate found in {0}")]
    NoCertificate(&'static str),
    #[error("no private key found in the key file")]
    NoKey,
    #[error("invalid PEM in {what}: {source}")]
    Pem {
        what: &'static str,
        source: rustls::pki_types::pem::Error,
    },
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("invalid controller address {0:?}: expected HOST:PORT")]
    Address(String),
}

pub fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsSetupError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate(what));
    }
    Ok(certs)
}

pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| TlsSetupError::NoKey)
}

fn base_builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
}

fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Config for a caller holding a fleet identity: trusts only the fleet CA, presents
/// `cert_pem`/`key_pem`.
pub fn identity_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem(ca_pem, "the CA file")? {
        roots.add(ca)?;
    }
    let config = base_builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            certs_from_pem(cert_pem, "the certificate file")?,
            key_from_pem(key_pem)?,
        )?;
    Ok(finish(config))
}

/// Config for the join call: no client certificate; the server is trusted only if the
/// chain it sends contains the CA with this pin and its certificate verifies against it.
/// This is checked during the handshake, so the token is never sent to an impostor.
pub fn pinned_client_config(pin: CaPin) -> Arc<ClientConfig> {
    let config = base_builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { pin }))
        .with_no_client_auth();
    finish(config)
}

#[derive(Debug)]
struct PinnedCa {
    pin: CaPin,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| self.pin.matches(c))
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the controller's CA does not match the pinned {}",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered, so a TLS 1.2 signature is never legitimate.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Splits `HOST:PORT` (IPv6 as `[::1]:7443`) into the TLS server name and the dial address.
fn server_name(addr: &str) -> Result<ServerName<'static>, TlsSetupError> {
    let bad = || TlsSetupError::Address(addr.to_owned());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| bad())
}

/// Interval of the client's HTTP/2 keepalive pings.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// Opens an HTTP/2 channel to `addr` over TLS with `config`. The TCP and TLS handshake are
/// bounded by `timeout`.
pub async fn connect(
    addr: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Channel, ConnectError> {
    connect_from(addr, None, config, timeout).await
}

/// [`connect`] from a chosen local `source` address (the kernel picks one when `None`), so
/// that a load generator can give each simulated host its own address on loopback.
pub async fn connect_from(
    addr: &str,
    source: Option<IpAddr>,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Channel, ConnectError> {
    let name = server_name(addr)?;
    let dial = addr.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let config = config.clone();
        let name = name.clone();
        let dial = dial.clone();
        async move {
            let tcp = tokio::time::timeout(timeout, dial_tcp(&dial, source))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
            tcp.set_nodelay(true)?;
            let tls = tokio::time::timeout(
                timeout,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            let tls = tokio::time::timeout(timeout, first_bytes(tls))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "controller sent nothing after the TLS handshake",
                    )
                })??;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        // A client pings only when it has heard nothing for this long; agents hear
        // nothing between commands, so at 50,000 agents this interval is thousands of
        // ping round trips a second on the controller. 30 s (+10 s for the answer) still
        // finds a vanished controller long before TCP would.
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_with_connector(connector)
        .await
        .map_err(ConnectError::Transport)
}

async fn dial_tcp(dial: &str, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(dial).await;
    };
    let mut last = None;
    for target in tokio::net::lookup_host(dial).await? {
        if target.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(target).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{dial} has no address of the family of {source}"),
        )
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Address(#[from] TlsSetupError),
    #[error("{0}")]
    Transport(#[source] tonic::transport::Error),
}

impl From<tonic::transport::Error> for ConnectError {
    fn from(e: tonic::transport::Error) -> Self {
        ConnectError::Transport(e)
    }
}

/// With TLS 1.3 the server judges our certificate only after our side of the handshake
/// is done, so a refusal (revoked, expired, unknown CA) would otherwise surface later as a
/// generic HTTP/2 error with the alert lost. The HTTP/2 server speaks first (its SETTINGS
/// frame), so reading until the first byte either proves we were accepted or yields the
/// alert as a typed rustls error. The bytes read are replayed to the HTTP/2 client.
async fn first_bytes(mut tls: TlsStream<TcpStream>) -> io::Result<Replay<TlsStream<TcpStream>>> {
    let mut buf = vec![0u8; 1024];
    let n = tls.read(&mut buf).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "controller closed the connection after the TLS handshake",
        ));
    }
    buf.truncate(n);
    Ok(Replay {
        prefix: buf,
        pos: 0,
        inner: tls,
    })
}

/// A stream that first yields `prefix`, then reads from `inner`.
pub struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Checks an address before dialing, for a clear error instead of a transport one.
pub fn validate_address(addr: &str) -> Result<(), TlsSetupError> {
    server_name(addr).map(|_| ())
}

/// Why a call to the controller failed, in the terms an operator acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Nothing answered (refused, timed out, unreachable).
    Unreachable(String),
    /// The controller refused our certificate with this TLS alert.
    CertificateRefused(AlertDescription),
    /// We refused the controller's certificate.
    ControllerUntrusted(String),
    /// Anything else (an application error, a reset).
    Other,
}

/// Walks an error's source chain looking for a TLS alert or an I/O failure.
pub fn classify(err: &(dyn StdError + 'static)) -> Failure {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::AlertReceived(alert) => Failure::CertificateRefused(*alert),
                other => Failure::ControllerUntrusted(other.to_string()),
            };
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                    return match tls {
                        rustls::Error::AlertReceived(alert) => Failure::CertificateRefused(*alert),
                        other => Failure::ControllerUntrusted(other.to_string()),
                    };
                }
            }
            // h2 rebuilds I/O errors from their text, so the rustls error may only survive
            // as "received fatal alert: <Name>".
            if let Some(alert) = io
                .to_string()
                .strip_prefix("received fatal alert: ")
                .and_then(alert_from_name)
            {
                return Failure::CertificateRefused(alert);
            }
            use io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused
                    | TimedOut
                    | HostUnreachable
                    | NetworkUnreachable
                    | AddrNotAvailable
            ) {
                return Failure::Unreachable(io.to_string());
            }
        }
        cur = e.source();
    }
    Failure::Other
}

fn alert_from_name(name: &str) -> Option<AlertDescription> {
    use AlertDescription::*;
    [
        CertificateRevoked,
        CertificateExpired,
        UnknownCA,
        CertificateRequired,
        BadCertificate,
        UnsupportedCertificate,
        CertificateUnknown,
        AccessDenied,
        ProtocolVersion,
        HandshakeFailure,
        DecryptError,
    ]
    .into_iter()
    .find(|a| format!("{a:?}") == name.trim())
}

/// A short operator-facing reason for a refused certificate alert.
pub fn alert_reason(alert: AlertDescription) -> &'static str {
    match alert {
        AlertDescription::CertificateRevoked => "revoked",
        AlertDescription::CertificateExpired => "expired",
        AlertDescription::UnknownCA => "issued by another CA",
        AlertDescription::CertificateRequired => "no client certificate presented",
        AlertDescription::BadCertificate => "bad certificate",
        AlertDescription::ProtocolVersion => "TLS version not accepted (TLS 1.3 required)",
        _ => "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_survive_being_turned_into_text() {
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRevoked",
        );
        assert_eq!(
            classify(&err),
            Failure::CertificateRefused(AlertDescription::CertificateRevoked)
        );
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::UnknownCA),
        );
        assert_eq!(
            classify(&err),
            Failure::CertificateRefused(AlertDescription::UnknownCA)
        );
    }

    #[test]
    fn server_names_from_addresses() {
        assert!(server_name("127.0.0.1:7443").is_ok());
        assert!(server_name("[::1]:7443").is_ok());
        assert!(server_name("controller.example:7443").is_ok());
        assert!(server_name("controller.example").is_err());
        assert!(server_name("host:notaport").is_err());
    }
}
