//! The spec's `[logs]` table: journal or files, rotation and journald's rate limit.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, err, SpecError};

/// Where the app's access and error logs go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    /// Gunicorn's stderr into the journal (its default: no access log).
    #[default]
    Journal,
    /// `access.log` and `error.log` under `/var/log/fleet/<app>/`, rotated by logrotate.
    Files,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotatePeriod {
    Daily,
    Weekly,
    Monthly,
}

impl RotatePeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            RotatePeriod::Daily => "daily",
            RotatePeriod::Weekly => "weekly",
            RotatePeriod::Monthly => "monthly",
        }
    }
}

/// Rotation of the log files (`mode = "files"` only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// `None` with a `max_size`: rotate by size only.
    pub period: Option<RotatePeriod>,
    /// Bytes; a file this large is rotated early.
    pub max_size: Option<u64>,
    /// Rotated files kept.
    pub keep: u32,
    pub compress: bool,
}

/// The spec's `[logs]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Logs {
    pub mode: LogMode,
    /// `Some` exactly when `mode` is `Files`.
    pub rotation: Option<Rotation>,
    /// journald's per-unit `LogRateLimitIntervalSec=`; zero turns the limit off.
    pub rate_limit_interval: Option<Duration>,
    /// journald's per-unit `LogRateLimitBurst=`; zero turns the limit off.
    pub rate_limit_burst: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogs {
    #[serde(default)]
    mode: LogMode,
    period: Option<RotatePeriod>,
    max_size: Option<String>,
    keep: Option<u32>,
    compress: Option<bool>,
    rate_limit_interval: Option<String>,
    rate_limit_burst: Option<u32>,
}

/// Bounds of `logs.max_size`: below 1 MiB rotation churns, above 64 GiB is not a log.
const MIN_LOG_SIZE: u64 = 1 << 20;
const MAX_LOG_SIZE: u64 = 64 << 30;
const DEFAULT_KEEP: u32 = 7;
const MAX_KEEP: u32 = 1000;
const MAX_RATE_BURST: u32 = 1_000_000;

/// `100M`, `512K`, `2G` or plain bytes (binary units, as logrotate reads them).
fn parse_size(field: &str, v: &str) -> Result<u64, SpecError> {
    let bad = || {
        err(
            field,
            format!("{v:?} is not a size (examples: 100M, 512K, 1G)"),
        )
    };
    let (digits, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, ""),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(1 << shift).ok_or_else(bad)?;
    if !(MIN_LOG_SIZE..=MAX_LOG_SIZE).contains(&bytes) {
        return Err(err(field, "must be between 1M and 64G"));
    }
    Ok(bytes)
}

pub(super) fn check_logs(raw: RawLogs) -> Result<Logs, SpecError> {
    let rotation = match raw.mode {
        LogMode::Journal => {
            let set = [
                ("period", raw.period.is_some()),
                ("max_size", raw.max_size.is_some()),
                ("keep", raw.keep.is_some()),
                ("compress", raw.compress.is_some()),
            ];
            if let Some((field, _)) = set.iter().find(|(_, s)| *s) {
                return Err(err(
                    format!("logs.{field}"),
                    "rotation settings need mode = \"files\" (journald rotates the journal itself)",
                ));
            }
            None
        }
        LogMode::Files => {
            let max_size = raw
                .max_size
                .as_deref()
                .map(|v| parse_size("logs.max_size", v))
                .transpose()?;
            let keep = raw.keep.unwrap_or(DEFAULT_KEEP);
            if !(1..=MAX_KEEP).contains(&keep) {
                return Err(err(
                    "logs.keep",
                    format!("must be between 1 and {MAX_KEEP}"),
                ));
            }
            Some(Rotation {
                // Neither set: daily, so files never grow without bound.
                period: raw.period.or(if max_size.is_none() {
                    Some(RotatePeriod::Daily)
                } else {
                    None
                }),
                max_size,
                keep,
                compress: raw.compress.unwrap_or(true),
            })
        }
    };
    let rate_limit_interval = raw
        .rate_limit_interval
        .as_deref()
        .map(|v| {
            duration(
                "logs.rate_limit_interval",
                Some(v),
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_secs(3600),
            )
        })
        .transpose()?;
    if let Some(b) = raw.rate_limit_burst {
        if b > MAX_RATE_BURST {
            return Err(err(
                "logs.rate_limit_burst",
                format!("must be at most {MAX_RATE_BURST} (0 turns the limit off)"),
            ));
        }
    }
    Ok(Logs {
        mode: raw.mode,
        rotation,
        rate_limit_interval,
        rate_limit_burst: raw.rate_limit_burst,
    })
}
