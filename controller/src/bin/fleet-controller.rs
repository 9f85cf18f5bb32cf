//! fleet-controller: `init` makes a new fleet's PKI and state; `run` serves it.

use std::process::ExitCode;

use clap::Parser;
use fleet_controller::cli::{Cli, Command};
use fleet_controller::config::{
    parse_duration, Flags, Settings, ADMIN_CERT_LIFETIME, SERVER_CERT_LIFETIME,
};
use fleet_controller::logging;
use fleet_proto::identity::TrustDomain;

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
            config,
            replica_of,
        } => {
            let td: TrustDomain = trust_domain.parse()?;
            let store = match &config {
                Some(path) => Settings::resolve(Some(path), Flags::default())?.store,
                None => None,
            };
            let server_lifetime = match server_cert_lifetime {
                Some(v) => parse_duration("--server-cert-lifetime", &v)?,
                None => SERVER_CERT_LIFETIME,
            };
            if let Some(from) = replica_of {
                let Some(pg) = store else {
                    anyhow::bail!(
                        "--replica-of needs a settings file with the fleet's [store] section: \
                         replicas share one PostgreSQL store (docs/ha.md)"
                    );
                };
                let out = fleet_controller::replica::prepare(
                    &from,
                    &data_dir,
                    &sans,
                    server_lifetime,
                    &pg,
                )?;
                println!("ca-pin: {}", out.pin);
                eprintln!(
                    "replica prepared in {} (serving certificate for {}); start it with \
                     `fleet-controller run --data-dir {} --config FILE` and add its address \
                     to the agents' and fleetctl's --controller lists",
                    data_dir.display(),
                    out.sans.join(", "),
                    data_dir.display()
                );
                return Ok(());
            }
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
                store.as_ref(),
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
            let nofile = fleet_controller::systemd::raise_nofile_limit();
            tracing::info!(nofile, "open-files limit");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(fleet_controller::server::run(&data_dir, settings))
        }
        Command::Migrate {
            data_dir,
            from: _,
            config,
        } => {
            let settings = Settings::resolve(Some(&config), Flags::default())?;
            let Some(pg) = settings.store else {
                anyhow::bail!(
                    "{} has no [store] section: add one with the database's url (docs/ha.md)",
                    config.display()
                );
            };
            let out = fleet_controller::init::migrate(&data_dir, &pg)?;
            eprintln!(
                "migrated {} records and {} blobs into {}; the old state is at {}. Start the controller with --config {}",
                out.rows,
                out.blobs,
                pg.describe(),
                out.moved_to.display(),
                config.display()
            );
            Ok(())
        }
        Command::Backup {
            data_dir,
            controller,
            out,
            with_blobs,
        } => {
            if out.exists() {
                anyhow::bail!("{} exists: name a new file", out.display());
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let size = rt.block_on(fleet_controller::backup::fetch(
                &data_dir,
                &controller,
                &out,
                with_blobs,
            ))?;
            eprintln!(
                "backup written to {} ({size} bytes, mode 0600). It holds the CA key and the key to the sealed secrets: keep it as safe as the controller itself",
                out.display()
            );
            Ok(())
        }
        Command::Restore { file, data_dir } => {
            let r = fleet_controller::backup::restore(&file, &data_dir)?;
            let missing = r.manifest.blobs.len() - r.blobs_restored;
            eprintln!(
                "restored {} (backup of {}, controller {}) into {}; {} release blobs restored{}. Start it with `fleet-controller run --data-dir {}`: agents reconnect with the certificates they hold",
                file.display(),
                fleet_controller::timefmt::rfc3339(r.manifest.created_at_ms / 1000),
                r.manifest.controller_version,
                data_dir.display(),
                r.blobs_restored,
                if missing > 0 {
                    format!(", {missing} not in the archive (re-upload those releases to deploy them again)")
                } else {
                    String::new()
                },
                data_dir.display()
            );
            Ok(())
        }
    }
}
