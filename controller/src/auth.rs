//! Authorization of every RPC, before any handler runs: the method's rule comes from
//! fleet-proto's access table (unknown methods are refused), the caller's identity from
//! its verified certificate. Handlers read the resulting [`Caller`] from the request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use fleet_proto::access::{access_for, Access};
use fleet_proto::identity::{Identity, TrustDomain};
use fleet_proto::peer::verify_peer;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// Who is calling, as established by the authorization layer.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `None` only on anonymous (join) calls without a certificate.
    pub identity: Option<Identity>,
    pub serial: Option<String>,
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

pub fn authorize(
    path: &str,
    conn: Option<&TlsConnectInfo<TcpConnectInfo>>,
    trust_domain: &TrustDomain,
) -> Result<Caller, Status> {
    let addr = conn.and_then(|c| c.get_ref().remote_addr());
    let access =
        access_for(path).ok_or_else(|| Status::unimplemented(format!("unknown method {path}")))?;
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
        (Some(der), _) => Some(
            verify_peer(der, trust_domain)
                .map_err(|e| Status::unauthenticated(format!("certificate not accepted: {e}")))?,
        ),
    };
    if let (Access::Role(role), Some(info)) = (access, &info) {
        if info.identity.role() != role {
            return Err(Status::permission_denied(format!(
                "{} may not call {path}: it requires the {role} role",
                info.identity
            )));
        }
    }
    Ok(Caller {
        identity: info.as_ref().map(|i| i.identity.clone()),
        serial: info.map(|i| i.serial),
        addr,
    })
}

#[derive(Clone)]
pub struct AuthLayer {
    pub trust_domain: TrustDomain,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            trust_domain: self.trust_domain.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    trust_domain: TrustDomain,
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
        match authorize(req.uri().path(), conn, &self.trust_domain) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                let peer = conn.and_then(|c| c.get_ref().remote_addr());
                tracing::warn!(
                    peer = ?peer,
                    method = req.uri().path(),
                    reason = status.message(),
                    "call refused"
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
