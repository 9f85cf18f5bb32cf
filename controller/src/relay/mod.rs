//! A standby's listener (docs/ha.md, "Every controller serves"): while another controller
//! leads, this one accepts agents, operators and joins as the leader does (the same TLS,
//! the same client-certificate and revocation checks, the same connection limits) and
//! relays each call, unchanged, to the leader over mTLS in a controller identity of its
//! own. Two headers name the caller's certificate and address; the leader authorizes the
//! call as if the caller had come to it directly (`auth.rs`) and runs it.
//!
//! Why relay to the leader rather than run calls here: every stream and every piece of
//! in-memory state (sessions, app reports, rollout judging, firewall confirmations) then
//! stays in one process. No table has to say which controller holds which stream, a
//! command or a revocation reaches an agent behind any controller exactly as it reaches
//! one on the leader, and nothing is written per connect. What spreads over the
//! controllers is what costs the most per agent: TCP connections and TLS.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_proto::identity::{Identity, TrustDomain};
use fleet_proto::peer::cert_info;
use fleet_proto::transport::{connect, identity_client_config};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::Channel;
use tonic::Status;
use tower::ServiceExt;

use crate::config::Settings;
use crate::datadir::DataDir;
use crate::init::TRUST_DOMAIN_KEY;
use crate::pki::Ca;
use crate::servercert::ServingCert;
use crate::store::{Store, StoreError};
use crate::tls::{self, Revocations};

mod link;
use link::{cut_links, when_cut, CallSlot, Link, UntilCut};

/// The relayed caller's certificate (DER, hex); absent for an anonymous join.
pub const RELAY_CERT: &str = "fleet-relay-cert";
/// The relayed caller's address (`IP:PORT`); its presence marks a call as relayed.
pub const RELAY_ADDR: &str = "fleet-relay-addr";

/// The relaying controller's advertised address, shown as the host's `via`.
pub const RELAY_BY: &str = "fleet-relay-by";

const LEADER_KEY: &str = "leader";
/// Calls one connection to the leader carries at once, below the leader's default
/// `max_concurrent_streams` (64), so a call never waits behind an agent's stream.
const PER_LINK: usize = 48;
/// The controller identity a relay presents is made here (every controller holds the CA)
/// and never stored, so it is short-lived and links are replaced well before it ends.
const PEER_CERT_LIFETIME: Duration = Duration::from_secs(2 * 24 * 3600);
const LINK_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the revocation list is read again: a certificate revoked through any
/// controller is refused here within this (the leader refuses it at once).
const REVOCATIONS_EVERY: Duration = Duration::from_secs(1);

/// Where the lease holder listens for the other controllers, written by the holder with
/// a fenced write, so a record can only name the real holder at its epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct LeaderRecord {
    holder: String,
    epoch: i64,
    address: String,
}

/// Records, as the lease holder, where the other controllers reach this one.
pub fn publish(store: &Store, holder: &str, epoch: i64, address: &str) -> Result<(), StoreError> {
    let rec = LeaderRecord {
        holder: holder.to_owned(),
        epoch,
        address: address.to_owned(),
    };
    let json = serde_json::to_string(&rec).expect("plain struct");
    store.set_meta(LEADER_KEY, &json)
}

/// The address of the controller that holds an unexpired lease, once it said where it
/// listens; `None` while the lease is expired or being taken over.
fn leader_address(store: &Store) -> Result<Option<String>, StoreError> {
    let Some((holder, epoch, true)) = store.lease_holder()? else {
        return Ok(None);
    };
    let rec: Option<LeaderRecord> = store
        .meta(LEADER_KEY)?
        .and_then(|s| serde_json::from_str(&s).ok());
    Ok(rec
        .filter(|r| r.holder == holder && r.epoch == epoch)
        .map(|r| r.address))
}

/// The address other controllers dial to reach this one: `[store] advertise`, else the
/// listen address when it names one, else the first name of the serving certificate.
pub fn advertised(settings: &Settings, sans: &[String]) -> Option<String> {
    if let Some(a) = settings.store.as_ref().and_then(|s| s.advertise.clone()) {
        return Some(a);
    }
    let listen = settings.listen;
    if !listen.ip().is_unspecified() {
        return Some(listen.to_string());
    }
    let host = sans.first()?;
    Some(match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", listen.port()),
        _ => format!("{host}:{}", listen.port()),
    })
}

struct Relay {
    ca: Ca,
    revoked: Arc<Revocations>,
    leader: RwLock<Option<String>>,
    /// This controller's own address, sent as [`RELAY_BY`].
    by: http::HeaderValue,
    links: tokio::sync::Mutex<Vec<Link>>,
    max_links: usize,
}

impl Relay {
    /// Makes `leader` where calls go; whether that changed anything.
    fn point_at(&self, leader: &Option<String>) -> bool {
        let mut current = self.leader.write().expect("leader lock");
        if *current == *leader {
            return false;
        }
        match leader {
            Some(a) => tracing::info!(leader = %a, "relay: calls go to the leader at this address"),
            None => {
                tracing::info!("relay: no leader at the moment; calls are refused until one leads")
            }
        }
        current.clone_from(leader);
        true
    }

    /// Ends every call relayed to a controller other than `leader`.
    async fn cut_all_but(&self, leader: Option<&str>) {
        let mut links = self.links.lock().await;
        cut_links(&mut links, |l| Some(l.addr.as_str()) == leader);
    }

    async fn link(&self) -> Result<(Channel, CallSlot, watch::Receiver<Option<u64>>), Status> {
        let addr = self.leader.read().expect("leader lock").clone().ok_or_else(|| {
            Status::unavailable(
                "no controller leads at the moment (the lease is being taken over): try again in a few seconds",
            )
        })?;
        let mut links = self.links.lock().await;
        cut_links(&mut links, |l| l.addr == addr);
        links.retain(|l| l.made.elapsed() < LINK_LIFETIME);
        if let Some(l) = links
            .iter()
            .find(|l| l.calls.load(Ordering::Relaxed) < PER_LINK)
        {
            l.calls.fetch_add(1, Ordering::Relaxed);
            return Ok((
                l.channel.clone(),
                CallSlot(l.calls.clone()),
                l.cut.subscribe(),
            ));
        }
        if links.len() >= self.max_links {
            return Err(Status::resource_exhausted(
                "this controller relays as many calls to the leader as it may: connect to the leader or another controller",
            ));
        }
        let peer = self
            .ca
            .new_client_identity(
                &Identity::controller(self.ca.trust_domain().clone()),
                PEER_CERT_LIFETIME,
            )
            .map_err(|e| {
                Status::internal(format!("cannot make this controller's relay identity: {e}"))
            })?;
        let config =
            identity_client_config(self.ca.cert_pem(), &peer.issued.cert_pem, &peer.key_pem)
                .map_err(|e| Status::internal(format!("relay TLS setup failed: {e}")))?;
        let channel = connect(&addr, config, CONNECT_TIMEOUT)
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the leader at {addr}: {e}")))?;
        tracing::info!(leader = %addr, links = links.len() + 1, "relay: connected to the leader");
        let link = Link {
            addr,
            channel,
            calls: Arc::new(AtomicUsize::new(1)),
            made: Instant::now(),
            cut: watch::channel(None).0,
        };
        let out = (
            link.channel.clone(),
            CallSlot(link.calls.clone()),
            link.cut.subscribe(),
        );
        links.push(link);
        Ok(out)
    }

    async fn forward(self: Arc<Self>, mut req: http::Request<Body>) -> http::Response<Body> {
        let conn = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let addr = conn.and_then(|c| c.get_ref().remote_addr());
        let cert = conn
            .and_then(|c| c.peer_certs())
            .and_then(|certs| certs.first().map(|c| c.to_vec()));
        let Some(addr) = addr else {
            return Status::internal("a call without a peer address").into_http();
        };
        if let Some(der) = &cert {
            // A connection outlives its handshake's check; every call is checked again.
            if let Ok(info) = cert_info(der) {
                if self.revoked.contains(&info.serial) {
                    return Status::unauthenticated(format!(
                        "certificate {} of {} is revoked",
                        info.serial, info.identity
                    ))
                    .into_http();
                }
            }
        }
        let headers = req.headers_mut();
        headers.remove(RELAY_CERT);
        headers.remove(RELAY_ADDR);
        headers.insert(RELAY_BY, self.by.clone());
        if let Some(der) = &cert {
            let v = http::HeaderValue::from_str(&hex::encode(der)).expect("hex is a header value");
            headers.insert(RELAY_CERT, v);
        }
        let v =
            http::HeaderValue::from_str(&addr.to_string()).expect("an address is a header value");
        headers.insert(RELAY_ADDR, v);
        *req.extensions_mut() = http::Extensions::new();
        let (channel, slot, cut) = match self.link().await {
            Ok(l) => l,
            Err(status) => return status.into_http(),
        };
        match channel.oneshot(req).await {
            Ok(resp) => resp.map(|body| {
                Body::new(UntilCut {
                    body,
                    cut: Some(when_cut(cut)),
                    _slot: slot,
                })
            }),
            Err(e) => {
                Status::unavailable(format!("the leader did not take the call: {e}")).into_http()
            }
        }
    }
}

/// The services a standby relays; their names route calls to [`Forward`].
trait Service {
    const NAME: &'static str;
}
struct AdminService;
impl Service for AdminService {
    const NAME: &'static str = "fleet.v1.Admin";
}
struct ChannelService;
impl Service for ChannelService {
    const NAME: &'static str = "fleet.v1.AgentChannel";
}
struct EnrollmentService;
impl Service for EnrollmentService {
    const NAME: &'static str = "fleet.v1.Enrollment";
}

struct Forward<S>(Arc<Relay>, PhantomData<fn() -> S>);

impl<S> Clone for Forward<S> {
    fn clone(&self) -> Self {
        Forward(self.0.clone(), PhantomData)
    }
}

impl<S: Service> NamedService for Forward<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Forward<S> {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let relay = self.0.clone();
        Box::pin(async move { Ok(relay.forward(req).await) })
    }
}

/// A running standby listener; [`Front::stop`] frees the port for the leader's own.
pub struct Front {
    relay: Arc<Relay>,
    accept: JoinHandle<()>,
    serve: JoinHandle<()>,
    watch: JoinHandle<()>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Front {
    /// Listens on `settings.listen` and relays to whichever controller leads.
    pub fn start(dir: &Path, settings: &Settings, store: Arc<Store>) -> anyhow::Result<Front> {
        let dd = DataDir(dir.to_owned());
        let td: TrustDomain = store
            .meta(TRUST_DOMAIN_KEY)?
            .context("the shared store has no trust domain: run `fleet-controller init` first")?
            .parse()
            .context("the shared store holds an invalid trust domain")?;
        let ca = Ca::load(td, &dd.read(&dd.ca_cert())?, &dd.read(&dd.ca_key())?)?;
        let serving = Arc::new(ServingCert::load(&dd, ca.cert_pem())?);
        if serving.due(crate::timefmt::now_secs()) {
            // Only a local file changes: a standby may renew its own certificate.
            serving.renew(&ca, settings.server_cert_lifetime)?;
        }
        let revoked = Arc::new(Revocations::new(
            store.revoked()?.into_iter().map(|r| r.serial),
        ));
        let by = advertised(settings, &serving.served().sans)
            .and_then(|a| http::HeaderValue::from_str(&a).ok())
            .unwrap_or_else(|| http::HeaderValue::from_static("a standby"));
        let tls_config = tls::server_config(ca.cert_pem(), serving.clone(), revoked.clone())?;
        let grpc = tls::bind(settings.listen, settings.listen_backlog).with_context(|| {
            format!(
                "cannot listen on {} (gRPC): is another controller running?",
                settings.listen
            )
        })?;
        let relay = Arc::new(Relay {
            ca,
            revoked,
            leader: RwLock::new(None),
            by,
            links: tokio::sync::Mutex::new(Vec::new()),
            max_links: (settings.max_connections / PER_LINK).max(4),
        });
        let (conn_tx, conn_rx) = mpsc::channel(128);
        let slots = tls::Slots::new(tls::ConnLimits {
            handshake_timeout: settings.handshake_timeout,
            preface_timeout: settings.preface_timeout,
            idle_timeout: settings.idle_timeout,
            max_connections: settings.max_connections,
            max_connections_per_ip: settings.max_connections_per_ip,
            max_pending_handshakes: settings.max_pending_handshakes,
            max_pending_handshakes_per_ip: settings.max_pending_handshakes_per_ip,
        });
        let accept = tokio::spawn(tls::accept_loop(grpc, tls_config, slots, conn_tx));
        let (shutdown, stop) = oneshot::channel::<()>();
        let router = crate::tls::grpc_server(settings)
            .add_service(Forward::<AdminService>(relay.clone(), PhantomData))
            .add_service(Forward::<ChannelService>(relay.clone(), PhantomData))
            .add_service(Forward::<EnrollmentService>(relay.clone(), PhantomData));
        let serve = tokio::spawn(async move {
            let incoming = ReceiverStream::new(conn_rx);
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await
            {
                tracing::warn!(error = %e, "relay listener failed");
            }
        });
        let ttl = settings
            .store
            .as_ref()
            .map_or(crate::store::pg::PgConfig::DEFAULT_LEASE_TTL, |s| {
                s.lease_ttl
            });
        let watch = tokio::spawn(follow(store, relay.clone(), ttl));
        tracing::info!(grpc = %settings.listen, "standby listening: calls are relayed to the leader");
        Ok(Front {
            relay,
            accept,
            serve,
            watch,
            shutdown: Some(shutdown),
        })
    }

    /// Stops accepting (the port is free when this returns) and ends every relayed call;
    /// their clients reconnect, to this controller's own listener once it leads.
    pub async fn stop(mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
        self.watch.abort();
        // Every relayed call ends now, streams too: their leader is gone, and the
        // connections they hold close once they are done (a graceful shutdown waits for
        // them; the server task alone does not own them).
        self.relay.cut_all_but(None).await;
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if tokio::time::timeout(Duration::from_secs(1), &mut self.serve)
            .await
            .is_err()
        {
            self.serve.abort();
        }
    }
}

/// Keeps the relay pointed at the current leader and its revocation list fresh.
async fn follow(store: Arc<Store>, relay: Arc<Relay>, ttl: Duration) {
    let every = (ttl / 5).max(Duration::from_millis(200));
    let mut last_revocations = Instant::now();
    loop {
        let s = store.clone();
        let reread = last_revocations.elapsed() >= REVOCATIONS_EVERY;
        let got = tokio::task::spawn_blocking(move || {
            let leader = leader_address(&s)?;
            let revoked = if reread { Some(s.revoked()?) } else { None };
            Ok::<_, StoreError>((leader, revoked))
        })
        .await
        .expect("relay store task");
        match got {
            Ok((leader, revoked)) => {
                let changed = relay.point_at(&leader);
                if changed {
                    relay.cut_all_but(leader.as_deref()).await;
                }
                if let Some(r) = revoked {
                    relay.revoked.replace(r.into_iter().map(|r| r.serial));
                    last_revocations = Instant::now();
                }
            }
            Err(e) => tracing::warn!(error = %e, "relay: cannot read the leader lease"),
        }
        tokio::time::sleep(every.min(REVOCATIONS_EVERY)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_of_the_proto_is_relayed() {
        let relayed = [
            AdminService::NAME,
            ChannelService::NAME,
            EnrollmentService::NAME,
        ];
        for m in fleet_proto::access::methods() {
            let service = m.path.trim_start_matches('/').split('/').next().unwrap();
            assert!(relayed.contains(&service), "{} is not relayed", m.path);
        }
    }

    #[test]
    fn the_advertised_address_prefers_the_setting_then_the_listen_address_then_a_name() {
        let mut s = Settings {
            listen: "0.0.0.0:7443".parse().unwrap(),
            ..Settings::default()
        };
        let sans = vec!["ctl-b.example.com".to_owned()];
        assert_eq!(
            advertised(&s, &sans).as_deref(),
            Some("ctl-b.example.com:7443")
        );
        assert_eq!(advertised(&s, &[]), None);
        let v6 = vec!["fd00::2".to_owned()];
        assert_eq!(advertised(&s, &v6).as_deref(), Some("[fd00::2]:7443"));
        s.listen = "10.0.0.2:7443".parse().unwrap();
        assert_eq!(advertised(&s, &sans).as_deref(), Some("10.0.0.2:7443"));
    }
}
