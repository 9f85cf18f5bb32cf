//! What a rule is made of: protocol, port ranges, sources, and the rule itself.

use std::fmt;

use super::Cidr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// IANA protocol number.
    pub(super) fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// An inclusive port range; a single port has `lo == hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub(super) fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
    pub(super) fn overlaps(&self, o: &PortRange) -> bool {
        self.lo <= o.hi && o.lo <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Who a rule is about: everyone, or a list of prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sources {
    Any,
    Only(Vec<Cidr>),
}

impl Sources {
    pub(super) fn covers(&self, c: &Cidr) -> bool {
        match self {
            Sources::Any => true,
            Sources::Only(v) => v.iter().any(|s| s.covers(c)),
        }
    }
    pub(super) fn overlaps(&self, c: &Cidr) -> bool {
        match self {
            Sources::Any => true,
            Sources::Only(v) => v.iter().any(|s| s.overlaps(c)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// None: both TCP and UDP.
    pub proto: Option<Proto>,
    /// Empty: every port.
    pub ports: Vec<PortRange>,
    pub sources: Sources,
    /// Empty: every host.
    pub groups: Vec<String>,
}

impl Rule {
    pub(super) fn protos(&self) -> Vec<Proto> {
        match self.proto {
            Some(p) => vec![p],
            None => vec![Proto::Tcp, Proto::Udp],
        }
    }
    pub(super) fn hits_port(&self, proto: Proto, port: &PortRange) -> bool {
        self.proto.is_none_or(|p| p == proto)
            && (self.ports.is_empty() || self.ports.iter().any(|r| r.overlaps(port)))
    }
    pub(super) fn opens_port(&self, proto: Proto, port: u16) -> bool {
        self.proto.is_none_or(|p| p == proto)
            && (self.ports.is_empty() || self.ports.iter().any(|r| r.contains(port)))
    }
}
