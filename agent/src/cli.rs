//! Command-line surface. Operators script against these names (DESIGN.md, "Command-line
//! contract"): add flags freely, never rename one without keeping the old spelling.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::daemon::RunArgs;
use crate::enroll::JoinArgs;
use crate::logging::LogFormat;

#[derive(Parser)]
#[command(name = "fleet-agent", version, about = "fleet host agent")]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Enroll this host with a controller (once; --force to enroll again).
    Join(JoinArgs),
    /// Hold the session with the controller (the systemd service runs this).
    Run(RunArgs),
}

/// Runs the chosen command on its own runtime.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // Two workers are plenty for one stream; a small, fixed number keeps the agent's
        // footprint predictable on small VMs.
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = match cli.command {
        Command::Join(args) => runtime.block_on(async {
            let line = crate::enroll::join(args).await?;
            println!("{line}");
            Ok(())
        }),
        Command::Run(args) => runtime.block_on(crate::daemon::run(args)),
    };
    // Do not let a stuck blocking task hold up `systemctl stop`.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn lead_e2e_flags_parse() {
        let cli = Cli::try_parse_from([
            "fleet-agent",
            "run",
            "--state-dir",
            "/tmp/d",
            "--heartbeat-interval",
            "1s",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        match cli.command {
            Command::Run(r) => {
                assert_eq!(r.heartbeat_interval, Some(Duration::from_secs(1)));
                assert_eq!(r.metrics_listen.unwrap().to_string(), "127.0.0.1:0");
            }
            Command::Join(_) => panic!("parsed as join"),
        }
        let cli = Cli::try_parse_from([
            "fleet-agent",
            "--log-format",
            "json",
            "join",
            "--controller",
            "127.0.0.1:7443",
            "--token",
            "t",
            "--ca-pin",
            "sha256:00",
            "--state-dir",
            "/tmp/d",
            "--name",
            "h1",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(
            matches!(cli.command, Command::Join(ref j) if j.name.as_deref() == Some("h1") && !j.force)
        );
    }
}
