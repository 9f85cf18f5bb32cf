//! The fleet CA: creating it at `init`, reloading it at `run`, and issuing certificates.
//!
//! Whatever a CSR asks for (subject, SANs, CA flag, key usages, validity) is thrown away:
//! only its public key is used. Every other field is decided here, from an [`Identity`].

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_proto::identity::{Identity, TrustDomain};
use fleet_proto::peer::CaPin;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate request is invalid: {0}")]
    BadCsr(String),
    #[error("could not load the fleet CA: {0}")]
    LoadCa(String),
    #[error("could not issue certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("invalid SAN {0:?}: expected a DNS name or an IP address")]
    BadSan(String),
}

/// A freshly issued certificate.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub serial: String,
    pub not_after: i64,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    pin: CaPin,
    trust_domain: TrustDomain,
}

const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn random_serial() -> (SerialNumber, String) {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Positive and with no leading zero byte, so its DER form is exactly these bytes and
    // the hex we store equals what a verifier reads back.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Validity window: backdated a little for clock skew between hosts, but never by more
/// than a tenth of the lifetime (tests use lifetimes of seconds).
fn validity(lifetime: Duration) -> (OffsetDateTime, OffsetDateTime, i64) {
    let now = SystemTime::now();
    let skew = (lifetime / 10).min(Duration::from_secs(300));
    let not_before = now - skew;
    let not_after = now + lifetime;
    (
        OffsetDateTime::from(not_before),
        OffsetDateTime::from(not_after),
        unix(not_after),
    )
}

fn leaf_params(identity: &Identity, lifetime: Duration) -> (CertificateParams, String, i64) {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.uri());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        identity.uri().try_into().expect("identity URIs are ASCII"),
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let (serial, serial_hex) = random_serial();
    params.serial_number = Some(serial);
    let (nb, na, not_after) = validity(lifetime);
    params.not_before = nb;
    params.not_after = na;
    (params, serial_hex, not_after)
}

/// Parses a CSR and checks its signature (proof the requester holds the key).
pub fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, PkiError> {
    if csr_pem.len() > 16 * 1024 {
        return Err(PkiError::BadCsr("larger than 16 KiB".into()));
    }
    CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::BadCsr(e.to_string()))
}

/// A key made here plus its certificate (the controller's own, and the first admin's).
pub struct LocalIdentity {
    pub key_pem: String,
    pub issued: Issued,
}

impl Ca {
    /// Creates a new CA. Returns it with its private key PEM, for the caller to store 0600.
    pub fn generate(trust_domain: TrustDomain) -> Result<(Ca, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("fleet CA ({trust_domain})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial().0);
        let now = SystemTime::now();
        params.not_before = OffsetDateTime::from(now - Duration::from_secs(300));
        params.not_after = OffsetDateTime::from(now + CA_LIFETIME);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        let pin = CaPin::of_der(cert.der());
        Ok((
            Ca {
                issuer: Issuer::new(params, key),
                cert_pem,
                pin,
                trust_domain,
            },
            key_pem,
        ))
    }

    pub fn load(trust_domain: TrustDomain, cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::LoadCa(e.to_string()))?;
        let der = fleet_proto::transport::certs_from_pem(cert_pem, "the CA certificate")
            .map_err(|e| PkiError::LoadCa(e.to_string()))?;
        let pin = CaPin::of_der(&der[0]);
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| PkiError::LoadCa(e.to_string()))?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_owned(),
            pin,
            trust_domain,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn pin(&self) -> CaPin {
        self.pin
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Signs a client certificate for `identity` over the CSR's public key. The CSR's
    /// signature is checked (proof the requester holds the key); nothing else is kept.
    pub fn issue_client_from_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let csr = parse_csr(csr_pem)?;
        self.issue_client(&csr, identity, lifetime)
    }

    pub fn issue_client(
        &self,
        csr: &CertificateSigningRequestParams,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        self.sign_client(&csr.public_key, identity, lifetime)
    }

    fn sign_client(
        &self,
        public_key: &impl PublicKeyData,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let (mut params, serial, not_after) = leaf_params(identity, lifetime);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial,
            not_after,
        })
    }

    /// A client identity whose key is made here (the first admin at `init`).
    pub fn new_client_identity(
        &self,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<LocalIdentity, PkiError> {
        let key = KeyPair::generate()?;
        let issued = self.sign_client(&key, identity, lifetime)?;
        Ok(LocalIdentity {
            key_pem: key.serialize_pem(),
            issued,
        })
    }

    /// The controller's serving certificate with a key made here (at `init`).
    pub fn new_server_identity(
        &self,
        sans: &[String],
        lifetime: Duration,
    ) -> Result<LocalIdentity, PkiError> {
        let key = KeyPair::generate()?;
        let issued = self.issue_server(&key, sans, lifetime)?;
        Ok(LocalIdentity {
            key_pem: key.serialize_pem(),
            issued,
        })
    }

    /// The controller's serving certificate for `public_key`: its SPIFFE identity plus the
    /// DNS names and addresses agents and fleetctl dial. Renewal passes the key it already
    /// has, so only the certificate changes.
    pub fn issue_server(
        &self,
        public_key: &impl PublicKeyData,
        sans: &[String],
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let identity = Identity::controller(self.trust_domain.clone());
        let (mut params, serial, not_after) = leaf_params(&identity, lifetime);
        for san in sans {
            let entry = match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    san.as_str()
                        .try_into()
                        .map_err(|_| PkiError::BadSan(san.clone()))?,
                ),
            };
            params.subject_alt_names.push(entry);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::identity::Role;
    use fleet_proto::peer::cert_info;

    fn der(pem: &str) -> Vec<u8> {
        fleet_proto::transport::certs_from_pem(pem, "test").unwrap()[0].to_vec()
    }

    /// A CSR asking to be a CA, an admin, and valid for centuries gets none of it.
    #[test]
    fn csr_requests_are_replaced_by_what_the_controller_decides() {
        let (ca, _) = Ca::generate(TrustDomain::default()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut greedy = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        greedy.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        greedy.subject_alt_names.push(SanType::URI(
            "spiffe://fleet.local/admin/root".try_into().unwrap(),
        ));
        greedy.not_after = rcgen::date_time_ymd(4000, 1, 1);
        let csr = greedy.serialize_request(&key).unwrap().pem().unwrap();

        let identity = Identity::agent(TrustDomain::default(), "web-1".parse().unwrap());
        let issued = ca
            .issue_client_from_csr(&csr, &identity, Duration::from_secs(3600))
            .unwrap();
        let info = cert_info(&der(&issued.cert_pem)).unwrap();
        assert_eq!(info.identity, identity);
        assert_eq!(info.identity.role(), Role::Agent);
        assert_eq!(info.serial, issued.serial);
        assert!(info.not_after - unix(SystemTime::now()) <= 3600);

        let cert_der = der(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        assert!(!cert.is_ca());
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(sans.value.general_names.len(), 1, "only our SAN survives");
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let (ca, _) = Ca::generate(TrustDomain::default()).unwrap();
        let identity = Identity::agent(TrustDomain::default(), "a".parse().unwrap());
        let err = ca
            .issue_client_from_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &identity,
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(matches!(err, PkiError::BadCsr(_)));
    }

    #[test]
    fn a_reloaded_ca_keeps_its_pin_and_signs() {
        let (ca, key_pem) = Ca::generate(TrustDomain::default()).unwrap();
        let again = Ca::load(TrustDomain::default(), ca.cert_pem(), &key_pem).unwrap();
        assert_eq!(again.pin(), ca.pin());
        let id = Identity::admin(TrustDomain::default(), "ops".parse().unwrap());
        let local = again
            .new_client_identity(&id, Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            cert_info(&der(&local.issued.cert_pem)).unwrap().identity,
            id
        );
    }
}
