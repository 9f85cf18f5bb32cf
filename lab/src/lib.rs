//! fleet-lab: a multi-host lab of real systemd hosts (systemd-nspawn
//! containers on one machine) for fleet's tests and demos.
//!
//! ```no_run
//! use fleet_lab::{Lab, LabOptions, Fault};
//! let lab = Lab::up(&LabOptions::hosts(3))?;       // torn down on Drop
//! assert_eq!(lab.exec(1, &["true"])?, 0);
//! lab.fault(2, Fault::Cut)?;
//! # anyhow::Ok(())
//! ```

pub mod agentpkg;
pub mod ansible;
pub mod bench;
pub mod bench_canary;
pub mod bench_install;
pub mod cgroup;
pub mod config;
pub mod demo;
pub mod exec;
pub mod fault;
pub mod fleet;
pub mod host;
pub mod image;
pub mod inventory;
pub mod lab;
pub mod launch;
pub mod load;
pub mod net;
pub mod packages;
pub mod proc;
pub mod release;
pub mod state;
pub mod teardown;

pub use config::{host_addr, host_name, Paths};
pub use fault::Fault;
pub use fleet::{AgentOptions, FleetHost};
pub use lab::{down, preconditions, test_lab, Lab, LabOptions};

/// Log to stderr (RUST_LOG overrides the default `info`); safe to call twice.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
