//! Certificate renewal over the session stream: when to ask (2/3 of the lifetime), the
//! request, and the checks on the answer before the new certificate is saved. Every
//! renewal rotates the key: a new one is made for the request, and the pair replaces
//! the old one only once the controller's certificate for it passed the join checks.

use std::time::Duration;

use fleet_proto::renewal::{renew_delay, retry_delay};
use fleet_proto::v1::{RenewRequest, RenewResponse};
use rcgen::KeyPair;
use tokio::time::Instant;

use crate::clock::now_unix;
use crate::renew::{check_issued, csr_pem};
use crate::state::{Credentials, StateDir};

/// When to ask for a new certificate, and the request in flight if any.
pub(super) struct Renewal {
    pub(super) next: Instant,
    retry: Duration,
    /// The request in flight and the new key it asked a certificate for.
    pending: Option<(String, KeyPair)>,
}

impl Renewal {
    pub(super) fn schedule(creds: &Credentials) -> Self {
        Self::for_cert(creds.cert.not_before, creds.cert.not_after)
    }

    fn for_cert(not_before: i64, not_after: i64) -> Self {
        Renewal {
            next: Instant::now() + renew_delay(now_unix(), not_before, not_after),
            retry: retry_delay(not_before, not_after),
            pending: None,
        }
    }
}

/// What the session holds that a renewal reads or replaces.
pub(super) struct Cert<'a> {
    pub(super) key: &'a mut KeyPair,
    pub(super) ca_der: &'a [u8],
    pub(super) creds: &'a mut Credentials,
    pub(super) state: &'a StateDir,
}

impl Renewal {
    /// Called when due: the request to send, or None when none could be made (logged;
    /// retried after `retry` like a refused one).
    pub(super) fn request(&mut self, creds: &Credentials) -> Option<RenewRequest> {
        let request_id = hex::encode(rand::random::<[u8; 16]>());
        self.next = Instant::now() + self.retry;
        let key = match KeyPair::generate() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "cannot make a new key for the renewal");
                return None;
            }
        };
        let csr = match csr_pem(&key, &creds.meta.name) {
            Ok(csr) => csr,
            Err(e) => {
                tracing::error!(error = %e, "cannot make a renewal request");
                return None;
            }
        };
        tracing::info!(
            expires = %crate::clock::format_time(creds.cert.not_after),
            "renewing certificate"
        );
        self.pending = Some((request_id.clone(), key));
        Some(RenewRequest {
            request_id,
            csr_pem: csr,
        })
    }

    /// The controller's answer: a certificate that passes the join checks is saved and
    /// replaces the session's; anything else waits for the next attempt.
    pub(super) fn answered(&mut self, r: RenewResponse, cert: Cert<'_>) {
        let key = match self.pending.take() {
            Some((id, key)) if id == r.request_id => key,
            other => {
                self.pending = other;
                tracing::debug!(request_id = %r.request_id, "ignoring an unexpected renewal answer");
                return;
            }
        };
        let retry = humantime::format_duration(self.retry);
        self.next = Instant::now() + self.retry;
        if !r.error.is_empty() {
            tracing::warn!(
                "certificate renewal refused by controller: {}; retrying in {retry}",
                r.error
            );
            return;
        }
        // Same checks as at join; the CA stays the one pinned at join (ca_pem is not
        // trusted to replace it: CA rotation is a separate, deliberate operation).
        let info = match check_issued(
            &r.cert_pem,
            cert.ca_der,
            &key,
            &cert.creds.meta.name,
            Some(&cert.creds.meta.trust_domain),
        ) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!("renewed certificate rejected: {e}; retrying in {retry}");
                return;
            }
        };
        // Small files, local disk: blocking here for a moment is fine.
        let key_pem = key.serialize_pem();
        if let Err(e) = cert.state.write_rotated(&key_pem, &r.cert_pem) {
            tracing::error!(
                "cannot save the renewed certificate and its new key: {e}; retrying in {retry}"
            );
            return;
        }
        tracing::info!(
            expires = %crate::clock::format_time(info.not_after),
            "certificate renewed with a new key"
        );
        *self = Renewal::for_cert(info.not_before, info.not_after);
        cert.creds.cert = info;
        cert.creds.cert_pem = r.cert_pem;
        cert.creds.key_pem = key_pem;
        *cert.key = key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_due_now_when_past_two_thirds() {
        let now = now_unix();
        let r = Renewal::for_cert(now - 700, now + 300);
        assert!(r.next <= Instant::now());
        let r = Renewal::for_cert(now, now + 3_000);
        assert!(r.next > Instant::now() + Duration::from_secs(1_990));
    }
}
