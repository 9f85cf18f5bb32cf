//! `fleet-agent run`: the composition root. Builds what outlives every session (settings,
//! the /metrics server, the release fetcher, the app manager, the firewall) once, hands
//! them to `channel::Agent`, which holds the stream to the controller, and stops on
//! SIGTERM or SIGINT. Nothing here talks to the controller or to a host concern itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::apps::Apps;
use crate::channel::Agent;
use crate::config::{self, MetricsListen};
use crate::fetch::Fetcher;
use crate::firewall::Firewall;
use crate::metrics::{self, Metrics};
use crate::notify;
use crate::state::{StateDir, DEFAULT_STATE_DIR};

/// `fleet-agent run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[arg(long, env = "FLEET_AGENT_STATE_DIR", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Optional TOML config file (heartbeat_interval, max_backoff).
    #[arg(long, env = "FLEET_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Heartbeat period, e.g. "10s" (overrides the config file).
    #[arg(long, env = "FLEET_AGENT_HEARTBEAT_INTERVAL", value_name = "DUR", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,

    /// Address of the Prometheus /metrics listener (default 0.0.0.0:9437), or "off"
    /// (overrides the config file).
    #[arg(long, env = "FLEET_AGENT_METRICS_LISTEN", value_name = "ADDR:PORT|off")]
    pub metrics_listen: Option<MetricsListen>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = config::resolve(
        args.config.as_deref(),
        args.heartbeat_interval,
        args.metrics_listen,
    )?;
    let state = StateDir::new(args.state_dir);
    let creds = state.load()?;
    let metrics = Arc::new(Metrics::with_settings(
        Some(state.path().to_owned()),
        &settings.node_metrics,
    )?);
    // Bound before the first session so Hello can tell the controller the real port (the
    // configured one may be 0: "any free port").
    let metrics_port = match settings.metrics_listen.0 {
        Some(addr) => {
            // Files first: a bad TLS file must stop the agent before it binds anything.
            let tls = match &settings.metrics_tls {
                Some(files) => Some(metrics::tls::server_config(files)?),
                None => None,
            };
            let listener = metrics::server::bind(addr).await?;
            let bound = listener
                .local_addr()
                .context("cannot read the /metrics listener's address")?;
            match tls {
                Some(config) => {
                    tracing::info!(address = %bound, "serving Prometheus metrics on /metrics over TLS (client certificates required)");
                    let app = metrics::server::router(metrics.clone());
                    tokio::spawn(metrics::tls::serve(listener, config, app));
                }
                None => {
                    tracing::info!(address = %bound, "serving Prometheus metrics on /metrics");
                    tokio::spawn(metrics::server::serve(listener, metrics.clone()));
                }
            }
            bound.port()
        }
        None => {
            tracing::info!("metrics listener off (metrics_listen = \"off\")");
            0
        }
    };
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    tracing::info!(
        identity = %creds.cert.identity,
        controller = %creds.meta.controller,
        heartbeat = %humantime::format_duration(settings.heartbeat_interval),
        version = env!("CARGO_PKG_VERSION"),
        "fleet-agent starting"
    );
    notify::ready(&format!("connecting to {}", creds.meta.controller));
    notify::spawn_watchdog();

    // Outlives every session, so a release download cut by a reconnect resumes on the next.
    let fetcher = Fetcher::new();
    // Also outlives sessions: apps are watched and probed whether or not we are connected.
    let apps = Apps::new(
        state.path(),
        fetcher.clone(),
        metrics.apps(),
        metrics.requests(),
        metrics_port,
    );
    apps.adopt();
    // Also outlives sessions: the revert timers and drift checks must not need the stream.
    let firewall = Firewall::new(
        state.path(),
        creds.meta.name.as_str(),
        metrics.firewall_drift(),
    );
    firewall.start();
    // Also outlives sessions: a package download resumes across reconnects like a release.
    let upgrader = crate::upgrade::Upgrader::new(state.path(), fetcher.clone());
    let agent = Agent {
        state,
        settings,
        fetcher,
        apps,
        firewall,
        upgrader,
        metrics_port,
        connected: metrics.connected(),
        spread_hint: Default::default(),
        next_addr: Default::default(),
    };
    tokio::select! {
        never = agent.supervise() => match never {},
        _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = int.recv() => tracing::info!("SIGINT received, stopping"),
    }
    notify::stopping();
    Ok(())
}
