//! What every controller service shares: the store, the CA, live sessions, settings.

use std::sync::{Arc, Mutex};

use crate::apps::AppStates;
use crate::blobs::Blobs;
use crate::commands::Commands;
use crate::config::Settings;
use crate::metrics::ControllerMetrics;
use crate::pki::Ca;
use crate::ratelimit::RateLimiter;
use crate::sessions::Sessions;
use crate::store::{Store, StoreError};
use crate::timefmt::now_ms;
use crate::tls::Revocations;

pub struct Shared {
    /// The data directory (`datadir`): what a backup copies besides the store.
    pub data_dir: std::path::PathBuf,
    pub store: std::sync::Arc<Store>,
    pub ca: Ca,
    pub serving: Arc<crate::servercert::ServingCert>,
    pub revocations: Arc<Revocations>,
    /// Operators' roles, read by the authorization layer on every call.
    pub operators: Arc<crate::operators::Operators>,
    pub sessions: Sessions,
    pub last_seen: crate::lastseen::LastSeen,
    pub settings: Settings,
    pub join_limiter: Mutex<RateLimiter>,
    pub join_global: Mutex<crate::ratelimit::GlobalLimiter>,
    /// Refused joins that still get an audit row (the rest are only counted in the log).
    pub join_refusals_audit: Mutex<crate::ratelimit::GlobalLimiter>,
    pub join_refusals_log: crate::ratelimit::LogThrottle,
    /// Warnings an agent's misbehaviour triggers, rate-limited across all agents.
    pub agent_noise_log: crate::ratelimit::LogThrottle,
    pub blobs: Blobs,
    pub sealer: crate::sealing::Sealer,
    pub commands: Commands,
    pub app_states: AppStates,
    pub firewall_states: crate::firewall::FirewallStates,
    pub rollouts: crate::rollout::Rollouts,
    pub convergence: crate::converge::Convergence,
    pub upgrades: crate::upgrade::Upgrades,
    pub metrics: ControllerMetrics,
    pub events: Arc<crate::events::Events>,
    /// The addresses every Welcome hands out (`fleetctl controllers set`).
    pub controllers: crate::cached::Cached<Vec<String>>,
    /// Enrolled hosts, for the reconnect spread each Welcome names (a scan on PostgreSQL).
    pub host_count: crate::cached::Cached<usize>,
}

impl Shared {
    /// Runs `f` on the blocking pool and waits for it. Every store call on a per-session
    /// or per-message path goes through here: on PostgreSQL a call is round trips, and
    /// made on an async worker it would stall every session that worker runs (two
    /// workers on two cores).
    pub async fn off_workers<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Arc<Shared>) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s)).await
    }

    /// Appends to the audit log. An audit write that fails fails the operation that asked
    /// for it: an action that cannot be recorded is not done silently.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.store
            .append_audit(now_ms(), actor, action, target, detail)?;
        tracing::info!(actor, action, target, detail, "audit");
        self.events.publish(
            "audit",
            "",
            "",
            format!("{actor} {action} {target}: {detail}"),
        );
        Ok(())
    }
}

pub fn internal(e: StoreError) -> tonic::Status {
    tracing::error!(error = %e, "controller state error");
    tonic::Status::internal(format!("controller state error: {e}"))
}
