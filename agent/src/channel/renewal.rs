//! Certificate renewal over the session stream: when to ask (2/3 of the lifetime), the
//! request, and the checks on the answer before the new certificate is saved.

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
    pending: Option<String>,
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
    pub(super) key: &'a KeyPair,
    pub(super) ca_der: &'a [u8],
    pub(super) creds: &'a mut Credentials,
    pub(super) state: &'a StateDir,
}

impl Renewal {
    /// Called when due: the request to send, or None when none could be made (logged;
    /// retried after `retry` like a refused one).
    pub(super) fn request(&mut self, key: &KeyPair, creds: &Credentials) -> Option<RenewRequest> {
        let request_id = hex::encode(rand::random::<[u8; 16]>());
        self.next = Instant::now() + self.retry;
        let csr = match csr_pem(key, &creds.meta.name) {
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
        self.pending = Some(request_id.clone());
        Some(RenewRequest {
            request_id,
            csr_pem: csr,
        })
    }

    /// The controller's answer: a certificate that passes the join checks is saved and
    /// replaces the session's; anything else waits for the next attempt.
    pub(super) fn answered(&mut self, r: RenewResponse, cert: Cert<'_>) {
        if self.pending.as_deref() != Some(r.request_id.as_str()) {
            tracing::debug!(request_id = %r.request_id, "ignoring an unexpected renewal answer");
            return;
        }
        self.pending = None;
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
            cert.key,
            &cert.creds.meta.name,
            Some(&cert.creds.meta.trust_domain),
        ) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!("renewed certificate rejected: {e}; retrying in {retry}");
                return;
            }
        };
        // Small file, local disk: blocking here for a moment is fine.
        if let Err(e) = cert.state.write_cert(&r.cert_pem) {
            tracing::error!("cannot save the renewed certificate: {e}; retrying in {retry}");
            return;
        }
        tracing::info!(
            expires = %crate::clock::format_time(info.not_after),
            "certificate renewed"
        );
        *self = Renewal::for_cert(info.not_before, info.not_after);
        cert.creds.cert = info;
        cert.creds.cert_pem = r.cert_pem;
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
