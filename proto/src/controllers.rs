//! The list of controller addresses an agent may connect to: what `agent.toml`'s
//! `controller` holds, what `fleet-agent join --controller` and `fleetctl controllers set`
//! take, and what a controller's Welcome hands out. Validated once where it enters, so a
//! bad entry never reaches a dial, a file or a firewall check.

use std::fmt;
use std::str::FromStr;

use crate::transport::validate_address;

/// More than any sane deployment of replicas; bounds what one Welcome can make an agent
/// write and try.
pub const MAX_CONTROLLERS: usize = 16;
/// A DNS name is at most 253 bytes; a port and brackets fit in the rest.
const MAX_ADDRESS: usize = 262;

/// One or more `host:port`, in the order they are tried, without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerList(Vec<String>);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControllerListError {
    #[error("no controller address given: expected HOST:PORT, or several separated by commas")]
    Empty,
    #[error(
        "{0:?} is not a controller address: expected HOST:PORT (e.g. controller.example:7443)"
    )]
    Address(String),
    #[error("{0} is listed twice")]
    Duplicate(String),
    #[error("{0} controller addresses given; at most {MAX_CONTROLLERS}")]
    TooMany(usize),
}

impl ControllerList {
    /// Validates a list given as separate entries (a Welcome's, a request's).
    pub fn new<S: AsRef<str>>(addrs: &[S]) -> Result<Self, ControllerListError> {
        if addrs.len() > MAX_CONTROLLERS {
            return Err(ControllerListError::TooMany(addrs.len()));
        }
        let mut out: Vec<String> = Vec::with_capacity(addrs.len());
        for a in addrs {
            let a = a.as_ref().trim();
            if a.len() > MAX_ADDRESS || validate_address(a).is_err() {
                return Err(ControllerListError::Address(
                    a.chars().take(MAX_ADDRESS).collect(),
                ));
            }
            if out.iter().any(|o| o.eq_ignore_ascii_case(a)) {
                return Err(ControllerListError::Duplicate(a.to_owned()));
            }
            out.push(a.to_owned());
        }
        if out.is_empty() {
            return Err(ControllerListError::Empty);
        }
        Ok(ControllerList(out))
    }

    pub fn addrs(&self) -> &[String] {
        &self.0
    }

    pub fn contains(&self, addr: &str) -> bool {
        self.0.iter().any(|a| a.eq_ignore_ascii_case(addr))
    }

    /// What an agent that reached `via` should keep after the controller told it `told`:
    /// `told`, with `via` kept at the end when `told` lacks it. Until the agent has reached
    /// an address of the new list, the one it knows works stays a fallback, so a mistyped
    /// list cannot cut an agent off its fleet; the next Welcome from a listed controller
    /// drops it.
    pub fn learned(told: &ControllerList, via: &str) -> ControllerList {
        let mut out = told.0.clone();
        if !told.contains(via) && out.len() < MAX_CONTROLLERS && validate_address(via).is_ok() {
            out.push(via.to_owned());
        }
        ControllerList(out)
    }
}

impl FromStr for ControllerList {
    type Err = ControllerListError;

    /// `a:7443,b:7443`; spaces around entries and empty entries are ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        ControllerList::new(&parts)
    }
}

impl fmt::Display for ControllerList {
    /// The comma-separated form `FromStr` reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> ControllerList {
        s.parse().unwrap()
    }

    #[test]
    fn parses_one_or_several_and_reads_back() {
        assert_eq!(list("c1:7443").addrs(), ["c1:7443"]);
        let l = list(" c1:7443, [::1]:7443 ,,10.0.0.3:7443");
        assert_eq!(l.addrs(), ["c1:7443", "[::1]:7443", "10.0.0.3:7443"]);
        assert_eq!(list(&l.to_string()), l);
    }

    #[test]
    fn refuses_bad_entries_with_the_entry_named() {
        assert_eq!(
            "".parse::<ControllerList>(),
            Err(ControllerListError::Empty)
        );
        assert_eq!(
            " , ".parse::<ControllerList>(),
            Err(ControllerListError::Empty)
        );
        assert_eq!(
            "c1:7443,c2".parse::<ControllerList>(),
            Err(ControllerListError::Address("c2".into()))
        );
        assert_eq!(
            "c1:7443,c1:99999".parse::<ControllerList>(),
            Err(ControllerListError::Address("c1:99999".into()))
        );
        assert_eq!(
            "c1:7443,C1:7443".parse::<ControllerList>(),
            Err(ControllerListError::Duplicate("C1:7443".into()))
        );
        let many: Vec<String> = (0..17).map(|i| format!("c{i}:7443")).collect();
        assert_eq!(
            ControllerList::new(&many),
            Err(ControllerListError::TooMany(17))
        );
        let long = format!("{}:7443", "a".repeat(300));
        assert!(matches!(
            ControllerList::new(&[long]),
            Err(ControllerListError::Address(a)) if a.len() <= MAX_ADDRESS
        ));
        assert!(matches!(
            ControllerList::new(&["c1:7443\nx"]),
            Err(ControllerListError::Address(_))
        ));
    }

    #[test]
    fn learned_keeps_the_reached_controller_until_a_listed_one_is_reached() {
        let told = list("c2:7443,c3:7443");
        assert_eq!(
            ControllerList::learned(&told, "c1:7443").addrs(),
            ["c2:7443", "c3:7443", "c1:7443"]
        );
        assert_eq!(ControllerList::learned(&told, "c3:7443"), told);
        assert_eq!(ControllerList::learned(&told, "C3:7443"), told);
        let full: Vec<String> = (0..16).map(|i| format!("c{i}:7443")).collect();
        let full = ControllerList::new(&full).unwrap();
        assert_eq!(ControllerList::learned(&full, "other:7443"), full);
    }
}
