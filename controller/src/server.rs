//! `fleet-controller run`: load the data dir, listen (gRPC over our TLS, plain HTTP for
//! health, metrics and Prometheus discovery), and serve until SIGTERM/SIGINT.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use fleet_proto::identity::TrustDomain;
use fleet_proto::v1::admin_server::AdminServer;
use fleet_proto::v1::agent_channel_server::AgentChannelServer;
use fleet_proto::v1::enrollment_server::EnrollmentServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::admin::AdminService;
use crate::apps::AppStates;
use crate::auth::AuthLayer;
use crate::blobs::Blobs;
use crate::channel::ChannelService;
use crate::commands::Commands;
use crate::config::Settings;
use crate::datadir::DataDir;
use crate::enroll::EnrollmentService;
use crate::init::TRUST_DOMAIN_KEY;
use crate::metrics::ControllerMetrics;
use crate::pki::Ca;
use crate::ratelimit::{GlobalLimiter, LogThrottle, RateLimiter};
use crate::sealing::Sealer;
use crate::servercert::{self, ServingCert};
use crate::sessions::Sessions;
use crate::shared::Shared;
use crate::store::Store;
use crate::timefmt::now_secs;
use crate::tls::{self, Revocations};

const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub fn load(dir: &Path, settings: Settings) -> anyhow::Result<Arc<Shared>> {
    let store = Store::open_configured(dir, settings.store.as_ref())?;
    load_with(dir, settings, Arc::new(store))
}

/// Everything else a controller serves with, read from `store` (after this controller
/// took the leader lease, when it shares the store).
fn load_with(dir: &Path, settings: Settings, store: Arc<Store>) -> anyhow::Result<Arc<Shared>> {
    let dd = DataDir(dir.to_owned());
    let td: TrustDomain = store
        .meta(TRUST_DOMAIN_KEY)?
        .context(
            "controller state has no trust domain: it was not made by `fleet-controller init`",
        )?
        .parse()
        .context("controller state holds an invalid trust domain")?;
    let ca = Ca::load(td, &dd.read(&dd.ca_cert())?, &dd.read(&dd.ca_key())?)?;
    let serving = Arc::new(ServingCert::load(&dd, ca.cert_pem())?);
    let metrics = ControllerMetrics::default();
    metrics.set_certificate_expiry(serving.served().not_after);
    let revocations = Arc::new(Revocations::new(
        store.revoked()?.into_iter().map(|r| r.serial),
    ));
    let join_limiter = Mutex::new(RateLimiter::new(
        settings.join_burst,
        settings.join_per_minute,
    ));
    let join_global = Mutex::new(GlobalLimiter::new(
        settings.join_global_per_minute,
        settings.join_global_per_minute,
    ));
    let operators = Arc::new(crate::operators::Operators::load(&store)?);
    let sealer = Sealer::load_or_create(dir)?;
    seal_old_secrets(&store, &sealer)?;
    let blobs = Blobs::open(dir)
        .with_context(|| format!("cannot open release storage in {}", dir.display()))?
        .with_store(&store);
    Ok(Arc::new(Shared {
        data_dir: dir.to_owned(),
        store,
        ca,
        serving,
        revocations,
        operators,
        sessions: Sessions::default(),
        last_seen: Default::default(),
        settings,
        join_limiter,
        join_global,
        sealer,
        join_refusals_audit: Mutex::new(GlobalLimiter::new(20, 20)),
        join_refusals_log: LogThrottle::new(5, Duration::from_secs(1)),
        agent_noise_log: LogThrottle::new(10, Duration::from_secs(1)),
        blobs,
        commands: Commands::default(),
        app_states: AppStates::default(),
        firewall_states: Default::default(),
        rollouts: Default::default(),
        convergence: Default::default(),
        upgrades: Default::default(),
        metrics,
        events: Default::default(),
        controllers: crate::controllers::cache(),
        host_count: crate::cached::Cached::new(Duration::from_secs(10)),
    }))
}

/// Copies of blobs another controller deleted while this one waited: a full disk later is
/// worse than a warning now, and a failure here costs only space, so it never stops a
/// start.
fn evict_stale_blobs(shared: &Shared) {
    match shared.store.blob_refs() {
        Ok(keep) => match shared.blobs.evict_except(&keep) {
            Ok(0) => {}
            Ok(n) => tracing::info!(evicted = n, "removed cached blobs no record names any more"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep the blob cache; stale copies stay"),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the blobs records name; the blob cache is not swept")
        }
    }
}

/// Seals the secrets a controller from before sealing stored in the clear.
fn seal_old_secrets(store: &Store, sealer: &Sealer) -> anyhow::Result<()> {
    let mut sealed = 0;
    for (slot, value) in store.all_secrets()? {
        if Sealer::is_sealed(&value) {
            continue;
        }
        if let Some((app, key)) = slot.split_once('/') {
            store.set_secret(app, key, &sealer.seal(&slot, &value), None)?;
            sealed += 1;
        }
    }
    if sealed > 0 {
        tracing::info!(
            sealed,
            "sealed secrets stored in the clear by an older controller"
        );
    }
    Ok(())
}

pub async fn run(dir: &Path, settings: Settings) -> anyhow::Result<()> {
    settings.validate()?;
    let store = Arc::new(Store::open_configured(dir, settings.store.as_ref())?);
    tracing::info!(backend = store.backend_name(), "store opened");
    let watchdog = crate::systemd::spawn_watchdog();
    // On a shared store the lease holder serves; a standby waits here, relaying every
    // call it accepts to the leader (relay/), and gives its port to its own full
    // listener once it leads.
    let leadership = if store.is_shared() {
        let ttl = settings
            .store
            .as_ref()
            .map_or(crate::store::pg::PgConfig::DEFAULT_LEASE_TTL, |s| {
                s.lease_ttl
            });
        // Only when another controller leads: a free lease is taken at once, and a relay
        // listening first would answer "no leader" for that moment.
        let s = store.clone();
        let led_by_other = tokio::task::spawn_blocking(move || s.lease_holder())
            .await
            .context("lease task")??
            .is_some_and(|(_, _, live)| live);
        let front = if led_by_other {
            Some(crate::relay::Front::start(dir, &settings, store.clone())?)
        } else {
            None
        };
        let l = crate::leader::wait_to_lead(store.clone(), crate::leader::holder_name(), ttl)
            .await
            .context("cannot take the leader lease")?;
        if let Some(front) = front {
            front.stop().await;
        }
        Some(l)
    } else {
        None
    };
    let shared = load_with(dir, settings.clone(), store)?;
    if let Some(l) = &leadership {
        evict_stale_blobs(&shared);
        match crate::relay::advertised(&settings, &shared.serving.served().sans) {
            Some(addr) => {
                crate::relay::publish(&shared.store, l.holder.as_str(), l.epoch, &addr)
                    .context("cannot record where the other controllers reach this one")?;
                tracing::info!(%addr, "the other controllers relay calls to this address");
            }
            None => tracing::warn!(
                "no address for the other controllers to relay to: set [store] advertise"
            ),
        }
    }
    let lease_keeper = leadership.as_ref().map(|l| {
        shared.sessions.only_while(l.clone());
        tokio::spawn(crate::leader::keep(shared.store.clone(), l.clone()))
    });
    // Before listening: a controller that was down when its certificate was due (or past
    // it) must not greet agents with an expired one.
    servercert::renew_if_due(&shared)?;
    let tls_config = tls::server_config(
        shared.ca.cert_pem(),
        shared.serving.clone(),
        shared.revocations.clone(),
    )?;

    let grpc = tls::bind(settings.listen, settings.listen_backlog).with_context(|| {
        format!(
            "cannot listen on {} (gRPC): is another controller running?",
            settings.listen
        )
    })?;
    let http = TcpListener::bind(settings.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", settings.http_listen))?;
    tracing::info!(
        grpc = %settings.listen,
        http = %settings.http_listen,
        trust_domain = %shared.ca.trust_domain(),
        ca_pin = %shared.ca.pin(),
        "controller listening"
    );
    crate::systemd::ready(&format!("serving on {}", settings.listen));

    let (conn_tx, conn_rx) = mpsc::channel(128);
    let slots = tls::Slots::new(tls::ConnLimits {
        handshake_timeout: settings.handshake_timeout,
        preface_timeout: settings.preface_timeout,
        idle_timeout: settings.idle_timeout,
        max_connections: connection_budget(settings.max_connections),
        max_connections_per_ip: settings.max_connections_per_ip,
        max_pending_handshakes: settings.max_pending_handshakes,
        max_pending_handshakes_per_ip: settings.max_pending_handshakes_per_ip,
    });
    let accept = tokio::spawn(tls::accept_loop(grpc, tls_config, slots, conn_tx));
    let last_seen = tokio::spawn(crate::lastseen::keep_flushing(shared.clone()));
    let renewer = tokio::spawn(servercert::keep_fresh(shared.clone()));
    // After the listeners are up: the resumed rollouts wait for their agents to reconnect.
    crate::rollout::resume_all(&shared);
    let pruner = tokio::spawn(prune(shared.clone()));
    let audit_pruner = tokio::spawn(prune_audit(shared.clone()));
    let http_server = tokio::spawn(crate::http::serve(http, shared.clone()));

    let shutdown = shutdown_signal();
    let shared_for_shutdown = shared.clone();
    let serve = crate::tls::grpc_server(&settings)
        // Outermost, so refused calls are timed too.
        .layer(shared.metrics.layer())
        .layer(AuthLayer::new(
            shared.ca.trust_domain().clone(),
            shared.revocations.clone(),
            shared.operators.clone(),
            settings.request_timeout,
        ))
        .add_service(EnrollmentServer::new(EnrollmentService(shared.clone())))
        .add_service(AgentChannelServer::new(ChannelService(shared.clone())))
        .add_service(AdminServer::new(AdminService(shared.clone())))
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
            shutdown.await;
            tracing::info!("shutting down: closing agent sessions");
            crate::systemd::stopping();
            // Open bidi streams would hold graceful shutdown forever; end them first.
            let s = &shared_for_shutdown;
            let closed = s.sessions.close_all(crate::channel::SHUTTING_DOWN);
            let now = crate::timefmt::now_ms();
            for host in &closed {
                s.last_seen.touch(host, now);
            }
            tracing::info!(sessions = closed.len(), "agent sessions closed");
        });
    // Bounded: a client that ignores GOAWAY must not keep the controller from exiting.
    let result = tokio::select! {
        r = serve => r.context("gRPC server failed"),
        _ = async { shutdown_signal().await; tokio::time::sleep(Duration::from_secs(5)).await } => Ok(()),
    };
    accept.abort();
    if let Some(k) = lease_keeper {
        k.abort();
    }
    last_seen.abort();
    renewer.abort();
    pruner.abort();
    audit_pruner.abort();
    http_server.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    // One commit for every host the shutdown (or the last interval) saw.
    if let Err(e) = shared.last_seen.flush(&shared.store) {
        tracing::warn!(error = %e, "cannot record when hosts were last seen");
    }
    if let Some(l) = &leadership {
        // Last: a standby may take over as soon as this returns.
        match shared.store.release_lease(&l.holder, l.epoch) {
            Ok(()) => tracing::info!("leader lease released"),
            Err(e) => tracing::warn!(error = %e, "cannot release the leader lease"),
        }
    }
    result
}

/// File descriptors kept free for the store, blobs, the HTTP listener and logging when
/// the gRPC listener is full.
const FD_RESERVE: u64 = 128;

/// `max_connections`, lowered to what the file-descriptor limit allows (after raising the
/// soft limit to the hard one), so a full listener never starves the rest of the process.
fn connection_budget(configured: usize) -> usize {
    let limit = crate::systemd::raise_nofile_limit();
    if limit == 0 {
        return configured;
    }
    let budget = limit.saturating_sub(FD_RESERVE).max(16) as usize;
    if budget < configured {
        tracing::warn!(
            max_connections = configured,
            fd_limit = limit,
            using = budget,
            "max_connections is above what the open-file limit allows: raise LimitNOFILE"
        );
    }
    configured.min(budget)
}

async fn prune(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        // A day of grace so "token expired" stays a clearer answer than "token unknown".
        if let Err(e) = shared.store.prune(now_secs() - 24 * 3600) {
            tracing::warn!(error = %e, "pruning expired tokens and revocations failed");
        }
    }
}

const AUDIT_PRUNE_EVERY: Duration = Duration::from_secs(300);
const AUDIT_PRUNE_BATCH: usize = 1000;

/// Keeps the audit log within `audit_retention` and `audit_max_entries`: small batches
/// on a blocking thread, with a pause between them so appends get the store in between.
async fn prune_audit(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(AUDIT_PRUNE_EVERY);
    loop {
        tick.tick().await;
        let before_ms = (now_secs() - shared.settings.audit_retention.as_secs() as i64) * 1000;
        let mut total = 0;
        loop {
            let s = shared.clone();
            let keep = shared.settings.audit_max_entries;
            let batch = tokio::task::spawn_blocking(move || {
                s.store.prune_audit(before_ms, keep, AUDIT_PRUNE_BATCH)
            })
            .await;
            match batch {
                Ok(Ok(n)) => {
                    total += n;
                    if n < AUDIT_PRUNE_BATCH {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "pruning the audit log failed");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "audit pruning task failed");
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if total > 0 {
            tracing::info!(removed = total, "pruned the audit log");
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
