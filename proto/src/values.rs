//! Values an operator types that fleetctl and the controller must read the same way:
//! parsed where they enter (fleetctl's flags, the controller's config) and again, with the
//! same parser, where they arrive over the wire, so a value fleetctl accepts the controller
//! accepts too, and fleetctl refuses a bad one before it sends anything.

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

/// `--max-parallel`: a host count ("2") or a percentage of the targets ("25%").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxParallel {
    Hosts(NonZeroUsize),
    /// 1 to 100.
    Percent(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("max-parallel {value:?}: {reason}")]
pub struct InvalidMaxParallel {
    pub value: String,
    pub reason: &'static str,
}

impl MaxParallel {
    /// One host at a time: what an empty value (an older fleetctl) means.
    pub const ONE: MaxParallel = MaxParallel::Hosts(NonZeroUsize::MIN);

    /// The batch size for `targets` hosts: a percentage rounds up, and is at least 1.
    pub fn hosts(self, targets: usize) -> usize {
        match self {
            MaxParallel::Hosts(n) => n.get(),
            MaxParallel::Percent(p) => (targets * usize::from(p)).div_ceil(100).max(1),
        }
    }

    /// As it travels in `RolloutRequest.max_parallel`; an empty string means [`Self::ONE`].
    pub fn parse_wire(s: &str) -> Result<MaxParallel, InvalidMaxParallel> {
        if s.trim().is_empty() {
            return Ok(MaxParallel::ONE);
        }
        s.parse()
    }
}

impl FromStr for MaxParallel {
    type Err = InvalidMaxParallel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = |reason| InvalidMaxParallel {
            value: s.to_owned(),
            reason,
        };
        const SHAPE: &str = "expected a host count (2) or a percentage (25%)";
        if let Some(p) = t.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| bad(SHAPE))?;
            if p == 0 || p > 100 {
                return Err(bad("the percentage must be 1 to 100"));
            }
            Ok(MaxParallel::Percent(p))
        } else {
            let n: usize = t.parse().map_err(|_| bad(SHAPE))?;
            NonZeroUsize::new(n)
                .map(MaxParallel::Hosts)
                .ok_or_else(|| bad("must be at least 1"))
        }
    }
}

impl fmt::Display for MaxParallel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxParallel::Hosts(n) => write!(f, "{n}"),
            MaxParallel::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?}: {reason} (write it like 90s, 10m, 2h or 30d)")]
pub struct InvalidDuration {
    pub field: String,
    pub value: String,
    pub reason: String,
}

/// The one duration syntax of fleet's flags and config files (humantime: "10s", "2m",
/// "1h 30m", "90d"); `field` names the flag or key in the error.
pub fn parse_duration(field: &str, value: &str) -> Result<Duration, InvalidDuration> {
    humantime::parse_duration(value.trim()).map_err(|e| InvalidDuration {
        field: field.to_owned(),
        value: value.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_parallel_counts_and_percentages() {
        let mp = |s: &str| s.parse::<MaxParallel>();
        assert_eq!(mp("3").unwrap().hosts(10), 3);
        assert_eq!(mp("25%").unwrap().hosts(10), 3, "rounds up");
        assert_eq!(mp("1%").unwrap().hosts(10), 1, "at least one");
        assert_eq!(mp("100%").unwrap().hosts(7), 7);
        assert_eq!(
            mp(" 2 ").unwrap(),
            MaxParallel::Hosts(NonZeroUsize::new(2).unwrap())
        );
        assert_eq!(MaxParallel::parse_wire("").unwrap(), MaxParallel::ONE);
        for bad in ["0", "0%", "101%", "x", "-1", "%", ""] {
            assert!(mp(bad).is_err(), "{bad}");
        }
        assert_eq!(
            mp("0").unwrap_err().to_string(),
            "max-parallel \"0\": must be at least 1"
        );
    }

    #[test]
    fn max_parallel_round_trips_through_text() {
        for s in ["1", "16", "1%", "50%", "100%"] {
            assert_eq!(s.parse::<MaxParallel>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn durations_name_the_field() {
        assert_eq!(
            parse_duration("--min-healthy", "10s").unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(
            parse_duration("ttl", "1h 30m").unwrap(),
            Duration::from_secs(5400)
        );
        let e = parse_duration("--min-healthy", "ten").unwrap_err();
        assert!(e.to_string().starts_with("--min-healthy \"ten\": "), "{e}");
    }
}
