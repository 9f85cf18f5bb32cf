//! The `fleet-controller` command line, in the library so that the packaging generator
//! (packaging/gen) renders its man page and completions from the same definition.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::logging::LogFormat;

/// The packaged unit's data directory (systemd/fleet-controller.service).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/fleet-controller";

#[derive(Parser)]
#[command(name = "fleet-controller", version, about = "fleet controller")]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a new fleet: CA, controller certificate, first admin identity, empty state.
    Init {
        #[arg(long, env = "FLEET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, default_value = fleet_proto::identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// DNS name or IP agents and fleetctl use to reach the controller (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Lifetime of the controller's serving certificate; `run` renews it at 2/3 of it
        /// [default: 365d]
        #[arg(long)]
        server_cert_lifetime: Option<String>,
        /// Lifetime of the first admin certificate; `fleetctl identity renew` gets a new
        /// one [default: 365d]
        #[arg(long)]
        admin_cert_lifetime: Option<String>,
        /// Settings file: with a `[store]` section, the fleet's records go to that
        /// PostgreSQL database instead of DATA_DIR/state.redb (the CA and keys stay in
        /// DATA_DIR).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Prepare one more controller of an existing fleet on a shared store instead:
        /// copies the CA and the sealing key from that controller's data directory and
        /// issues this one its own serving certificate for `--san` (needs `--config`
        /// with the fleet's `[store]`).
        #[arg(long, value_name = "DIR", requires = "config")]
        replica_of: Option<PathBuf>,
    },
    /// Serve the fleet.
    Run {
        #[arg(long, env = "FLEET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// gRPC (mTLS) listen address [default: 0.0.0.0:7443]
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// HTTP listen address for health, metrics and service discovery [default: 127.0.0.1:7444]
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// TOML settings file (flags win over it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Lifetime of agent certificates; agents renew at 2/3 of it [default: 7d]
        #[arg(long)]
        agent_cert_lifetime: Option<String>,
        /// Lifetime of the serving certificate this controller issues itself when the
        /// current one is at 2/3 of its own lifetime [default: 365d]
        #[arg(long)]
        server_cert_lifetime: Option<String>,
        /// Lifetime of the admin certificates `fleetctl identity renew` gets [default: 365d]
        #[arg(long)]
        admin_cert_lifetime: Option<String>,
    },
    /// Move a stopped controller's state from DATA_DIR/state.redb into the empty
    /// PostgreSQL database of the settings file's `[store]`, in one transaction; the file
    /// is then renamed aside. Start the controller with that settings file afterwards:
    /// agents reconnect with the certificates they hold.
    Migrate {
        #[arg(long, env = "FLEET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Where the state comes from (only the embedded file is a source).
        #[arg(long, value_enum, default_value = "redb")]
        from: MigrateSource,
        /// Settings file whose `[store]` names the database (and its password_file).
        #[arg(long)]
        config: PathBuf,
    },
    /// Copy the running controller's state, CA, identities and sealing key into one
    /// archive (0600: it holds the CA key). Online and consistent.
    Backup {
        #[arg(long, env = "FLEET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The running controller; its admin identity is read from DATA_DIR/admin.
        #[arg(long, default_value = "127.0.0.1:7443")]
        controller: String,
        /// The archive to write (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Also the release and agent-package blobs (large).
        #[arg(long)]
        with_blobs: bool,
    },
    /// Make a new data directory from a backup archive (offline; refuses a directory
    /// that is not empty). Then `fleet-controller run` on it: agents reconnect as they are.
    Restore {
        file: PathBuf,
        #[arg(long, env = "FLEET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum MigrateSource {
    Redb,
}
