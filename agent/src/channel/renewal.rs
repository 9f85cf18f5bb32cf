//! Certificate renewal over the session stream: when to ask (2/3 of the lifetime), the
//! request, and the checks on the answer before the new certificate is saved.

use std::time::Duration;

use fleet_proto::renewal::{renew_delay, retry_delay};
use fleet_proto::v1::{agent_message, RenewRequest, RenewResponse};
use tokio::time::Instant;

use super::session::Session;
use super::SessionEnd;
use crate::clock::now_unix;
use crate::renew::{check_issued, csr_pem};
use crate::state::Credentials;

/// When to ask for a new certificate, and the request in flight if any.
pub(super) struct Renewal {
    pub(super) next: Instant,
    pub(super) retry: Duration,
    pub(super) pending: Option<String>,
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

impl Session<'_> {
    pub(super) async fn request_renewal(&mut self) -> Result<(), SessionEnd> {
        let request_id = hex::encode(rand::random::<[u8; 16]>());
        let name = self.creds.meta.name.clone();
        self.renewal.next = Instant::now() + self.renewal.retry;
        let csr = match csr_pem(&self.key, &name) {
            Ok(csr) => csr,
            Err(e) => {
                tracing::error!(error = %e, "cannot make a renewal request");
                return Ok(());
            }
        };
        tracing::info!(
            expires = %crate::clock::format_time(self.creds.cert.not_after),
            "renewing certificate"
        );
        self.renewal.pending = Some(request_id.clone());
        self.send(agent_message::Body::Renew(RenewRequest {
            request_id,
            csr_pem: csr,
        }))
        .await
    }

    pub(super) fn renewed(&mut self, r: RenewResponse) {
        if self.renewal.pending.as_deref() != Some(r.request_id.as_str()) {
            tracing::debug!(request_id = %r.request_id, "ignoring an unexpected renewal answer");
            return;
        }
        self.renewal.pending = None;
        let retry = humantime::format_duration(self.renewal.retry);
        self.renewal.next = Instant::now() + self.renewal.retry;
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
            &self.ca_der,
            &self.key,
            &self.creds.meta.name,
            Some(&self.creds.meta.trust_domain),
        ) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!("renewed certificate rejected: {e}; retrying in {retry}");
                return;
            }
        };
        // Small file, local disk: blocking here for a moment is fine.
        if let Err(e) = self.state.write_cert(&r.cert_pem) {
            tracing::error!("cannot save the renewed certificate: {e}; retrying in {retry}");
            return;
        }
        tracing::info!(
            expires = %crate::clock::format_time(info.not_after),
            "certificate renewed"
        );
        self.renewal = Renewal::for_cert(info.not_before, info.not_after);
        self.creds.cert = info;
        self.creds.cert_pem = r.cert_pem;
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
