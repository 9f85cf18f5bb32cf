//! fleet-controller: `init` makes a new fleet's PKI and state; `run` serves it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_controller::config::{
    parse_duration, Flags, Settings, ADMIN_CERT_LIFETIME, SERVER_CERT_LIFETIME,
};
use fleet_controller::logging::{self, LogFormat};
use fleet_proto::identity::TrustDomain;

#[derive(Parser)]
#[command(name = "fleet-controller", version, about = "fleet controller")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new fleet: CA, controller certificate, first admin identity, empty state.
    Init {
        #[arg(long, env = "FLEET_DATA_DIR")]
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
    },
    /// Serve the fleet.
    Run {
        #[arg(long, env = "FLEET_DATA_DIR")]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init {
            data_dir,
            trust_domain,
            sans,
            server_cert_lifetime,
            admin_cert_lifetime,
        } => {
            let td: TrustDomain = trust_domain.parse()?;
            let server_lifetime = match server_cert_lifetime {
                Some(v) => parse_duration("--server-cert-lifetime", &v)?,
                None => SERVER_CERT_LIFETIME,
            };
            let admin_lifetime = match admin_cert_lifetime {
                Some(v) => parse_duration("--admin-cert-lifetime", &v)?,
                None => ADMIN_CERT_LIFETIME,
            };
            let out = fleet_controller::init::init(
                &data_dir,
                td,
                &sans,
                server_lifetime,
                admin_lifetime,
            )?;
            println!("ca-pin: {}", out.pin);
            eprintln!(
                "fleet created in {}; admin identity in {} (use: fleetctl --identity {} ...)",
                data_dir.display(),
                out.admin_dir.display(),
                out.admin_dir.display()
            );
            Ok(())
        }
        Command::Run {
            data_dir,
            listen,
            http_listen,
            config,
            agent_cert_lifetime,
            server_cert_lifetime,
            admin_cert_lifetime,
        } => {
            let settings = Settings::resolve(
                config.as_deref(),
                Flags {
                    listen,
                    http_listen,
                    agent_cert_lifetime,
                    server_cert_lifetime,
                    admin_cert_lifetime,
                },
            )?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(fleet_controller::server::run(&data_dir, settings))
        }
    }
}
