//! Authorization of every RPC, before any handler runs: the method's rule comes from
//! fleet-proto's access table (unknown methods are refused), the caller's identity from
//! its verified certificate. Handlers read the resulting [`Caller`] from the request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fleet_proto::access::{access_for, method, Access};
use fleet_proto::identity::{Identity, Role, TrustDomain};
use fleet_proto::peer::verify_peer;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::operators::Operators;
use crate::ratelimit::{clip, LogThrottle};
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
    trust_domain: &TrustDomain,
    revoked: &Revocations,
    operators: &Operators,
) -> Result<Caller, Status> {
    let addr = conn.and_then(|c| c.get_ref().remote_addr());
    let access = access_for(path).ok_or_else(|| {
        Status::unimplemented(format!("unknown method {}", clip(path, MAX_QUOTED)))
    })?;
    let cert = conn
        .and_then(|c| c.peer_certs())
        .and_then(|certs| certs.first().cloned());
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
    })
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
