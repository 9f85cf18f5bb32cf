//! Certificate renewal: the CSR (same key: it never leaves the host, so only the
//! certificate file changes) and the checks every issued certificate passes before it is
//! written, at join and at renewal alike. When to renew is `fleet_proto::renewal`'s, shared
//! with the controller's own serving certificate.

use fleet_proto::identity::{Name, Role, TrustDomain};
use fleet_proto::peer::{cert_info, CertInfo};
use fleet_proto::transport::certs_from_pem;
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A PEM CSR for `name` signed by `key`. The controller uses only its public key.
pub fn csr_pem(key: &KeyPair, name: &Name) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, name.as_str());
    params.serialize_request(key)?.pem()
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("certificate is unreadable: {0}")]
    Unreadable(String),
    #[error("certificate is for {found}, expected agent {expected}")]
    WrongIdentity { found: String, expected: String },
    #[error("certificate belongs to trust domain {found}, expected {expected}")]
    WrongTrustDomain { found: String, expected: String },
    #[error("certificate does not carry this host's public key")]
    WrongKey,
    #[error("certificate is not signed by the fleet CA")]
    WrongIssuer,
}

/// Checks that `cert_pem` (leaf first) names agent `name` (in `trust_domain` when given),
/// carries `key`'s public key and is signed by the CA `ca_der`. Returns the leaf's facts.
pub fn check_issued(
    cert_pem: &str,
    ca_der: &[u8],
    key: &KeyPair,
    name: &Name,
    trust_domain: Option<&TrustDomain>,
) -> Result<CertInfo, IssueError> {
    let certs = certs_from_pem(cert_pem, "the issued certificate")
        .map_err(|e| IssueError::Unreadable(e.to_string()))?;
    let leaf = &certs[0];
    let info = cert_info(leaf).map_err(|e| IssueError::Unreadable(e.to_string()))?;
    if info.identity.role() != Role::Agent || info.identity.name() != Some(name) {
        return Err(IssueError::WrongIdentity {
            found: info.identity.uri(),
            expected: name.to_string(),
        });
    }
    if let Some(td) = trust_domain {
        if info.identity.trust_domain() != td {
            return Err(IssueError::WrongTrustDomain {
                found: info.identity.trust_domain().to_string(),
                expected: td.to_string(),
            });
        }
    }
    let (_, parsed) =
        X509Certificate::from_der(leaf).map_err(|e| IssueError::Unreadable(e.to_string()))?;
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(IssueError::WrongKey);
    }
    let (_, ca) = X509Certificate::from_der(ca_der)
        .map_err(|e| IssueError::Unreadable(format!("CA certificate: {e}")))?;
    parsed
        .verify_signature(Some(ca.public_key()))
        .map_err(|_| IssueError::WrongIssuer)?;
    Ok(info)
}

#[cfg(test)]
pub(crate) mod testca {
    //! A throwaway CA issuing agent certificates the way the controller does, for tests.
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };

    pub struct TestCa {
        pub pem: String,
        pub der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        pub fn new() -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key).unwrap();
            TestCa {
                pem: cert.pem(),
                der: cert.der().to_vec(),
                issuer: Issuer::new(params, key),
            }
        }

        pub fn issue(&self, uri: &str, key: &KeyPair) -> String {
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.signed_by(key, &self.issuer).unwrap().pem()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testca::TestCa;
    use super::*;

    #[test]
    fn csr_carries_our_public_key() {
        let key = KeyPair::generate().unwrap();
        let pem = csr_pem(&key, &"web-1".parse().unwrap()).unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        assert_eq!(
            parsed.public_key.subject_public_key_info(),
            key.subject_public_key_info()
        );
    }

    #[test]
    fn accepts_a_cert_for_our_name_and_key() {
        let ca = TestCa::new();
        let key = KeyPair::generate().unwrap();
        let cert = ca.issue("spiffe://fleet.local/agent/web-1", &key);
        let info = check_issued(
            &cert,
            &ca.der,
            &key,
            &"web-1".parse().unwrap(),
            Some(&TrustDomain::default()),
        )
        .unwrap();
        assert_eq!(info.identity.uri(), "spiffe://fleet.local/agent/web-1");
    }

    #[test]
    fn refuses_another_name_key_domain_or_issuer() {
        let ca = TestCa::new();
        let key = KeyPair::generate().unwrap();
        let name: Name = "web-1".parse().unwrap();
        let td = TrustDomain::default();
        let check = |cert: &str, ca_der: &[u8]| check_issued(cert, ca_der, &key, &name, Some(&td));

        let other_name = ca.issue("spiffe://fleet.local/agent/web-2", &key);
        assert!(matches!(
            check(&other_name, &ca.der),
            Err(IssueError::WrongIdentity { .. })
        ));
        let admin = ca.issue("spiffe://fleet.local/admin/web-1", &key);
        assert!(matches!(
            check(&admin, &ca.der),
            Err(IssueError::WrongIdentity { .. })
        ));
        let other_domain = ca.issue("spiffe://other.example/agent/web-1", &key);
        assert!(matches!(
            check(&other_domain, &ca.der),
            Err(IssueError::WrongTrustDomain { .. })
        ));
        let other_key = ca.issue(
            "spiffe://fleet.local/agent/web-1",
            &KeyPair::generate().unwrap(),
        );
        assert!(matches!(
            check(&other_key, &ca.der),
            Err(IssueError::WrongKey)
        ));
        let good = ca.issue("spiffe://fleet.local/agent/web-1", &key);
        assert!(matches!(
            check(&good, &TestCa::new().der),
            Err(IssueError::WrongIssuer)
        ));
        assert!(matches!(
            check("garbage", &ca.der),
            Err(IssueError::Unreadable(_))
        ));
    }
}
