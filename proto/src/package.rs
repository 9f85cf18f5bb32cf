//! fleet-agent package versions, as the controller stores them and agents install them.
//!
//! A Debian version (`[epoch:]upstream[-revision]`) restricted to the characters Debian
//! allows, so it is safe in a file name, an audit line and a systemd unit description.
//! The agent reports its crate version in Hello; [`PackageVersion::is_reported_by`] says
//! whether that is the one this package installs.

use std::fmt;
use std::str::FromStr;

pub const MAX_LEN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageVersion(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid fleet-agent package version {value:?}: {reason} (e.g. 0.2.0 or 0.2.0-1, as in the package's control file)")]
pub struct InvalidVersion {
    pub value: String,
    pub reason: &'static str,
}

impl FromStr for PackageVersion {
    type Err = InvalidVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| InvalidVersion {
            value: s.chars().take(MAX_LEN + 1).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > MAX_LEN {
            return Err(bad("it is longer than 64 characters"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | '-' | ':'))
        {
            return Err(bad("only letters, digits and . + ~ - : are allowed"));
        }
        let upstream = strip_epoch(s);
        if !upstream.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(bad("the upstream version must start with a digit"));
        }
        Ok(PackageVersion(s.to_owned()))
    }
}

fn strip_epoch(s: &str) -> &str {
    match s.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.chars().all(|c| c.is_ascii_digit()) => {
            rest
        }
        _ => s,
    }
}

impl PackageVersion {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The version without epoch and Debian revision: what the agent binary reports.
    pub fn upstream(&self) -> &str {
        let s = strip_epoch(&self.0);
        match s.rsplit_once('-') {
            Some((up, _revision)) => up,
            None => s,
        }
    }

    /// Whether an agent reporting `reported` in its Hello runs this package.
    pub fn is_reported_by(&self, reported: &str) -> bool {
        reported == self.0 || reported == self.upstream()
    }

    /// A name for the downloaded file, free of `/` and `:` (the epoch is dropped).
    pub fn file_name(&self) -> String {
        format!("fleet-agent_{}.deb", strip_epoch(&self.0))
    }
}

impl fmt::Display for PackageVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions_parse_and_bad_ones_say_why() {
        for ok in ["0.2.0", "0.2.0-1", "1:0.2.0-1", "0.2.0~rc1+b2"] {
            assert_eq!(ok.parse::<PackageVersion>().unwrap().as_str(), ok);
        }
        for (bad, why) in [
            ("", "empty"),
            ("../x", "only letters"),
            ("0.2 0", "only letters"),
            ("v0.2.0", "start with a digit"),
            ("0.2.0;rm", "only letters"),
        ] {
            let e = bad.parse::<PackageVersion>().unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
        assert!("1".repeat(65).parse::<PackageVersion>().is_err());
    }

    #[test]
    fn the_agent_reports_the_upstream_part() {
        let v: PackageVersion = "1:0.2.0-3".parse().unwrap();
        assert_eq!(v.upstream(), "0.2.0");
        assert!(v.is_reported_by("0.2.0"));
        assert!(v.is_reported_by("1:0.2.0-3"));
        assert!(!v.is_reported_by("0.1.0"));
        assert_eq!(v.file_name(), "fleet-agent_0.2.0-3.deb");
        let plain: PackageVersion = "0.2.0".parse().unwrap();
        assert!(plain.is_reported_by("0.2.0"));
    }
}
