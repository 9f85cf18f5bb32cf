//! Logging to stderr (the journal under systemd): human or JSON lines, filtered by the
//! RUST_LOG-style env var `FLEET_LOG` (default `info`).

use std::error::Error as StdError;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub const FILTER_ENV: &str = "FLEET_LOG";

pub fn init(format: LogFormat) {
    let filter = match std::env::var(FILTER_ENV) {
        Ok(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: ignoring {FILTER_ENV}={spec:?} ({e}); logging at info");
            EnvFilter::new("info")
        }),
        Err(_) => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours only for a person at a terminal: escape codes in the journal are noise.
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// An error and its sources on one line, skipping a source whose text the previous level
/// already contains (tonic and hyper often repeat their inner error).
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    #[test]
    fn chain_joins_sources_once() {
        let e = Outer(io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
        let e = Outer(io::Error::other("outer"));
        assert_eq!(error_chain(&e), "outer");
    }
}
