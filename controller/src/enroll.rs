//! The join call: a token and a CSR in, a short-lived agent certificate out.

use std::sync::Arc;
use std::time::Instant;

use fleet_proto::identity::{Identity, Name};
use fleet_proto::v1::enrollment_server::Enrollment;
use fleet_proto::v1::{JoinRequest, JoinResponse};
use tonic::{Request, Response, Status};

use crate::auth::{Caller, MAX_QUOTED};
use crate::pki::parse_csr;
use crate::ratelimit::clip;
use crate::shared::{internal, Shared};
use crate::store::{HostRecord, IssuedSerial, JoinAudit, TokenRecord};
use crate::timefmt::{now_ms, now_secs};
use crate::tokens;

pub struct EnrollmentService(pub Arc<Shared>);

/// Why a join that got as far as the token was refused.
enum Refusal {
    Token(tokens::TokenRefused),
    Enrolled,
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let shared = &self.0;
        let caller = Caller::from_request(&request)?.clone();
        let ip = caller.addr.map(|a| a.ip());
        let now_i = Instant::now();
        let limited = match bulk_token(shared, &request.get_ref().token) {
            // The secret is proof enough that this is the operator's bulk enrollment: its
            // own budget replaces the limits that guard against guessing.
            Some((hash, per_minute)) => shared
                .join_limiter
                .lock()
                .expect("limiter lock")
                .check_bulk(&hash, per_minute, now_i)
                .map_err(|wait| ("with this bulk token (its --bulk-rate)".to_owned(), wait)),
            None => match ip {
                Some(ip) => shared
                    .join_limiter
                    .lock()
                    .expect("limiter lock")
                    .check(ip, now_i)
                    .map_err(|wait| (format!("from {ip}"), wait)),
                None => Ok(()),
            }
            .and_then(|()| {
                shared
                    .join_global
                    .lock()
                    .expect("limiter lock")
                    .check(now_i)
                    .map_err(|wait| ("from all sources (join_global_per_minute)".to_owned(), wait))
            }),
        };
        if let Err((scope, wait)) = limited {
            if let Some(suppressed) = shared.join_refusals_log.admit(now_i) {
                tracing::warn!(peer = ?ip, %scope, suppressed, "join rate limit hit");
            }
            return Err(Status::resource_exhausted(format!(
                "too many join attempts {scope}: retry in {}s",
                wait.as_secs() + 1
            )));
        }
        let req = request.into_inner();
        let name: Name = req
            .name
            .parse()
            .map_err(|e: fleet_proto::identity::InvalidName| {
                Status::invalid_argument(format!("host name: {}", clip(&e.to_string(), MAX_QUOTED)))
            })?;
        tokens::check_format(&req.token).map_err(|e| Status::permission_denied(e.to_string()))?;
        let csr = parse_csr(&req.csr_pem).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A read first: the certificate is signed outside the write transaction (so joins
        // sign on every core), and only for a token that looks good. The transaction
        // checks again before it spends the use.
        let hash = tokens::hash(&req.token);
        let now = now_secs();
        let decide = move |t: Option<&TokenRecord>, enrolled: bool| {
            tokens::check_use(t, now).map_err(Refusal::Token)?;
            // Checked after the token: whether a name is enrolled is not for anonymous
            // callers to learn.
            if enrolled {
                return Err(Refusal::Enrolled);
            }
            Ok(())
        };
        let token = shared.store.token(&hash).map_err(internal)?;
        let enrolled = shared
            .store
            .host(name.as_str())
            .map_err(internal)?
            .is_some();
        if let Err(refused) = decide(token.as_ref(), enrolled) {
            return Err(refuse(shared, refused, &name, ip, now_i));
        }
        let group = token.map(|t| t.group).unwrap_or_default();

        let identity = Identity::agent(shared.ca.trust_domain().clone(), name.clone());
        let issued = shared
            .ca
            .issue_client(&csr, &identity, shared.settings.agent_cert_lifetime)
            .map_err(|e| Status::internal(e.to_string()))?;
        let address = ip.map(|i| i.to_string()).unwrap_or_default();
        let host = HostRecord {
            name: name.to_string(),
            enrolled_at_ms: now_ms(),
            address: address.clone(),
            last_seen_ms: 0,
            version: String::new(),
            package_version: String::new(),
            hostname: String::new(),
            os: String::new(),
            kernel: String::new(),
            cores: 0,
            memory_bytes: 0,
            serials: vec![IssuedSerial {
                serial: issued.serial.clone(),
                not_after: issued.not_after,
            }],
            cert_expires: issued.not_after,
            metrics_port: 0,
            group,
        };
        let detail = format!("from {address}, certificate {}", issued.serial);
        // One commit (token use, host, audit entry), on a blocking thread: it fsyncs.
        let s = shared.clone();
        let written = tokio::task::spawn_blocking(move || {
            let spent = s.store.join_host(
                &hash,
                decide,
                &host,
                &JoinAudit {
                    time_ms: now_ms(),
                    detail: &detail,
                },
            );
            (spent, detail)
        })
        .await
        .map_err(|e| Status::internal(format!("join failed: {e}")))?;
        let (spent, detail) = written;
        match spent.map_err(internal)? {
            Ok(token) => {
                tracing::info!(actor = %format!("token:{}", token.token_id), action = "host.join", target = %name, %detail, "audit");
            }
            Err(refused) => return Err(refuse(shared, refused, &name, ip, now_i)),
        }
        Ok(Response::new(JoinResponse {
            cert_pem: issued.cert_pem,
            ca_pem: shared.ca.cert_pem().to_owned(),
            identity: identity.uri(),
            not_after: issued.not_after,
        }))
    }
}

/// The hash and rate of `secret` if it is a bulk token that can still be used. A read
/// only: the use itself is spent (and checked again) atomically later. Anything else (a
/// malformed, unknown, spent, expired or ordinary token, a store error) is `None` and
/// meets the per-source and fleet-wide limits, so guessing gains nothing from this.
fn bulk_token(shared: &Shared, secret: &str) -> Option<(String, u32)> {
    tokens::check_format(secret).ok()?;
    let hash = tokens::hash(secret);
    let token = shared.store.token(&hash).ok()??;
    if token.bulk_per_minute == 0 || tokens::check_use(Some(&token), now_secs()).is_err() {
        return None;
    }
    Some((hash, token.bulk_per_minute))
}

/// The answer to a join refused at the token (or because the name is taken); refused
/// token uses are audited at a bounded rate.
fn refuse(
    shared: &Shared,
    refusal: Refusal,
    name: &Name,
    ip: Option<std::net::IpAddr>,
    now_i: Instant,
) -> Status {
    match refusal {
        Refusal::Enrolled => Status::already_exists(format!(
            "host {name} is already enrolled: remove it first with `fleetctl host remove {name}`, or join with another --name"
        )),
        Refusal::Token(refused) => {
            let from = ip.map(|i| i.to_string()).unwrap_or_default();
            // Anyone can make these: a few reach the audit log, the rest are counted
            // in a rate-limited log line, so a flood cannot grow the store.
            let audited = shared
                .join_refusals_audit
                .lock()
                .expect("limiter lock")
                .check(now_i)
                .is_ok();
            if audited {
                if let Err(e) = shared.audit(
                    "anonymous",
                    "host.join.refused",
                    name.as_str(),
                    &format!("from {from}: {refused}"),
                ) {
                    return internal(e);
                }
            } else if let Some(suppressed) = shared.join_refusals_log.admit(now_i) {
                tracing::warn!(peer = %from, host = %name, reason = %refused, suppressed, "join refused (not audited: audit rate for refused joins reached)");
            }
            Status::permission_denied(refused.to_string())
        }
    }
}
