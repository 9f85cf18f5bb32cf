//! fleetctl: the operator's command line. Parses, calls the controller's admin API
//! through fleet-proto, prints. It never links controller internals.
#![forbid(unsafe_code)]

mod audit;
mod client;
mod hosts;
mod output;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use output::Format;

#[derive(Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "Operate a fleet through its controller"
)]
pub struct Cli {
    /// Controller gRPC address.
    #[arg(
        long,
        global = true,
        env = "FLEET_CONTROLLER",
        default_value = "127.0.0.1:7443"
    )]
    controller: String,
    /// Directory holding ca.crt, admin.crt and admin.key.
    #[arg(
        long,
        global = true,
        env = "FLEET_IDENTITY",
        default_value = "/etc/fleet/admin"
    )]
    identity: PathBuf,
    /// Output format; json prints exactly one JSON document on stdout.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join tokens for enrolling hosts.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// List hosts with their state.
    Hosts,
    /// Act on one host.
    #[command(subcommand)]
    Host(hosts::HostCmd),
    /// Show who did what, when.
    Audit {
        /// Only entries younger than this (e.g. 1h, 7d).
        #[arg(long)]
        since: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let conn = client::Conn::new(&cli.controller, &cli.identity);
    match cli.command {
        Command::Token(cmd) => token::run(&conn, cmd, cli.output).await,
        Command::Hosts => hosts::list(&conn, cli.output).await,
        Command::Host(cmd) => hosts::run(&conn, cmd, cli.output).await,
        Command::Audit { since } => audit::run(&conn, since, cli.output).await,
    }
}
