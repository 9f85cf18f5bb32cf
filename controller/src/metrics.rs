//! The controller's Prometheus metrics (`/metrics` on the HTTP listener): connected agents,
//! enrolled hosts by state, and gRPC latency by method (recorded by [`RpcMetricsLayer`]
//! around every call), and rollouts by outcome with their duration.

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fleet_proto::access::method;
use fleet_proto::exposition::{self, Format};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::rollout::State;

/// gRPC latency buckets, seconds: unary calls take milliseconds; a Session call's time
/// is that of opening the stream.
const RPC_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Rollout duration buckets, seconds: a canary and a few batches, each held healthy for
/// min-healthy (10 s by default), take from tens of seconds to an hour on large fleets.
const ROLLOUT_BUCKETS: [f64; 10] = [
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

/// How a rollout can end; each is exported from the start (at 0) so that `increase()`
/// sees the first one of a kind.
const ROLLOUT_OUTCOMES: [State; 4] = [
    State::Succeeded,
    State::Reverted,
    State::Failed,
    State::Aborted,
];

/// Label for calls to paths fleet does not serve, so scanners cannot grow the label set.
const UNKNOWN_METHOD: &str = "unknown";

/// Host counts taken at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounts {
    /// Open agent sessions.
    pub connected: usize,
    /// Enrolled hosts whose session is alive.
    pub up: usize,
    /// Enrolled hosts without a live session.
    pub down: usize,
    /// Durable store commits since start (each at least one fsync).
    pub store_commits: u64,
}

#[derive(Debug)]
struct Inner {
    hosts: Mutex<HostCounts>,
    /// Keyed by the proto's own method paths (or [`UNKNOWN_METHOD`]), never by a
    /// caller-supplied string.
    rpc: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Finished rollouts, indexed as [`ROLLOUT_OUTCOMES`].
    rollouts: Mutex<[u64; ROLLOUT_OUTCOMES.len()]>,
    rollout_duration: Histogram,
    /// Unix seconds at which the serving certificate expires; set before the controller
    /// serves anything.
    cert_expiry: AtomicI64,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            hosts: Mutex::default(),
            rpc: Mutex::default(),
            rollouts: Mutex::default(),
            rollout_duration: Histogram::new(ROLLOUT_BUCKETS),
            cert_expiry: AtomicI64::new(0),
        }
    }
}

impl Collector for Inner {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let hosts = *self.hosts.lock().expect("metrics lock");
        ConstGauge::new(hosts.connected as i64).encode(enc.encode_descriptor(
            "fleet_controller_agents_connected",
            "Agents holding a session with this controller",
            None,
            MetricType::Gauge,
        )?)?;
        let mut by_state = enc.encode_descriptor(
            "fleet_controller_hosts",
            "Enrolled hosts by state (up: live session; down: none)",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in [("up", hosts.up), ("down", hosts.down)] {
            let labels = [("state", state)];
            ConstGauge::new(n as i64).encode(by_state.encode_family(&labels)?)?;
        }
        ConstCounter::new(hosts.store_commits).encode(enc.encode_descriptor(
            "fleet_controller_store_commits",
            "Durable commits to the controller's store since it started (each costs at least one fsync)",
            None,
            MetricType::Counter,
        )?)?;
        let mut rpc = enc.encode_descriptor(
            "fleet_controller_rpc_duration",
            "gRPC call latency by method, until the response starts",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (method, h) in self.rpc.lock().expect("metrics lock").iter() {
            let labels = [("method", *method)];
            h.encode(rpc.encode_family(&labels)?)?;
        }
        let counts = *self.rollouts.lock().expect("metrics lock");
        let mut rollouts = enc.encode_descriptor(
            "fleet_rollouts",
            "Finished rollouts (and rollbacks) by outcome",
            None,
            MetricType::Counter,
        )?;
        for (state, n) in ROLLOUT_OUTCOMES.iter().zip(counts) {
            let labels = [("outcome", state.as_str())];
            ConstCounter::new(n).encode(rollouts.encode_family(&labels)?)?;
        }
        self.rollout_duration.encode(enc.encode_descriptor(
            "fleet_rollout_duration",
            "Wall time of finished rollouts, start to end (across controller restarts)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?)?;
        ConstGauge::new(self.cert_expiry.load(Ordering::Relaxed)).encode(
            enc.encode_descriptor(
                "fleet_controller_certificate_expiry_timestamp",
                "When the controller's serving certificate expires (it renews it at 2/3 of its lifetime)",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?,
        )?;
        Ok(())
    }
}

/// Cheap to clone; all clones share the same values.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    inner: Arc<Inner>,
    registry: Arc<Registry>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        let inner = Arc::new(Inner::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(inner.clone()));
        ControllerMetrics {
            inner,
            registry: Arc::new(registry),
        }
    }
}

impl ControllerMetrics {
    pub fn observe_rpc(&self, path: &str, seconds: f64) {
        let label = method(path).map_or(UNKNOWN_METHOD, |m| m.path);
        let mut rpc = self.inner.rpc.lock().expect("metrics lock");
        rpc.entry(label)
            .or_insert_with(|| Histogram::new(RPC_BUCKETS))
            .observe(seconds);
    }

    /// Counts a finished rollout; `end` is its terminal state (others are not outcomes).
    pub fn observe_rollout(&self, end: State, took: Duration) {
        let Some(i) = ROLLOUT_OUTCOMES.iter().position(|s| *s == end) else {
            return;
        };
        self.inner.rollouts.lock().expect("metrics lock")[i] += 1;
        self.inner.rollout_duration.observe(took.as_secs_f64());
    }

    pub fn set_certificate_expiry(&self, not_after: i64) {
        self.inner.cert_expiry.store(not_after, Ordering::Relaxed);
    }

    /// Encodes everything, with `hosts` as the current host counts.
    pub fn render(&self, hosts: HostCounts, format: Format) -> String {
        *self.inner.hosts.lock().expect("metrics lock") = hosts;
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; the collector only formats.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String");
        match format {
            Format::OpenMetrics => out,
            Format::Text => exposition::to_prometheus_text(&out),
        }
    }

    pub fn layer(&self) -> RpcMetricsLayer {
        RpcMetricsLayer {
            metrics: self.clone(),
        }
    }
}

/// `(name, type)` of every family the controller exports (Prometheus text naming), from
/// the real registry; the packaging tests check rules and dashboards against it.
pub fn exported_families() -> Vec<(String, String)> {
    exposition::families(&ControllerMetrics::default().render(HostCounts::default(), Format::Text))
}

/// Times every gRPC call, refused ones included.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: ControllerMetrics,
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: ControllerMetrics,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            metrics.observe_rpc(&path, start.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_rpc_latency_are_exported() {
        let m = ControllerMetrics::default();
        m.observe_rpc("/fleet.v1.Admin/ListHosts", 0.002);
        m.observe_rpc("/fleet.v1.Admin/ListHosts", 0.3);
        m.observe_rpc("/evil/scan-1", 0.001);
        m.observe_rpc("/evil/scan-2", 0.001);
        // Under a service whose rule is "*": still not a method fleet serves.
        m.observe_rpc("/fleet.v1.Admin/evil-3", 0.001);
        let out = m.render(
            HostCounts {
                connected: 2,
                up: 2,
                down: 1,
                store_commits: 7,
            },
            Format::Text,
        );
        for line in [
            "fleet_controller_agents_connected 2",
            "fleet_controller_store_commits_total 7",
            "fleet_controller_hosts{state=\"up\"} 2",
            "fleet_controller_hosts{state=\"down\"} 1",
            "fleet_controller_rpc_duration_seconds_count{method=\"/fleet.v1.Admin/ListHosts\"} 2",
            "fleet_controller_rpc_duration_seconds_bucket{le=\"0.0025\",method=\"/fleet.v1.Admin/ListHosts\"} 1",
            "fleet_controller_rpc_duration_seconds_count{method=\"unknown\"} 3",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?}\n{out}");
        }
        assert!(!out.contains("evil"), "{out}");
    }

    #[test]
    fn rollouts_are_counted_by_outcome_with_their_duration() {
        let m = ControllerMetrics::default();
        let before = m.render(HostCounts::default(), Format::Text);
        for outcome in ["succeeded", "reverted", "failed", "aborted"] {
            let line = format!("fleet_rollouts_total{{outcome=\"{outcome}\"}} 0");
            assert!(
                before.lines().any(|l| l == line),
                "missing {line:?}\n{before}"
            );
        }
        m.observe_rollout(State::Succeeded, Duration::from_secs(25));
        m.observe_rollout(State::Succeeded, Duration::from_secs(70));
        m.observe_rollout(State::Reverted, Duration::from_secs(40));
        // Not an end: nothing to count (the engine only reports terminal states).
        m.observe_rollout(State::Running, Duration::from_secs(1));
        let out = m.render(HostCounts::default(), Format::Text);
        for line in [
            "# TYPE fleet_rollouts_total counter",
            "fleet_rollouts_total{outcome=\"succeeded\"} 2",
            "fleet_rollouts_total{outcome=\"reverted\"} 1",
            "fleet_rollouts_total{outcome=\"failed\"} 0",
            "fleet_rollouts_total{outcome=\"aborted\"} 0",
            "# TYPE fleet_rollout_duration_seconds histogram",
            "fleet_rollout_duration_seconds_count 3",
            "fleet_rollout_duration_seconds_sum 135.0",
            "fleet_rollout_duration_seconds_bucket{le=\"30.0\"} 1",
            "fleet_rollout_duration_seconds_bucket{le=\"60.0\"} 2",
            "fleet_rollout_duration_seconds_bucket{le=\"120.0\"} 3",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?}\n{out}");
        }
    }

    #[test]
    fn every_family_is_described_before_any_call() {
        let names: Vec<String> = exported_families().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "fleet_controller_agents_connected",
                "fleet_controller_hosts",
                "fleet_controller_store_commits_total",
                "fleet_controller_rpc_duration_seconds",
                "fleet_rollouts_total",
                "fleet_rollout_duration_seconds",
                "fleet_controller_certificate_expiry_timestamp_seconds",
            ]
        );
    }
}
