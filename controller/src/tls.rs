//! The controller's TLS listener: TLS 1.3 only, client certificates verified against the
//! fleet CA and the revocation list, handshakes bounded in time and refused ones logged.
//!
//! tonic's `ServerTlsConfig` accepts TLS 1.2 and has no revocation hook, so the listener
//! owns its rustls config and accept loop and hands finished streams to tonic. The loop
//! also owns the connection limits: per source and in total, for handshakes and for
//! established connections, and the silence allowed before and after the HTTP/2 preface.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use fleet_proto::transport::{certs_from_pem, provider, TlsSetupError};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

use crate::ratelimit::LogThrottle;
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

    /// The whole list, as read again from the store (a standby follows it this way).
    pub fn replace(&self, serials: impl IntoIterator<Item = String>) {
        let next: HashSet<String> = serials.into_iter().collect();
        *self.0.write().expect("revocations lock") = next;
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
    // No resumption: a resumed TLS 1.3 session skips the client certificate check, so a
    // revoked certificate would keep working for the ticket's lifetime. Agents and
    // fleetctl reconnect rarely; a full handshake costs about a millisecond (see
    // docs/benchmarks.md).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// What the listener lets any client hold, from the controller's settings.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub handshake_timeout: Duration,
    /// After the handshake, how long the first HTTP/2 bytes may take.
    pub preface_timeout: Duration,
    /// Longest silence on an established connection (the controller pings every 15 s and
    /// every HTTP/2 client answers, so only a dead or hostile peer is ever this quiet).
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_pending_handshakes: usize,
    pub max_pending_handshakes_per_ip: usize,
}

#[derive(Default)]
struct Counts {
    connections: usize,
    pending: usize,
    per_ip: HashMap<IpAddr, (usize, usize)>,
}

/// Connection and handshake slots, taken at accept and given back when the connection (or
/// its handshake) ends. One lock, O(1) per accept.
pub struct Slots {
    limits: ConnLimits,
    counts: Mutex<Counts>,
}

impl Slots {
    pub fn new(limits: ConnLimits) -> Arc<Slots> {
        Arc::new(Slots {
            limits,
            counts: Mutex::default(),
        })
    }

    /// A connection slot with a pending handshake, or why there is none.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let l = &self.limits;
        let mut c = self.counts.lock().expect("slots lock");
        let (conns, pending) = c.per_ip.get(&ip).copied().unwrap_or((0, 0));
        if c.connections >= l.max_connections {
            return Err("too many connections (max_connections)");
        }
        if conns >= l.max_connections_per_ip {
            return Err("too many connections from this address (max_connections_per_ip)");
        }
        if c.pending >= l.max_pending_handshakes {
            return Err("too many pending handshakes (max_pending_handshakes)");
        }
        if pending >= l.max_pending_handshakes_per_ip {
            return Err(
                "too many pending handshakes from this address (max_pending_handshakes_per_ip)",
            );
        }
        c.connections += 1;
        c.pending += 1;
        c.per_ip.insert(ip, (conns + 1, pending + 1));
        Ok(Slot {
            slots: self.clone(),
            ip,
            pending: true,
            per_ip: true,
        })
    }

    /// Open connections (handshaking or established), for tests and health.
    pub fn connections(&self) -> usize {
        self.counts.lock().expect("slots lock").connections
    }
}

/// One connection's place in [`Slots`]; released on drop.
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
    pending: bool,
    /// Counted against `max_connections_per_ip` (all but other controllers' relays).
    per_ip: bool,
}

impl Slot {
    /// Another controller relays many agents' calls over a few connections from one
    /// address: they count against `max_connections`, not against the per-address cap.
    fn not_per_ip(&mut self) {
        if std::mem::take(&mut self.per_ip) {
            let mut c = self.slots.counts.lock().expect("slots lock");
            if let Some(e) = c.per_ip.get_mut(&self.ip) {
                e.0 -= 1;
                if e.0 == 0 && e.1 == 0 {
                    c.per_ip.remove(&self.ip);
                }
            }
        }
    }

    fn handshake_done(&mut self) {
        if std::mem::take(&mut self.pending) {
            let mut c = self.slots.counts.lock().expect("slots lock");
            c.pending -= 1;
            if let Some(e) = c.per_ip.get_mut(&self.ip) {
                e.1 -= 1;
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.counts.lock().expect("slots lock");
        c.connections -= 1;
        if self.pending {
            c.pending -= 1;
        }
        if let Some(e) = c.per_ip.get_mut(&self.ip) {
            if self.per_ip {
                e.0 -= 1;
            }
            if self.pending {
                e.1 -= 1;
            }
            if e.0 == 0 && e.1 == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// An established connection as tonic sees it: the TLS stream, its slot, and a read
/// deadline (first the preface timeout, then the idle timeout) that fails the connection
/// when the peer stays silent.
pub struct Conn {
    inner: TlsStream<TcpStream>,
    _slot: Slot,
    deadline: Pin<Box<tokio::time::Sleep>>,
    idle: Duration,
}

impl Conn {
    fn new(inner: TlsStream<TcpStream>, slot: Slot, limits: &ConnLimits) -> Conn {
        Conn {
            inner,
            _slot: slot,
            deadline: Box::pin(tokio::time::sleep(limits.preface_timeout)),
            idle: limits.idle_timeout,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer silent past preface_timeout/idle_timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Where Linux keeps the cap it silently applies to every `listen(2)` backlog.
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// Binds the gRPC listener with a listen queue of `backlog` connections (tokio's default is
/// 1024). A reconnect herd arrives faster than handshakes finish: connections the accept
/// loop has not taken yet wait in this queue, and when it is full the kernel drops SYNs
/// (`TcpExtListenOverflows`), which costs a client a 1 s, 3 s, … SYN retransmission. The
/// kernel clamps the queue to `net.core.somaxconn`; a warning says so when it does.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As tokio's own bind: a restarted controller must not wait out TIME_WAIT sockets.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(backlog)?;
    if let Some(cap) = read_somaxconn() {
        if cap < backlog {
            tracing::warn!(
                listen_backlog = backlog,
                somaxconn = cap,
                "the kernel caps the gRPC listen queue at net.core.somaxconn: raise it \
                 (sysctl -w net.core.somaxconn={backlog}) for reconnect herds of many agents"
            );
        }
    }
    Ok(listener)
}

fn read_somaxconn() -> Option<u32> {
    std::fs::read_to_string(SOMAXCONN).ok()?.trim().parse().ok()
}

/// Accepts every TCP connection at once and refuses it right away (closing it, before
/// any TLS work) when its source or the controller is over a limit, so neither silent
/// sockets nor a reconnect herd queue up in the kernel backlog ahead of real clients;
/// completes TLS within the handshake timeout and forwards established connections to
/// tonic. Ends when the receiver is dropped.
pub async fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    slots: Arc<Slots>,
    tx: mpsc::Sender<Result<Conn, io::Error>>,
) {
    let acceptor = TlsAcceptor::from(config);
    let refused_log = Arc::new(LogThrottle::new(10, Duration::from_secs(1)));
    let limits = slots.limits;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let mut slot = match slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                // Closed before any TLS work: the client's handshake ends at once and
                // agents answer with their jittered backoff.
                drop(tcp);
                if let Some(suppressed) = refused_log.admit(Instant::now()) {
                    tracing::warn!(peer = %peer, reason, suppressed, "connection refused");
                }
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let refused_log = refused_log.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    slot.handshake_done();
                    if is_controller(&stream) {
                        slot.not_per_ip();
                    }
                    let _ = tx.send(Ok(Conn::new(stream, slot, &limits))).await;
                }
                Ok(Err(e)) => log_refused(&refused_log, peer, &e.to_string()),
                Err(_) => log_refused(
                    &refused_log,
                    peer,
                    &format!(
                        "handshake not completed within {:?}",
                        limits.handshake_timeout
                    ),
                ),
            }
        });
    }
}

/// Whether the client presented a controller identity. Only a holder of the CA key can
/// make one with the client-auth usage this listener's verifier demands (a serving
/// certificate has only server-auth), so this is another controller of the fleet.
fn is_controller(stream: &TlsStream<TcpStream>) -> bool {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| fleet_proto::peer::cert_info(der).ok())
        .is_some_and(|i| i.identity.role() == fleet_proto::identity::Role::Controller)
}

fn log_refused(throttle: &LogThrottle, peer: SocketAddr, reason: &str) {
    if let Some(suppressed) = throttle.admit(Instant::now()) {
        tracing::warn!(peer = %peer, reason, suppressed, "TLS handshake refused");
    }
}

/// The HTTP/2 settings of every gRPC listener a controller runs, the leader's and a
/// standby's relay alike: a relay must not take what the leader would refuse.
pub(crate) fn grpc_server(settings: &crate::config::Settings) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(15)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(settings.max_concurrent_streams))
        // Streams a client opens and resets at once cost us work without counting
        // against max_concurrent_streams.
        .http2_max_pending_accept_reset_streams(Some(32))
        .http2_max_header_list_size(Some(64 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_connection_leaves_the_per_address_cap_to_others() {
        let slots = Slots::new(ConnLimits {
            handshake_timeout: Duration::from_secs(1),
            preface_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_connections: 3,
            max_connections_per_ip: 1,
            max_pending_handshakes: 3,
            max_pending_handshakes_per_ip: 3,
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut relay = slots.take(ip).unwrap();
        assert!(slots.take(ip).is_err(), "one per address");
        relay.handshake_done();
        relay.not_per_ip();
        let mut other = slots.take(ip).expect("the relay no longer counts");
        other.handshake_done();
        let mut third = slots.take("192.0.2.2".parse().unwrap()).unwrap();
        third.handshake_done();
        assert!(
            slots.take("192.0.2.3".parse().unwrap()).is_err(),
            "max_connections holds"
        );
        drop((relay, other, third));
        assert_eq!(slots.connections(), 0);
        assert!(slots.counts.lock().unwrap().per_ip.is_empty());
        let _again = slots.take(ip).unwrap();
    }

    /// Connections the accept loop has not taken yet wait in the kernel queue: with the
    /// listener's backlog above tokio's 1024, 1,400 of them all complete their TCP
    /// handshake although nothing accepts. With a full queue the kernel would drop the
    /// SYNs and these connects would hang in retransmission.
    #[tokio::test]
    async fn the_listen_queue_holds_more_than_tokios_default() {
        const WAITING: usize = 1400;
        let cap = read_somaxconn().expect("read /proc/sys/net/core/somaxconn");
        assert!(
            cap as usize > WAITING,
            "net.core.somaxconn is {cap}: this test needs it above {WAITING} \
             (sysctl -w net.core.somaxconn=4096)"
        );
        // Two descriptors per connection, both ends in this process.
        let fds = crate::systemd::raise_nofile_limit();
        assert!(
            fds as usize > 2 * WAITING + 64,
            "open-file limit {fds} too low for this test: raise it above {}",
            2 * WAITING + 64
        );
        let listener = bind("127.0.0.1:0".parse().unwrap(), 2048).unwrap();
        let addr = listener.local_addr().unwrap();
        // Kept open, so each one holds its place in the queue.
        let mut held = Vec::with_capacity(WAITING);
        for i in 0..WAITING {
            let tcp = tokio::time::timeout(Duration::from_millis(900), TcpStream::connect(addr))
                .await
                .unwrap_or_else(|_| panic!("connection {i} left out of the listen queue"))
                .unwrap();
            held.push(tcp);
        }
        assert_eq!(held.len(), WAITING);
        drop(listener);
    }
}
