//! The controller's serving certificate: loaded from the data dir, renewed from the fleet CA
//! at two thirds of its lifetime, and swapped into the TLS listener in place. A controller
//! left running for years never serves an expired certificate, and one started with an
//! expired certificate renews it before it accepts anyone, so agents never lose the fleet
//! to a date.
//!
//! Renewal keeps the key and the SANs `init` chose, as agents keep theirs: only
//! `controller.crt` changes, replaced whole, so a crash leaves the old or the new one.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use fleet_proto::renewal::{renew_at, renew_delay, retry_delay};
use fleet_proto::transport::{certs_from_pem, provider};
use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::datadir::DataDir;
use crate::pki::Ca;
use crate::shared::Shared;
use crate::timefmt::now_secs;

/// Longest sleep between checks, so a wall clock that jumps (suspend, NTP step) is noticed.
const CHECK_AT_LEAST_EVERY: Duration = Duration::from_secs(3600);

/// What the certificate being served says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// DNS names and addresses clients dial (the SPIFFE URI is added at issue, not kept here).
    pub sans: Vec<String>,
}

pub struct ServingCert {
    key: KeyPair,
    ca: Vec<CertificateDer<'static>>,
    cert_path: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Served)>,
}

impl ServingCert {
    /// Reads `controller.crt` and `controller.key` and checks that they belong together.
    pub fn load(dd: &DataDir, ca_pem: &str) -> anyhow::Result<ServingCert> {
        let key = KeyPair::from_pem(&dd.read(&dd.server_key())?).with_context(|| {
            format!(
                "{} is not a private key this controller can use",
                dd.server_key().display()
            )
        })?;
        let ca = certs_from_pem(ca_pem, "the CA certificate")?;
        let cert_pem = dd.read(&dd.server_cert())?;
        let current = certified(&key, &ca, &cert_pem)
            .with_context(|| format!("cannot serve {}", dd.server_cert().display()))?;
        Ok(ServingCert {
            key,
            ca,
            cert_path: dd.server_cert(),
            current: RwLock::new(current),
        })
    }

    pub fn served(&self) -> Served {
        self.current.read().expect("serving cert lock").1.clone()
    }

    /// Whether `now` (Unix seconds) is at or past the renewal point.
    pub fn due(&self, now: i64) -> bool {
        let s = self.served();
        now >= renew_at(s.not_before, s.not_after)
    }

    /// Issues a certificate for the same key and SANs valid for `lifetime`, writes it over
    /// `controller.crt` and serves it from the next handshake on. On any error nothing
    /// changes: the file is replaced whole, and only after the new certificate was checked.
    pub fn renew(&self, ca: &Ca, lifetime: Duration) -> anyhow::Result<Served> {
        let sans = self.served().sans;
        let issued = ca
            .issue_server(&self.key, &sans, lifetime)
            .context("cannot issue the controller certificate")?;
        let next = certified(&self.key, &self.ca, &issued.cert_pem)?;
        fleet_proto::files::write_atomic(&self.cert_path, issued.cert_pem.as_bytes(), 0o644)?;
        let served = next.1.clone();
        *self.current.write().expect("serving cert lock") = next;
        Ok(served)
    }
}

/// The chain rustls serves (leaf, then the CA so a joining agent can check its pin) with
/// the key, checked to match, and the leaf's facts.
fn certified(
    key: &KeyPair,
    ca: &[CertificateDer<'static>],
    cert_pem: &str,
) -> anyhow::Result<(Arc<CertifiedKey>, Served)> {
    let mut chain = certs_from_pem(cert_pem, "the controller certificate")?;
    let served = facts(&chain[0])?;
    chain.extend(ca.iter().cloned());
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let certified = CertifiedKey::from_der(chain, key_der, &provider())
        .context("the controller certificate does not match controller.key")?;
    Ok((Arc::new(certified), served))
}

fn facts(der: &[u8]) -> anyhow::Result<Served> {
    let info = fleet_proto::peer::cert_info(der).context("unreadable controller certificate")?;
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| anyhow::anyhow!("unreadable controller certificate: {e}"))?;
    let mut sans = Vec::new();
    let names = cert
        .subject_alternative_name()
        .map_err(|e| anyhow::anyhow!("unreadable controller certificate SANs: {e}"))?;
    for name in names.iter().flat_map(|n| n.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(dns) => sans.push(dns.to_string()),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("4 bytes")),
                    16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("16 bytes")),
                    n => anyhow::bail!("controller certificate has a {n}-byte IP address SAN"),
                };
                sans.push(ip.to_string());
            }
            _ => {}
        }
    }
    Ok(Served {
        serial: info.serial,
        not_before: info.not_before,
        not_after: info.not_after,
        sans,
    })
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("serving cert lock").0.clone())
    }
}

/// Without the key: rustls wants resolvers to be `Debug`, and keys never reach a log.
impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.served();
        f.debug_struct("ServingCert")
            .field("serial", &s.serial)
            .field("not_after", &s.not_after)
            .finish_non_exhaustive()
    }
}

/// Renews the serving certificate when it is due: audited, logged and reflected in
/// `fleet_controller_certificate_expiry_timestamp_seconds`. `Ok(None)` when not due.
pub fn renew_if_due(shared: &Shared) -> anyhow::Result<Option<Served>> {
    let serving = &shared.serving;
    if !serving.due(now_secs()) {
        return Ok(None);
    }
    let old = serving.served();
    let new = serving.renew(&shared.ca, shared.settings.server_cert_lifetime)?;
    shared.metrics.set_certificate_expiry(new.not_after);
    let expired = if old.not_after <= now_secs() {
        " (it had expired)"
    } else {
        ""
    };
    let detail = format!(
        "serial {} replaced by {}{expired}; valid until {}",
        old.serial,
        new.serial,
        crate::timefmt::rfc3339(new.not_after)
    );
    if let Err(e) = shared.audit("controller", "controller.cert.renew", "controller", &detail) {
        // The certificate is already served; an audit failure must not undo that.
        tracing::error!(error = %e, detail, "could not audit the controller certificate renewal");
    }
    tracing::info!(
        serial = %new.serial,
        not_after = %crate::timefmt::rfc3339(new.not_after),
        "controller certificate renewed"
    );
    Ok(Some(new))
}

/// Sleeps until the serving certificate is due, renews it, and again, for as long as the
/// controller runs. A failed renewal is logged and retried well before the certificate
/// expires.
pub async fn keep_fresh(shared: Arc<Shared>) {
    loop {
        let s = shared.serving.served();
        let wait = renew_delay(now_secs(), s.not_before, s.not_after).min(CHECK_AT_LEAST_EVERY);
        tokio::time::sleep(wait).await;
        if let Err(e) = renew_if_due(&shared) {
            tracing::error!(
                error = format!("{e:#}"),
                "renewing the controller certificate failed; retrying"
            );
            tokio::time::sleep(retry_delay(s.not_before, s.not_after)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::identity::TrustDomain;

    fn fleet(lifetime: Duration) -> (tempfile::TempDir, DataDir, Ca) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let sans = ["fleet.example.com".to_string(), "198.18.0.1".to_string()];
        crate::init::init(
            &dir,
            TrustDomain::default(),
            &sans,
            lifetime,
            lifetime,
            None,
        )
        .unwrap();
        let dd = DataDir(dir);
        let ca = Ca::load(
            TrustDomain::default(),
            &dd.read(&dd.ca_cert()).unwrap(),
            &dd.read(&dd.ca_key()).unwrap(),
        )
        .unwrap();
        (tmp, dd, ca)
    }

    #[test]
    fn renewal_keeps_key_and_sans_and_replaces_the_file() {
        let (_tmp, dd, ca) = fleet(Duration::from_secs(3600));
        let key_before = std::fs::read(dd.server_key()).unwrap();
        let serving = ServingCert::load(&dd, ca.cert_pem()).unwrap();
        let before = serving.served();
        assert_eq!(
            before.sans,
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "fleet.example.com",
                "198.18.0.1"
            ]
        );
        assert!(!serving.due(before.not_before + 1));
        assert!(serving.due(renew_at(before.not_before, before.not_after)));

        let after = serving.renew(&ca, Duration::from_secs(7200)).unwrap();
        assert_ne!(after.serial, before.serial);
        assert_eq!(after.sans, before.sans);
        assert!(after.not_after > before.not_after);
        assert_eq!(serving.served(), after);
        assert_eq!(std::fs::read(dd.server_key()).unwrap(), key_before);
        // What a restarted controller reads is what was being served.
        assert_eq!(
            ServingCert::load(&dd, ca.cert_pem()).unwrap().served(),
            after
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dd.0)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_certificate_for_another_key_is_refused_by_name() {
        let (_tmp, dd, ca) = fleet(Duration::from_secs(3600));
        let other = KeyPair::generate().unwrap();
        let issued = ca
            .issue_server(&other, &["localhost".into()], Duration::from_secs(60))
            .unwrap();
        std::fs::write(dd.server_cert(), issued.cert_pem).unwrap();
        let err = format!("{:#}", ServingCert::load(&dd, ca.cert_pem()).unwrap_err());
        assert!(err.contains("does not match controller.key"), "{err}");
    }

    #[test]
    fn the_debug_form_carries_no_key() {
        let (_tmp, dd, ca) = fleet(Duration::from_secs(3600));
        let serving = ServingCert::load(&dd, ca.cert_pem()).unwrap();
        let s = serving.served();
        assert_eq!(
            format!("{serving:?}"),
            format!(
                "ServingCert {{ serial: {:?}, not_after: {}, .. }}",
                s.serial, s.not_after
            )
        );
    }
}
