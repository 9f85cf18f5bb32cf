//! Reading who a peer is from its certificate (DER), and the CA pin format.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::identity::{Identity, InvalidIdentity, TrustDomain};

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("certificate could not be parsed: {0}")]
    Parse(String),
    #[error("certificate has no spiffe:// URI SAN")]
    NoIdentity,
    #[error("certificate has more than one spiffe:// URI SAN")]
    AmbiguousIdentity,
    #[error("certificate identity is invalid: {0}")]
    Invalid(#[from] InvalidIdentity),
    #[error("certificate belongs to trust domain {found}, expected {expected}")]
    WrongTrustDomain { found: String, expected: String },
}

/// Facts about a certificate that fleet acts on.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub identity: Identity,
    /// Lowercase hex of the serial number, as stored in revocation lists.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// Parses the single SPIFFE identity and validity of a certificate. Chain verification is
/// rustls's job; this runs on certificates rustls already accepted (or just issued).
pub fn cert_info(der: &[u8]) -> Result<CertInfo, PeerError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PeerError::Parse(e.to_string()))?;
    let mut found = None;
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| PeerError::Parse(e.to_string()))?
    {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if uri.starts_with("spiffe://") {
                    if found.is_some() {
                        return Err(PeerError::AmbiguousIdentity);
                    }
                    found = Some(uri.parse::<Identity>()?);
                }
            }
        }
    }
    Ok(CertInfo {
        identity: found.ok_or(PeerError::NoIdentity)?,
        serial: hex::encode(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// [`cert_info`] plus a check that the identity belongs to `trust_domain`.
pub fn verify_peer(der: &[u8], trust_domain: &TrustDomain) -> Result<CertInfo, PeerError> {
    let info = cert_info(der)?;
    if info.identity.trust_domain() != trust_domain {
        return Err(PeerError::WrongTrustDomain {
            found: info.identity.trust_domain().to_string(),
            expected: trust_domain.to_string(),
        });
    }
    Ok(info)
}

/// `sha256:<64 hex>` of a CA certificate's DER: what `fleet-controller init` prints and
/// `fleet-agent join --ca-pin` checks before sending anything.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaPin([u8; 32]);

impl CaPin {
    pub fn of_der(der: &[u8]) -> Self {
        CaPin(Sha256::digest(der).into())
    }

    pub fn matches(&self, der: &[u8]) -> bool {
        *self == CaPin::of_der(der)
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid CA pin {0:?}: expected sha256:<64 hex digits>, as printed by `fleet-controller init`"
)]
pub struct InvalidPin(String);

impl FromStr for CaPin {
    type Err = InvalidPin;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || InvalidPin(s.chars().take(80).collect());
        let hex_part = s.trim().strip_prefix("sha256:").ok_or_else(err)?;
        let bytes = hex::decode(hex_part.to_ascii_lowercase()).map_err(|_| err())?;
        Ok(CaPin(bytes.try_into().map_err(|_| err())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_sans(uris: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_the_identity_from_the_uri_san() {
        let der = cert_with_sans(&["spiffe://fleet.local/agent/web-1"]);
        let info = verify_peer(&der, &TrustDomain::default()).unwrap();
        assert_eq!(info.identity.uri(), "spiffe://fleet.local/agent/web-1");
        assert!(info.not_after > info.not_before);
    }

    #[test]
    fn refuses_certs_without_exactly_one_identity() {
        assert!(matches!(
            cert_info(&cert_with_sans(&[])),
            Err(PeerError::NoIdentity)
        ));
        assert!(matches!(
            cert_info(&cert_with_sans(&[
                "spiffe://fleet.local/agent/a",
                "spiffe://fleet.local/admin/b"
            ])),
            Err(PeerError::AmbiguousIdentity)
        ));
    }

    #[test]
    fn refuses_another_trust_domain() {
        let der = cert_with_sans(&["spiffe://other.example/admin/root"]);
        assert!(matches!(
            verify_peer(&der, &TrustDomain::default()),
            Err(PeerError::WrongTrustDomain { .. })
        ));
    }

    #[test]
    fn pin_round_trips_and_rejects_garbage() {
        let pin = CaPin::of_der(b"ca");
        assert_eq!(pin.to_string().parse::<CaPin>().unwrap(), pin);
        assert!(pin.matches(b"ca"));
        assert!(!pin.matches(b"other"));
        for bad in [
            "",
            "sha256:",
            "sha256:zz",
            "md5:00",
            &format!("sha256:{}", "0".repeat(62)),
        ] {
            assert!(bad.parse::<CaPin>().is_err(), "{bad:?} accepted");
        }
    }
}
