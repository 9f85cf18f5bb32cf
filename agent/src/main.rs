//! `fleet-agent` binary: parse, run, map the outcome to an exit code. Everything else lives
//! in the library so it can be tested without a process.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fleet_agent::cli::Cli::parse();
    fleet_agent::logging::init(cli.log_format);
    match fleet_agent::cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line, which is what ends up in
            // the journal or in front of the operator.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
