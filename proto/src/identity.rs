//! Identities of fleet's parties, carried as one SPIFFE URI SAN in each certificate:
//! `spiffe://<trust-domain>/agent/<host>`, `spiffe://<trust-domain>/admin/<name>` and
//! `spiffe://<trust-domain>/controller`. The issuer and the verifier both go through
//! [`Identity`], so what is signed and what is checked cannot drift apart.

use std::fmt;
use std::str::FromStr;

/// Default trust domain when `fleet-controller init` is given none.
pub const DEFAULT_TRUST_DOMAIN: &str = "fleet.local";

/// What a caller is allowed to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Agent,
    Admin,
    Controller,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Controller => "controller",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid name {value:?}: {reason}")]
pub struct InvalidName {
    pub value: String,
    pub reason: &'static str,
}

/// A host or admin name: `[a-z][a-z0-9-]{0,62}`, not ending in `-`. Safe to use in a
/// path, a URI and a log line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub const MAX_LEN: usize = 63;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = InvalidName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| InvalidName {
            value: s.chars().take(80).collect(),
            reason,
        };
        let first = s.chars().next().ok_or_else(|| err("must not be empty"))?;
        if s.len() > Self::MAX_LEN {
            return Err(err("must be at most 63 characters"));
        }
        if !first.is_ascii_lowercase() {
            return Err(err("must start with a lowercase letter a-z"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(err("may contain only a-z, 0-9 and '-'"));
        }
        if s.ends_with('-') {
            return Err(err("must not end with '-'"));
        }
        Ok(Name(s.to_owned()))
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A trust domain: lowercase DNS-like labels, e.g. `fleet.local` or `prod.example.com`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        TrustDomain(DEFAULT_TRUST_DOMAIN.to_owned())
    }
}

impl FromStr for TrustDomain {
    type Err = InvalidName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| InvalidName {
            value: s.chars().take(80).collect(),
            reason,
        };
        if s.is_empty() || s.len() > 255 {
            return Err(err("trust domain must be 1 to 255 characters"));
        }
        for label in s.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(err(
                    "trust domain labels may contain only a-z, 0-9 and inner '-', separated by '.'",
                ));
            }
        }
        Ok(TrustDomain(s.to_owned()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    trust_domain: TrustDomain,
    role: Role,
    /// `None` only for the controller.
    name: Option<Name>,
}

impl Identity {
    pub fn agent(trust_domain: TrustDomain, name: Name) -> Self {
        Identity {
            trust_domain,
            role: Role::Agent,
            name: Some(name),
        }
    }

    pub fn admin(trust_domain: TrustDomain, name: Name) -> Self {
        Identity {
            trust_domain,
            role: Role::Admin,
            name: Some(name),
        }
    }

    pub fn controller(trust_domain: TrustDomain) -> Self {
        Identity {
            trust_domain,
            role: Role::Controller,
            name: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The host or admin name; `None` for the controller.
    pub fn name(&self) -> Option<&Name> {
        self.name.as_ref()
    }

    /// The SPIFFE URI written into and read from certificates.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "spiffe://{}/{}/{}", self.trust_domain, self.role, name),
            None => write!(f, "spiffe://{}/{}", self.trust_domain, self.role),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidIdentity {
    #[error("not a spiffe:// URI")]
    NotSpiffe,
    #[error("unknown role path {0:?} (expected agent/<name>, admin/<name> or controller)")]
    UnknownPath(String),
    #[error(transparent)]
    Name(#[from] InvalidName),
}

impl FromStr for Identity {
    type Err = InvalidIdentity;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or(InvalidIdentity::NotSpiffe)?;
        let (domain, path) = rest.split_once('/').ok_or(InvalidIdentity::NotSpiffe)?;
        let trust_domain: TrustDomain = domain.parse()?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["controller"] => Ok(Identity::controller(trust_domain)),
            ["agent", name] => Ok(Identity::agent(trust_domain, name.parse()?)),
            ["admin", name] => Ok(Identity::admin(trust_domain, name.parse()?)),
            _ => Err(InvalidIdentity::UnknownPath(
                path.chars().take(80).collect(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uri() {
        let td: TrustDomain = "prod.example.com".parse().unwrap();
        for id in [
            Identity::agent(td.clone(), "web-1".parse().unwrap()),
            Identity::admin(td.clone(), "alice".parse().unwrap()),
            Identity::controller(td),
        ] {
            assert_eq!(id.uri().parse::<Identity>().unwrap(), id);
        }
        assert_eq!(
            Identity::agent(TrustDomain::default(), "h1".parse().unwrap()).uri(),
            "spiffe://fleet.local/agent/h1"
        );
    }

    #[test]
    fn names_that_could_escape_a_path_or_unit_are_refused() {
        for bad in [
            "", "1abc", "Abc", "a_b", "a/b", "..", "a.b", "a b", "a-", "-a", "a\n",
        ] {
            assert!(bad.parse::<Name>().is_err(), "{bad:?} accepted");
        }
        assert!("a".repeat(64).parse::<Name>().is_err());
        assert!("a".repeat(63).parse::<Name>().is_ok());
        assert!("web-01".parse::<Name>().is_ok());
    }

    #[test]
    fn malformed_identities_are_refused() {
        for bad in [
            "https://fleet.local/agent/a",
            "spiffe://fleet.local",
            "spiffe://fleet.local/agent",
            "spiffe://fleet.local/agent/a/b",
            "spiffe://fleet.local/root/a",
            "spiffe://Fleet/agent/a",
            "spiffe://fleet.local/agent/../admin",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad:?} accepted");
        }
    }
}
