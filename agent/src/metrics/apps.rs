//! Per-app metrics, fed by the app manager. The manager reports what it observes (systemd's
//! state and NRestarts, health probe results, cgroup usage); this module only keeps the
//! latest values and encodes them, so the manager never touches the exposition format.
//!
//! Values the manager reads as absolute numbers (restarts, CPU seconds) are exported as
//! counters set to that number; when systemd resets NRestarts (reset-failed) the counter
//! goes down, which Prometheus' `rate`/`increase` treat as a counter reset.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::encode::family;

/// Health probe latency buckets, seconds: a healthy local probe answers in milliseconds, a
/// struggling one approaches its timeout (seconds).
pub const PROBE_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, PartialEq)]
struct State {
    release: String,
    up: bool,
    healthy: bool,
    restarts: u64,
    crash_loop: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Usage {
    memory_bytes: u64,
    cpu_seconds: f64,
}

#[derive(Debug, Default)]
struct App {
    state: Option<State>,
    usage: Option<Usage>,
    probes: Option<Histogram>,
}

// The probe histograms live here rather than in a registered `Family`: an empty family is
// left out of the exposition entirely, and every `fleet_app_*` name must be described even
// on a host without apps (dashboards and the packaging tests rely on the names).
#[derive(Debug, Default)]
struct Inner {
    apps: Mutex<BTreeMap<String, App>>,
}

/// Cheap to clone; every clone feeds the same metrics.
#[derive(Clone, Debug, Default)]
pub struct AppMetrics {
    inner: Arc<Inner>,
    /// The app manager's system bus connection, reused by the systemd node collector.
    bus: super::systemd_units::Bus,
}

impl AppMetrics {
    /// Lends the app manager's system bus connection to the systemd node collector.
    pub fn share_bus(&self, conn: &zbus::Connection) {
        self.bus.set(conn);
    }

    pub(super) fn bus(&self) -> super::systemd_units::Bus {
        self.bus.clone()
    }

    /// Adds the `fleet_app_*` families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.inner.clone()));
    }

    /// What the supervisor knows about `app` now: the release it runs, whether its unit is
    /// active (`up`) and passing its health probe (`healthy`), systemd's restart count,
    /// and whether it is restarting in a loop.
    pub fn set_state(
        &self,
        app: &str,
        release: &str,
        up: bool,
        healthy: bool,
        restarts: u64,
        crash_loop: bool,
    ) {
        self.with_app(app, |a| {
            a.state = Some(State {
                release: release.to_owned(),
                up,
                healthy,
                restarts,
                crash_loop,
            })
        });
    }

    /// Resource use of the app's unit (cgroup): current memory, CPU seconds so far.
    pub fn set_usage(&self, app: &str, memory_bytes: u64, cpu_seconds: f64) {
        self.with_app(app, |a| {
            a.usage = Some(Usage {
                memory_bytes,
                cpu_seconds,
            })
        });
    }

    /// One health probe of `app` took `seconds` (whatever its outcome).
    pub fn observe_probe(&self, app: &str, seconds: f64) {
        self.with_app(app, |a| {
            a.probes
                .get_or_insert_with(|| Histogram::new(PROBE_BUCKETS))
                .observe(seconds)
        });
    }

    /// The app is no longer on this host: all its series disappear.
    pub fn remove(&self, app: &str) {
        self.inner
            .apps
            .lock()
            .expect("app metrics lock")
            .remove(app);
    }

    fn with_app(&self, app: &str, f: impl FnOnce(&mut App)) {
        let mut apps = self.inner.apps.lock().expect("app metrics lock");
        f(apps.entry(app.to_owned()).or_default());
    }
}

fn bool_value(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

impl Collector for Inner {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let apps = self.apps.lock().expect("app metrics lock");
        let states = || {
            apps.iter()
                .filter_map(|(name, a)| a.state.as_ref().map(|s| (name, s)))
        };
        let usages = || {
            apps.iter()
                .filter_map(|(name, a)| a.usage.as_ref().map(|u| (name, u)))
        };
        let app = |name: &String| vec![("app", name.clone())];

        family(
            &mut enc,
            "fleet_app_up",
            "1 if the app's unit is active",
            None,
            Gauge,
            states().map(|(n, s)| (app(n), bool_value(s.up))),
        )?;
        family(
            &mut enc,
            "fleet_app_healthy",
            "1 if the app passes its health probe",
            None,
            Gauge,
            states().map(|(n, s)| (app(n), bool_value(s.healthy))),
        )?;
        family(
            &mut enc,
            "fleet_app_release_info",
            "The release the app runs (value always 1)",
            None,
            Gauge,
            states().map(|(n, s)| {
                (
                    vec![("app", n.clone()), ("release", s.release.clone())],
                    1.0,
                )
            }),
        )?;
        family(
            &mut enc,
            "fleet_app_restarts",
            "Restarts of the app's unit by systemd",
            None,
            Counter,
            states().map(|(n, s)| (app(n), s.restarts as f64)),
        )?;
        family(
            &mut enc,
            "fleet_app_crash_loop",
            "1 if the app keeps crashing and restarting",
            None,
            Gauge,
            states().map(|(n, s)| (app(n), bool_value(s.crash_loop))),
        )?;
        family(
            &mut enc,
            "fleet_app_memory",
            "Memory used by the app's unit",
            Some(&Unit::Bytes),
            Gauge,
            usages().map(|(n, u)| (app(n), u.memory_bytes as f64)),
        )?;
        family(
            &mut enc,
            "fleet_app_cpu",
            "CPU time used by the app's unit",
            Some(&Unit::Seconds),
            Counter,
            usages().map(|(n, u)| (app(n), u.cpu_seconds)),
        )?;
        let mut probes = enc.encode_descriptor(
            "fleet_app_health_probe_duration",
            "Duration of the app's health probes",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (name, a) in apps.iter() {
            if let Some(h) = &a.probes {
                let labels = app(name);
                h.encode(probes.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &AppMetrics) -> String {
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    fn samples(out: &str) -> Vec<&str> {
        out.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn no_apps_no_series_but_every_family_is_described() {
        let out = render(&AppMetrics::default());
        assert!(samples(&out).is_empty(), "{out}");
        for family in [
            "fleet_app_up gauge",
            "fleet_app_healthy gauge",
            "fleet_app_release_info gauge",
            "fleet_app_restarts counter",
            "fleet_app_crash_loop gauge",
            "fleet_app_memory_bytes gauge",
            "fleet_app_cpu_seconds counter",
            "fleet_app_health_probe_duration_seconds histogram",
        ] {
            assert!(
                out.contains(&format!("# TYPE {family}\n")),
                "{family}\n{out}"
            );
        }
    }

    #[test]
    fn state_usage_and_probes_are_exported_per_app() {
        let m = AppMetrics::default();
        m.set_state("shop", "2026-01-02.1", true, false, 3, true);
        m.set_usage("shop", 52_428_800, 12.5);
        m.observe_probe("shop", 0.02);
        m.observe_probe("shop", 3.0);
        m.set_state("blog", "r7", false, false, 0, false);
        let out = render(&m);
        let s = samples(&out);
        for line in [
            "fleet_app_up{app=\"blog\"} 0.0",
            "fleet_app_up{app=\"shop\"} 1.0",
            "fleet_app_healthy{app=\"shop\"} 0.0",
            "fleet_app_release_info{app=\"shop\",release=\"2026-01-02.1\"} 1.0",
            "fleet_app_release_info{app=\"blog\",release=\"r7\"} 1.0",
            "fleet_app_restarts_total{app=\"shop\"} 3.0",
            "fleet_app_crash_loop{app=\"shop\"} 1.0",
            "fleet_app_crash_loop{app=\"blog\"} 0.0",
            "fleet_app_memory_bytes{app=\"shop\"} 52428800.0",
            "fleet_app_cpu_seconds_total{app=\"shop\"} 12.5",
            "fleet_app_health_probe_duration_seconds_count{app=\"shop\"} 2",
            "fleet_app_health_probe_duration_seconds_sum{app=\"shop\"} 3.02",
            "fleet_app_health_probe_duration_seconds_bucket{le=\"0.025\",app=\"shop\"} 1",
            "fleet_app_health_probe_duration_seconds_bucket{le=\"5.0\",app=\"shop\"} 2",
        ] {
            assert!(s.contains(&line), "missing {line:?} in\n{out}");
        }
        // Usage was never reported for blog: no invented zeros.
        assert!(
            !out.contains("fleet_app_memory_bytes{app=\"blog\"}"),
            "{out}"
        );
    }

    #[test]
    fn a_new_release_replaces_the_old_label_and_remove_drops_everything() {
        let m = AppMetrics::default();
        m.set_state("shop", "r1", true, true, 0, false);
        m.set_state("shop", "r2", true, true, 1, false);
        let out = render(&m);
        assert!(out.contains("release=\"r2\""), "{out}");
        assert!(
            !out.contains("release=\"r1\""),
            "one release series per app\n{out}"
        );

        m.set_usage("shop", 1, 1.0);
        m.observe_probe("shop", 0.1);
        m.remove("shop");
        let out = render(&m);
        assert!(samples(&out).is_empty(), "{out}");
    }
}
