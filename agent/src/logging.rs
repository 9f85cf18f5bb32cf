//! Logging to stderr (the journal under systemd): human or JSON lines, filtered by the
//! RUST_LOG-style env var `FLEET_LOG` (default `info`).

use std::error::Error as StdError;
use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;

pub const FILTER_ENV: &str = "FLEET_LOG";

/// `--log-format`: log line format on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// `FLEET_LOG` as `target=level` directives ("info", "warn,fleet_agent::apps=debug").
/// `Targets` rather than `EnvFilter`: it needs no regex engine, which keeps the agent's
/// binary, and so its resident memory, smaller; span-field filters are not worth that.
fn filter(spec: Option<&str>) -> Targets {
    let default = || Targets::new().with_default(LevelFilter::INFO);
    match spec {
        Some(spec) => spec.parse().unwrap_or_else(|e| {
            eprintln!("warning: ignoring {FILTER_ENV}={spec:?} ({e}); logging at info");
            default()
        }),
        None => default(),
    }
}

pub fn init(format: LogFormat) {
    let filter = filter(std::env::var(FILTER_ENV).ok().as_deref());
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    match format {
        // Colours only for a person at a terminal: escape codes in the journal are noise.
        LogFormat::Human => registry
            .with(
                fmt.with_ansi(std::io::stderr().is_terminal())
                    .with_filter(filter),
            )
            .init(),
        LogFormat::Json => registry
            .with(fmt.json().with_ansi(false).with_filter(filter))
            .init(),
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
    fn filter_takes_directives_and_falls_back_to_info() {
        use tracing::Level;
        let f = filter(Some("warn,fleet_agent::apps=debug"));
        assert!(f.would_enable("fleet_agent::apps", &Level::DEBUG));
        assert!(!f.would_enable("fleet_agent::channel", &Level::INFO));
        assert!(f.would_enable("fleet_agent::channel", &Level::WARN));
        let f = filter(None);
        assert!(f.would_enable("anything", &Level::INFO));
        assert!(!f.would_enable("anything", &Level::DEBUG));
        let f = filter(Some("=nonsense=="));
        assert!(f.would_enable("anything", &Level::INFO));
    }

    #[test]
    fn chain_joins_sources_once() {
        let e = Outer(io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
        let e = Outer(io::Error::other("outer"));
        assert_eq!(error_chain(&e), "outer");
    }
}
