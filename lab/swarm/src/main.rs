//! fleet-swarm: N simulated agents against the real release controller, driven with the
//! real fleetctl, measuring what issue 16 asks (lab/README.md describes every figure).

mod addr;
mod controller;
mod limits;
mod measure;
mod reconnect;
mod report;
mod scenarios;
mod sim;
mod slowdisk;
mod stats;
mod swarm;
mod worker;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fleet-swarm",
    about = "Load generator for the fleet controller",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a controller, N simulated agents and run the scenarios; print the figures.
    Run(scenarios::RunArgs),
    /// One worker process (started by `run`; speaks JSON lines on stdout).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("fleet-swarm: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Worker(a) => rt.block_on(worker::run(a)),
        Cmd::Run(a) => {
            let output = a.output;
            let json_file = a.json_file.clone();
            let report = rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate())?;
                // Dropping the run on a signal drops its guards: the controller and workers
                // are killed by PID, the slow disk and temp dir removed.
                tokio::select! {
                    r = scenarios::run(a) => r,
                    _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
                    _ = term.recv() => Err(anyhow::anyhow!("terminated")),
                }
            })?;
            if let Some(f) = json_file {
                std::fs::write(&f, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("write {}", f.display()))?;
            }
            match output {
                scenarios::Output::Table => print!("{}", report.table()),
                scenarios::Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&report)?)
                }
            }
            anyhow::ensure!(
                report.errors.is_empty(),
                "{} scenario(s) failed (see the report)",
                report.errors.len()
            );
            Ok(())
        }
    }
}
