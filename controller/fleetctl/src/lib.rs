//! fleetctl: the operator's command line. Parses, calls the controller's admin API
//! through fleet-proto, prints. It never links controller internals. A library so that the
//! packaging generator (packaging/gen) renders its man pages and completions from this
//! same definition.
#![forbid(unsafe_code)]

mod admins;
mod agent;
mod analysis;
mod apps;
mod audit;
mod client;
mod controllers;
mod events;
mod exec;
mod firewall;
mod hosts;
mod identity;
mod output;
mod overview;
mod progress;
mod release;
mod rollout;
mod run;
mod secret;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use fleet_proto::spec::AppName;

use output::Format;

#[derive(Parser)]
#[command(
    name = "fleetctl",
    version,
    about = "Operate a fleet through its controller"
)]
pub struct Cli {
    /// Controller gRPC address; several, comma-separated, for controllers sharing one
    /// store: the first that answers is used (a standby refuses connections).
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
    /// The fleet's events as they happen: hosts up/down, app health, crashes and
    /// releases, firewall outcomes, rollout steps, audit entries.
    Events(events::EventsArgs),
    /// Show who did what, when.
    Audit {
        /// Only entries younger than this (e.g. 1h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// At most this many entries (the oldest first).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Apps: apply a spec, list, show, stop, start, remove.
    #[command(subcommand)]
    App(apps::AppCmd),
    /// Release tarballs.
    #[command(subcommand)]
    Release(release::ReleaseCmd),
    /// Per-app secrets (values from stdin, never printed).
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Install and start a release on hosts, all at once.
    Deploy(run::DeployArgs),
    /// Restart an app (graceful: connections queue in the socket meanwhile).
    Restart(run::RestartArgs),
    /// Reload an app's code in place (HUP after a preflight import).
    Reload(run::RestartArgs),
    /// Per host: release, state, health, restarts, main pid. Without an app: every app
    /// at a glance and the hosts that need attention, worst first.
    Status {
        app: Option<String>,
        /// Without an app: list every host, not only those needing attention.
        #[arg(long)]
        all: bool,
    },
    /// The app's journal lines from its hosts, prefixed by host.
    Logs(run::LogsArgs),
    /// Run a command once as the app: its user, env and secrets, sandbox, current
    /// release and venv, in a transient systemd unit on the host(s). No shell unless
    /// you write `sh -c`. With --host the output passes through as is and the exit code
    /// is the program's; with --all lines are prefixed `host | ` and the exit code is 1
    /// if any host failed or exited non-zero. Ctrl-C stops the command on the hosts.
    Exec(exec::ExecArgs),
    /// Host firewall policy (the agent-owned `inet fleet` nftables table).
    #[command(subcommand)]
    Firewall(firewall::FirewallCmd),
    /// Rolling update: stage everywhere, canary, health-gated batches, auto-revert.
    /// Exit code 0 rolled out, 2 failed and reverted, 1 failed otherwise.
    Rollout(rollout::RolloutCmd),
    /// Roll back to the previous release present on every host (a rollout of it).
    Rollback(RollbackArgs),
    /// fleet-agent packages on the controller and fleet-wide agent upgrades.
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// The controller addresses agents are told when they connect: show them, or set
    /// them after adding or retiring a replica.
    Controllers {
        #[command(subcommand)]
        cmd: Option<controllers::ControllersCmd>,
    },
    /// This admin identity: show it, or renew its certificate before it expires.
    #[command(subcommand)]
    Identity(identity::IdentityCmd),
    /// Operators: add one with a role (viewer, deployer, admin), list, revoke.
    #[command(subcommand)]
    Admin(admins::AdminCmd),
    /// Print a shell completion script, e.g. `fleetctl completions bash >
    /// /etc/bash_completion.d/fleetctl` (the .deb installs them already).
    Completions { shell: clap_complete::Shell },
}

#[derive(clap::Args)]
struct RollbackArgs {
    app: AppName,
    #[command(flatten)]
    opts: rollout::Opts,
}

/// The whole program: parse, run, map the outcome to an exit code.
pub fn main() -> ExitCode {
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
        Err(e) => match e.downcast_ref::<rollout::Exit>() {
            // The outcome was printed already; only the code remains to say.
            Some(rollout::Exit(code)) => ExitCode::from(*code),
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Writes the completion script of `shell` for fleetctl.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "fleetctl", out);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let conn = client::Conn::new(&cli.controller, &cli.identity);
    match cli.command {
        Command::Token(cmd) => token::run(&conn, cmd, cli.output).await,
        Command::Hosts => hosts::list(&conn, cli.output).await,
        Command::Host(cmd) => hosts::run(&conn, cmd, cli.output).await,
        Command::Audit { since, limit } => audit::run(&conn, since, limit, cli.output).await,
        Command::App(cmd) => apps::app(&conn, cmd, cli.output).await,
        Command::Release(cmd) => release::run(&conn, cmd, cli.output).await,
        Command::Secret(cmd) => secret::run(&conn, cmd, cli.output).await,
        Command::Deploy(args) => run::deploy(&conn, args, cli.output).await,
        Command::Restart(args) => run::restart(&conn, args, false, cli.output).await,
        Command::Reload(args) => run::restart(&conn, args, true, cli.output).await,
        Command::Status { app, all } => run::status(&conn, app, all, cli.output).await,
        Command::Logs(args) => run::logs(&conn, args).await,
        Command::Exec(args) => exec::run(&conn, args, cli.output).await,
        Command::Firewall(cmd) => firewall::run(&conn, cmd, cli.output).await,
        Command::Rollout(cmd) => rollout::run(&conn, cmd, cli.output).await,
        Command::Rollback(a) => rollout::start(&conn, a.app, None, a.opts, cli.output).await,
        Command::Identity(cmd) => identity::run(&conn, cmd, cli.output).await,
        Command::Events(args) => events::run(&conn, args, cli.output).await,
        Command::Admin(cmd) => admins::run(&conn, cmd, cli.output).await,
        Command::Agent(cmd) => agent::run(&conn, cmd, cli.output).await,
        Command::Controllers { cmd } => controllers::run(&conn, cmd, cli.output).await,
        Command::Completions { shell } => {
            completions(shell, &mut std::io::stdout());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rollout_flags_are_checked_before_anything_is_sent() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["fleetctl", "rollout", "shop", "--version", "1.1"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        for bad in [
            &["--max-parallel", "0"][..],
            &["--max-parallel", "150%"],
            &["--min-healthy", "ten"],
            &["--healthy-deadline", "soon"],
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(e.to_string().contains(bad[1]), "{bad:?}: {e}");
        }
        let Ok(Cli {
            command: Command::Rollout(r),
            ..
        }) = parse(&["--max-parallel", "25%", "--min-healthy", "3s"])
        else {
            panic!("valid flags refused");
        };
        assert_eq!(r.start.opts.max_parallel.to_string(), "25%");
        assert_eq!(r.start.opts.min_healthy, std::time::Duration::from_secs(3));
    }

    #[test]
    fn analysis_flags_are_checked_and_carried_in_the_request() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["fleetctl", "rollout", "shop", "--version", "1.1"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        for (bad, says) in [
            (&["--max-error-ratio", "1.5"][..], "between 0 and 1"),
            (&["--max-error-ratio", "lots"], "expected a number"),
            (&["--max-error-increase", "1"], "above 1"),
            (&["--max-p99-increase", "1.2"], "bucket"),
            (&["--min-requests", "0"], "--min-requests"),
            (&["--analysis-window", "0s"], "--analysis-window"),
            (&["--bake", "soon"], "--bake"),
            (&["--bake", "3d"], "24h"),
            (&["--no-analysis", "--bake", "5m"], "cannot be used"),
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
        }
        let Ok(Cli {
            command: Command::Rollout(r),
            ..
        }) = parse(&[
            "--analysis-window",
            "30s",
            "--min-requests",
            "50",
            "--max-error-ratio",
            "0.02",
            "--max-p99-increase",
            "2",
            "--bake",
            "5m",
            "--force",
        ])
        else {
            panic!("valid analysis flags refused");
        };
        let o = r.start.opts.analysis.to_wire();
        assert_eq!(o.window_ms, Some(30_000));
        assert_eq!(o.min_requests, Some(50));
        assert_eq!(o.max_error_ratio, Some(0.02));
        assert_eq!(o.max_error_increase, None, "unset: the spec's");
        assert_eq!(o.max_p99_increase, Some(2.0));
        assert_eq!(o.bake_ms, Some(300_000));
        assert!(!o.disabled && r.start.opts.force);
        let Ok(Cli {
            command: Command::Rollback(b),
            ..
        }) = Cli::try_parse_from(["fleetctl", "rollback", "shop", "--no-analysis"])
        else {
            panic!("--no-analysis refused on rollback");
        };
        assert!(b.opts.analysis.to_wire().disabled);
    }

    #[test]
    fn app_names_are_checked_before_anything_is_sent() {
        let commands: [&[&str]; 13] = [
            &["exec", "Bad/Name", "--all", "--", "id"],
            &["deploy", "Bad/Name", "--version", "1"],
            &["restart", "Bad/Name"],
            &["reload", "Bad/Name"],
            &["logs", "Bad/Name"],
            &["rollout", "Bad/Name", "--version", "1"],
            &["rollout", "status", "Bad/Name"],
            &["rollout", "pause", "Bad/Name"],
            &["rollout", "abort", "Bad/Name"],
            &["rollback", "Bad/Name"],
            &["app", "show", "Bad/Name"],
            &[
                "release",
                "upload",
                "Bad/Name",
                "r.tar.gz",
                "--version",
                "1",
            ],
            &["secret", "set", "Bad/Name", "KEY"],
        ];
        for args in commands {
            let argv = std::iter::once("fleetctl").chain(args.iter().copied());
            let e = Cli::try_parse_from(argv)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}: {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("\"Bad/Name\" must match [a-z][a-z0-9-]"),
                "{args:?}: {msg}"
            );
        }
        let Ok(Cli {
            command: Command::Deploy(d),
            ..
        }) = Cli::try_parse_from(["fleetctl", "deploy", "shop-2", "--version", "1"])
        else {
            panic!("a valid app name refused");
        };
        assert_eq!(d.app.as_str(), "shop-2");
        assert_eq!(d.healthy_deadline, std::time::Duration::from_secs(60));
        let e = Cli::try_parse_from([
            "fleetctl",
            "deploy",
            "shop",
            "--version",
            "1",
            "--healthy-deadline",
            "soon",
        ])
        .err()
        .expect("--healthy-deadline soon accepted");
        assert!(e.to_string().contains("soon"), "{e}");
    }
}
