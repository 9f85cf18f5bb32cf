//! App names and release versions: both end up in unit names and paths, so both are
//! checked against a strict shape.

use std::fmt;
use std::str::FromStr;

use super::{err, SpecError};

/// An app name: `[a-z][a-z0-9-]{0,30}`, not ending in '-'. Used in unit names and paths.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(String);

impl AppName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AppName {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let ok = (1..=31).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(AppName(s.to_owned()))
        } else {
            Err(err(
                "name",
                format!("{s:?} must match [a-z][a-z0-9-]{{0,30}} and not end with '-'"),
            ))
        }
    }
}

impl From<AppName> for String {
    fn from(name: AppName) -> String {
        name.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A release version: `[A-Za-z0-9][A-Za-z0-9._+-]{0,63}` and never `.`/`..`-like, so it
/// is safe as a directory name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(String);

impl Version {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Version {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let ok = (1..=64).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && !s.contains("..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
        if ok {
            Ok(Version(s.to_owned()))
        } else {
            Err(err(
                "version",
                format!("{s:?} must match [A-Za-z0-9][A-Za-z0-9._+-]{{0,63}} without '..'"),
            ))
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
