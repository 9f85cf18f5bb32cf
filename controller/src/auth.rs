//! Authorization of every RPC, before any handler runs: the method's rule comes from
//! fleet-proto's access table (unknown methods are refused), the caller's identity from
//! its verified certificate. Handlers read the resulting [`Caller`] from the request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fleet_proto::access::{access_for, may_relay, method, Access};
use fleet_proto::identity::{Identity, Role, TrustDomain};
use fleet_proto::peer::verify_peer;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::operators::Operators;
use crate::ratelimit::{clip, LogThrottle};
use crate::relay::{RELAY_ADDR, RELAY_BY, RELAY_CERT};
use crate::tls::Revocations;

/// Longest caller-supplied text (a path, a name) quoted in a log line or an error.
pub const MAX_QUOTED: usize = 128;

/// Longest `grpc-message` the controller sends: errors quote what the caller sent, and a
/// caller must not be able to make the controller echo a megabyte back.
const MAX_STATUS_MESSAGE: usize = 1024;

/// Who is calling, as established by the authorization layer.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `None` only on anonymous (join) calls without a certificate.
    pub identity: Option<Identity>,
    pub serial: Option<String>,
    /// Unix seconds at which the caller's certificate expires.
    pub not_after: Option<i64>,
    pub addr: Option<SocketAddr>,
    /// The standby that relayed the call (its advertised address), if one did.
    pub via: Option<String>,
}

impl Caller {
    pub fn from_request<T>(req: &tonic::Request<T>) -> Result<&Caller, Status> {
        req.extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::internal("request reached a handler without authorization"))
    }

    /// The identity as written to the audit log.
    pub fn actor(&self) -> String {
        self.identity
            .as_ref()
            .map(Identity::uri)
            .unwrap_or_else(|| "anonymous".into())
    }
}

/// Checks the caller of `path`. `revoked` is consulted on every call, not only at the
/// handshake: a connection (or a resumed TLS session) outlives the moment its certificate
/// was checked.
pub fn authorize(
    path: &str,
    conn: Option<&TlsConnectInfo<TcpConnectInfo>>,
    headers: &http::HeaderMap,
    trust_domain: &TrustDomain,
    revoked: &Revocations,
    operators: &Operators,
) -> Result<Caller, Status> {
    let access = access_for(path).ok_or_else(|| {
        Status::unimplemented(format!("unknown method {}", clip(path, MAX_QUOTED)))
    })?;
    let direct = conn
        .and_then(|c| c.peer_certs())
        .and_then(|certs| certs.first().map(|c| c.to_vec()));
    let (cert, addr, relayed) =
        match relayed_caller(headers, direct.as_deref(), trust_domain, revoked)? {
            Some(r) => (r.cert, Some(r.addr), Some(r.by)),
            None => (direct, conn.and_then(|c| c.get_ref().remote_addr()), None),
        };
    let info = match (&cert, access) {
        (None, Access::Anonymous) => None,
        (None, Access::Role(role)) => {
            return Err(Status::unauthenticated(format!(
                "client certificate required: {path} needs a fleet {role} identity"
            )))
        }
        (None, Access::Operator(min)) => {
            return Err(Status::unauthenticated(format!(
                "client certificate required: {path} needs an operator identity with the {min} role"
            )))
        }
        (Some(der), _) => Some(
            verify_peer(der, trust_domain)
                .map_err(|e| Status::unauthenticated(format!("certificate not accepted: {e}")))?,
        ),
    };
    if let Some(info) = &info {
        // A relay's handshake checked the chain and validity; its clock is not ours.
        if relayed.is_some()
            && !(info.not_before..=info.not_after).contains(&crate::timefmt::now_secs())
        {
            return Err(Status::unauthenticated(format!(
                "certificate {} of {} is not valid now (expired, or not yet valid)",
                info.serial, info.identity
            )));
        }
        if revoked.contains(&info.serial) {
            return Err(Status::unauthenticated(format!(
                "certificate {} of {} is revoked",
                info.serial, info.identity
            )));
        }
    }
    if let (Access::Role(role), Some(info)) = (access, &info) {
        if info.identity.role() != role {
            return Err(Status::permission_denied(format!(
                "{} may not call {path}: it requires the {role} role",
                info.identity
            )));
        }
    }
    if let (Access::Operator(min), Some(info)) = (access, &info) {
        let name = match (info.identity.role(), info.identity.name()) {
            (Role::Admin, Some(name)) => name.as_str(),
            _ => {
                return Err(Status::permission_denied(format!(
                    "{} may not call {path}: it requires the admin role (an operator identity with the {min} operator role)",
                    info.identity
                )))
            }
        };
        let role = operators
            .role(name)
            .map_err(|why| Status::permission_denied(format!("{path} refused: {why}")))?;
        if role < min {
            return Err(Status::permission_denied(format!(
                "{} is a {role}: {path} needs the {min} role (an admin can change that with `fleetctl admin`)",
                info.identity
            )));
        }
    }
    Ok(Caller {
        identity: info.as_ref().map(|i| i.identity.clone()),
        not_after: info.as_ref().map(|i| i.not_after),
        serial: info.map(|i| i.serial),
        addr,
        via: relayed,
    })
}

/// The caller a standby relayed this call for (`relay/`): its certificate (none for a
/// join) and address, from the relay's headers. Only another controller of this fleet may
/// speak for a caller; anyone else sending the headers is refused.
fn relayed_caller(
    headers: &http::HeaderMap,
    direct: Option<&[u8]>,
    trust_domain: &TrustDomain,
    revoked: &Revocations,
) -> Result<Option<Relayed>, Status> {
    let Some(addr) = headers.get(RELAY_ADDR) else {
        if headers.contains_key(RELAY_CERT) {
            return Err(Status::invalid_argument(
                "a relayed certificate without an address",
            ));
        }
        return Ok(None);
    };
    let relay = direct
        .and_then(|der| verify_peer(der, trust_domain).ok())
        .filter(|i| may_relay(i.identity.role()) && !revoked.contains(&i.serial));
    if relay.is_none() {
        return Err(Status::permission_denied(
            "only a controller of this fleet may relay a call",
        ));
    }
    let bad = || Status::invalid_argument("unusable relay headers");
    let addr: SocketAddr = addr
        .to_str()
        .ok()
        .and_then(|a| a.parse().ok())
        .ok_or_else(bad)?;
    let cert = match headers.get(RELAY_CERT) {
        Some(v) => Some(hex::decode(v.as_bytes()).map_err(|_| bad())?),
        None => None,
    };
    let by = headers
        .get(RELAY_BY)
        .and_then(|v| v.to_str().ok())
        .map(|v| clip(v, MAX_QUOTED).into_owned())
        .unwrap_or_else(|| "a standby".into());
    Ok(Some(Relayed { cert, addr, by }))
}

/// Who a relay says it speaks for.
#[derive(Debug)]
struct Relayed {
    /// DER; `None` for an anonymous join.
    cert: Option<Vec<u8>>,
    addr: SocketAddr,
    /// The relay's own address, as it advertises it.
    by: String,
}

/// Authorizes every call, bounds unary calls in time and caps the status message.
#[derive(Clone)]
pub struct AuthLayer {
    pub trust_domain: TrustDomain,
    pub revoked: Arc<Revocations>,
    pub operators: Arc<Operators>,
    /// Deadline of unary calls (streams run as long as their handlers decide).
    pub request_timeout: Duration,
    /// Refused calls are logged through this: anyone can make them.
    pub refused_log: Arc<LogThrottle>,
}

impl AuthLayer {
    pub fn new(
        trust_domain: TrustDomain,
        revoked: Arc<Revocations>,
        operators: Arc<Operators>,
        request_timeout: Duration,
    ) -> Self {
        AuthLayer {
            trust_domain,
            revoked,
            operators,
            request_timeout,
            refused_log: Arc::new(LogThrottle::new(10, Duration::from_secs(1))),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            cfg: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    cfg: AuthLayer,
}

/// Cuts an over-long `grpc-message` (percent-encoded, so any cut at a `%` boundary stays
/// valid) down to [`MAX_STATUS_MESSAGE`].
fn cap_status_message(headers: &mut http::HeaderMap) {
    let Some(v) = headers.get("grpc-message") else {
        return;
    };
    let bytes = v.as_bytes();
    if bytes.len() <= MAX_STATUS_MESSAGE {
        return;
    }
    let mut end = MAX_STATUS_MESSAGE;
    // Never split a %XX escape.
    for back in 1..=2 {
        if bytes[end - back] == b'%' {
            end -= back;
            break;
        }
    }
    let mut cut = bytes[..end].to_vec();
    cut.extend_from_slice(b"%E2%80%A6(truncated)");
    if let Ok(v) = http::HeaderValue::from_bytes(&cut) {
        headers.insert("grpc-message", v);
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let conn = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        match authorize(
            req.uri().path(),
            conn,
            req.headers(),
            &self.cfg.trust_domain,
            &self.cfg.revoked,
            &self.cfg.operators,
        ) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                let unary = method(req.uri().path()).is_some_and(|m| m.is_unary());
                let timeout = self.cfg.request_timeout;
                let call = self.inner.call(req);
                Box::pin(async move {
                    let mut resp = if unary {
                        match tokio::time::timeout(timeout, call).await {
                            Ok(r) => r?,
                            Err(_) => Status::deadline_exceeded(format!(
                                "the controller did not answer within {timeout:?} (request_timeout)"
                            ))
                            .into_http(),
                        }
                    } else {
                        call.await?
                    };
                    cap_status_message(resp.headers_mut());
                    Ok(resp)
                })
            }
            Err(status) => {
                if let Some(suppressed) = self.cfg.refused_log.admit(Instant::now()) {
                    let peer = conn.and_then(|c| c.get_ref().remote_addr());
                    tracing::warn!(
                        peer = ?peer,
                        method = %clip(req.uri().path(), MAX_QUOTED).escape_debug(),
                        reason = %status.message().escape_debug(),
                        suppressed,
                        "call refused"
                    );
                }
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    fn der(ca: &Ca, identity: &Identity) -> Vec<u8> {
        let issued = ca
            .new_client_identity(identity, Duration::from_secs(3600))
            .unwrap()
            .issued;
        fleet_proto::transport::certs_from_pem(&issued.cert_pem, "test")
            .unwrap()
            .remove(0)
            .to_vec()
    }

    fn relay_headers(cert: Option<&[u8]>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(RELAY_ADDR, "192.0.2.7:40000".parse().unwrap());
        if let Some(c) = cert {
            h.insert(RELAY_CERT, hex::encode(c).parse().unwrap());
        }
        h
    }

    #[test]
    fn only_a_controller_of_the_fleet_may_speak_for_a_caller() {
        let td: TrustDomain = "fleet.local".parse().unwrap();
        let (ca, _) = Ca::generate(td.clone()).unwrap();
        let agent = der(&ca, &Identity::agent(td.clone(), "web-1".parse().unwrap()));
        let admin = der(&ca, &Identity::admin(td.clone(), "alice".parse().unwrap()));
        let peer = der(&ca, &Identity::controller(td.clone()));
        let revoked = Revocations::default();
        let headers = relay_headers(Some(&agent));

        // Nothing relayed: the direct caller stands.
        let none = relayed_caller(&http::HeaderMap::new(), Some(&agent), &td, &revoked);
        assert!(none.unwrap().is_none());
        // A controller relays an agent and an anonymous join.
        let r = relayed_caller(&headers, Some(&peer), &td, &revoked)
            .unwrap()
            .unwrap();
        assert_eq!(r.cert.as_deref(), Some(agent.as_slice()));
        assert_eq!(r.addr.to_string(), "192.0.2.7:40000");
        let r = relayed_caller(&relay_headers(None), Some(&peer), &td, &revoked)
            .unwrap()
            .unwrap();
        assert!(r.cert.is_none());
        // An agent, an operator or an anonymous caller sending the headers is refused.
        for direct in [Some(agent.as_slice()), Some(admin.as_slice()), None] {
            let e = relayed_caller(&headers, direct, &td, &revoked).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
        }
        // So is a controller of another fleet, and one whose certificate was revoked.
        let other: TrustDomain = "other.local".parse().unwrap();
        let (other_ca, _) = Ca::generate(other.clone()).unwrap();
        let stranger = der(&other_ca, &Identity::controller(other));
        assert!(relayed_caller(&headers, Some(&stranger), &td, &revoked).is_err());
        let serial = fleet_proto::peer::cert_info(&peer).unwrap().serial;
        revoked.insert(serial);
        assert!(relayed_caller(&headers, Some(&peer), &td, &revoked).is_err());
        // Unusable headers are refused, never guessed at.
        let revoked = Revocations::default();
        let mut bad = relay_headers(None);
        bad.insert(RELAY_CERT, "not-hex".parse().unwrap());
        let e = relayed_caller(&bad, Some(&peer), &td, &revoked).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let mut only_cert = http::HeaderMap::new();
        only_cert.insert(RELAY_CERT, hex::encode(&agent).parse().unwrap());
        assert!(relayed_caller(&only_cert, Some(&peer), &td, &revoked).is_err());
    }
}
