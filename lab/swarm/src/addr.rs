//! Loopback source addresses for simulated hosts: host `i` connects from its own address in
//! 127.10.0.0 upwards, so the controller sees one peer address per host as in a real fleet
//! (per-IP limits, the listen queue, `Host.address`). Linux routes all of 127.0.0.0/8 to
//! `lo`, so these need no configuration.

use std::net::Ipv4Addr;

/// Second octet of the first address.
const FIRST_SECOND_OCTET: u8 = 10;
/// Last octets 1..=254: .0 and .255 look like network and broadcast addresses to tools
/// and people reading logs.
const HOSTS_PER_THIRD: u32 = 254;

/// The address the bulk-enrollment variant joins from (all hosts behind one NAT).
pub const ONE_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 9, 0, 1);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("host index {0} is beyond the {max} loopback source addresses", max = capacity())]
pub struct OutOfAddresses(pub u64);

/// How many hosts get an address of their own: second octets 10..=254.
pub const fn capacity() -> u64 {
    (255 - FIRST_SECOND_OCTET as u64) * 256 * HOSTS_PER_THIRD as u64
}

/// The source address of host `index` (0-based).
pub fn source(index: u64) -> Result<Ipv4Addr, OutOfAddresses> {
    if index >= capacity() {
        return Err(OutOfAddresses(index));
    }
    let per_second = 256 * u64::from(HOSTS_PER_THIRD);
    let second = u64::from(FIRST_SECOND_OCTET) + index / per_second;
    let rest = index % per_second;
    let third = rest / u64::from(HOSTS_PER_THIRD);
    let fourth = 1 + rest % u64::from(HOSTS_PER_THIRD);
    Ok(Ipv4Addr::new(127, second as u8, third as u8, fourth as u8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn first_addresses_skip_zero_and_broadcast() {
        assert_eq!(source(0).unwrap(), Ipv4Addr::new(127, 10, 0, 1));
        assert_eq!(source(253).unwrap(), Ipv4Addr::new(127, 10, 0, 254));
        assert_eq!(source(254).unwrap(), Ipv4Addr::new(127, 10, 1, 1));
        assert_eq!(source(254 * 256).unwrap(), Ipv4Addr::new(127, 11, 0, 1));
    }

    #[test]
    fn every_address_is_distinct_loopback_and_never_0_or_255() {
        let mut seen = HashSet::new();
        for i in (0..200_000).chain(capacity() - 1000..capacity()) {
            let a = source(i).unwrap();
            let o = a.octets();
            assert!(a.is_loopback(), "{a} outside 127.0.0.0/8");
            assert!(o[3] != 0 && o[3] != 255, "{a}");
            assert!(o[1] >= 10, "{a}");
            assert_ne!(a, ONE_SOURCE);
            assert!(seen.insert(a), "{a} twice");
        }
        assert_eq!(
            source(capacity() - 1).unwrap(),
            Ipv4Addr::new(127, 254, 255, 254)
        );
    }

    #[test]
    fn beyond_capacity_is_an_error_not_a_wrap() {
        assert_eq!(source(capacity()), Err(OutOfAddresses(capacity())));
        assert!(source(u64::MAX).is_err());
    }
}
