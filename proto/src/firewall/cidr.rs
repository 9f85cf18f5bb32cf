//! Address prefixes, normalised, and the covers/overlaps arithmetic the lockout check
//! needs.

use std::fmt;
use std::net::IpAddr;

use super::{perr, PolicyError};

/// An address prefix, normalised (host bits cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, PolicyError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| perr(format!("{s:?} is not an IP address or CIDR")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| perr(format!("{s:?}: prefix length must be 0-{max}")))?,
        };
        Ok(Cidr {
            addr: mask(addr, len),
            len,
        })
    }

    pub fn host(addr: IpAddr) -> Cidr {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, len }
    }

    fn bits(&self) -> (u128, u8) {
        match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    /// True when every address of `o` is in `self`.
    pub fn covers(&self, o: &Cidr) -> bool {
        if self.addr.is_ipv4() != o.addr.is_ipv4() || self.len > o.len {
            return false;
        }
        let ((a, w), (b, _)) = (self.bits(), o.bits());
        prefix_bits(a, w, self.len) == prefix_bits(b, w, self.len)
    }

    /// True when `self` and `o` share at least one address.
    pub fn overlaps(&self, o: &Cidr) -> bool {
        self.covers(o) || o.covers(self)
    }
}

fn prefix_bits(v: u128, width: u8, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        v >> (width - len)
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}
