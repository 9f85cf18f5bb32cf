//! The agent's Prometheus endpoint (`metrics_listen`, default `0.0.0.0:9437`): node
//! metrics under node_exporter's names, `fleet_app_*` fed by the app manager, and the
//! agent's own `fleet_agent_*`.
//!
//! A scrape reads /proc and statvfs on a blocking thread (see `server.rs`), one scrape at a
//! time, so it never stalls the controller stream running on the async workers.

pub mod apps;
mod cpu;
mod diskstats;
mod encode;
mod filesystem;
mod kernel;
mod meminfo;
mod netclass;
mod netdev;
mod netstat;
pub mod node;
mod pressure;
pub mod procfs;
mod raid;
pub mod server;
mod source;
mod systemd_units;
mod textfile;
mod timex;
pub mod tls;
mod vmstat;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

pub use apps::AppMetrics;
pub use fleet_proto::exposition::Format;

use fleet_proto::exposition as text;

use crate::requests::Requests;
use crate::state::StateDir;
use encode::{family, single};
pub use node::NodeSettings;
use source::Sources;

pub const DEFAULT_PORT: u16 = 9437;

/// A yes/no figure another part of the agent sets and scrapes read.
#[derive(Clone, Debug, Default)]
pub struct Flag(Arc<AtomicBool>);

/// Whether the agent holds a welcomed session with the controller; set by `channel/session.rs`.
pub type Connected = Flag;

impl Flag {
    pub fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `fleet_agent_*`: read at scrape time from shared flags and the state dir.
#[derive(Debug)]
struct AgentCollector {
    state_dir: Option<PathBuf>,
    connected: Connected,
    /// Set by `firewall/mod.rs` while the live table differs from the confirmed policy.
    firewall_drift: Flag,
    /// f64 bits of the last scrape's collection time.
    scrape_seconds: AtomicU64,
}

impl Collector for AgentCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        use MetricType::Gauge;
        family(
            &mut enc,
            "fleet_agent_build_info",
            "The running fleet-agent's version (value always 1)",
            None,
            Gauge,
            [(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0)],
        )?;
        single(
            &mut enc,
            "fleet_agent_controller_connected",
            "1 while the agent holds an accepted session with the controller",
            None,
            Gauge,
            Some(if self.connected.get() { 1.0 } else { 0.0 }),
        )?;
        single(
            &mut enc,
            "fleet_firewall_drift",
            "1 while the host's fleet nftables table differs from its confirmed policy",
            None,
            Gauge,
            Some(if self.firewall_drift.get() { 1.0 } else { 0.0 }),
        )?;
        // Read from disk each scrape (a few hundred bytes of PEM): it follows renewals and
        // `join --force` without any hook, and a missing certificate shows as no sample.
        let expiry = self
            .state_dir
            .as_ref()
            .and_then(|dir| StateDir::new(dir).load_cert().ok())
            .map(|c| c.not_after as f64);
        single(
            &mut enc,
            "fleet_agent_certificate_expiry_timestamp",
            "When the agent's certificate expires, in unixtime",
            Some(&Unit::Seconds),
            Gauge,
            expiry,
        )?;
        single(
            &mut enc,
            "fleet_agent_scrape_duration",
            "Time this scrape spent reading the node's figures",
            Some(&Unit::Seconds),
            Gauge,
            Some(f64::from_bits(self.scrape_seconds.load(Ordering::Relaxed))),
        )?;
        kernel::build_info(&mut enc)
    }
}

/// Everything `/metrics` serves.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    agent: Arc<AgentCollector>,
    apps: AppMetrics,
    requests: Requests,
    /// One scrape at a time: the node snapshot and the scrape duration belong to it.
    scrape: Mutex<()>,
}

impl Metrics {
    /// `state_dir` is where the agent certificate is read from (None: no expiry metric);
    /// node collectors with their defaults.
    pub fn new(state_dir: Option<PathBuf>) -> Metrics {
        Metrics::with_settings(state_dir, &NodeSettings::default())
            .expect("the default node settings are valid")
    }

    /// As [`Metrics::new`], with the `[node_metrics]` settings of the config file.
    pub fn with_settings(
        state_dir: Option<PathBuf>,
        settings: &NodeSettings,
    ) -> Result<Metrics, node::BadRegex> {
        let textfile = (!settings.textfile_directory.as_os_str().is_empty())
            .then(|| Arc::new(textfile::Textfile::new(settings.textfile_directory.clone())));
        let mut extra: Vec<Box<dyn source::Source>> = Vec::new();
        let apps = AppMetrics::default();
        let systemd = Arc::new(settings.systemd(apps.bus())?);
        extra.push(Box::new(systemd.clone()));
        if let Some(t) = &textfile {
            extra.push(Box::new(t.clone()));
        }
        let node: Sources = node::sources(settings, extra)?;
        let agent = Arc::new(AgentCollector {
            state_dir,
            connected: Connected::default(),
            firewall_drift: Flag::default(),
            scrape_seconds: AtomicU64::new(0f64.to_bits()),
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(node));
        registry.register_collector(Box::new(agent.clone()));
        apps.register(&mut registry);
        let requests = Requests::default();
        requests.register(&mut registry);
        let metrics = Metrics {
            registry,
            agent,
            apps,
            requests,
            scrape: Mutex::new(()),
        };
        if let Some(t) = textfile {
            // One render without textfiles gives the names a textfile may not redefine.
            let page = metrics.render(Format::Text);
            let mut names = std::collections::BTreeSet::new();
            for (name, kind) in text::families(&page) {
                if kind == "histogram" || kind == "summary" {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{s}"));
                    }
                }
                names.insert(name);
            }
            let _ = t.reserved.set(names);
        }
        systemd.live.store(true, Ordering::Relaxed);
        Ok(metrics)
    }

    pub fn connected(&self) -> Connected {
        self.agent.connected.clone()
    }

    pub fn firewall_drift(&self) -> Flag {
        self.agent.firewall_drift.clone()
    }

    /// The handle the app manager reports through.
    pub fn apps(&self) -> AppMetrics {
        self.apps.clone()
    }

    /// The request counts the app manager feeds from access logs (`crate::requests`).
    pub fn requests(&self) -> Requests {
        self.requests.clone()
    }

    /// One scrape: the node collectors read the host (blocking I/O) while encoding.
    /// `fleet_agent_scrape_duration_seconds` is the previous scrape's time: this one's is
    /// only known once its page is written.
    pub fn render(&self, format: Format) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let start = Instant::now();
        let mut out = String::with_capacity(64 * 1024);
        // Writing into a String cannot fail, and every collector above only formats.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String");
        self.agent
            .scrape_seconds
            .store(start.elapsed().as_secs_f64().to_bits(), Ordering::Relaxed);
        match format {
            Format::OpenMetrics => out,
            Format::Text => text::to_prometheus_text(&out),
        }
    }
}

/// `(name, type)` of every metric family the agent exports, as named in the Prometheus
/// text format (counters with `_total`). Packaging tests check alert rules and dashboards
/// against this list, so it comes from the real registry rather than a copy.
pub fn exported_families() -> Vec<(String, String)> {
    text::families(&Metrics::new(None).render(Format::Text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_required_family_is_exported_with_its_type() {
        let families = exported_families();
        let get = |n: &str| {
            families
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, t)| t.as_str())
        };
        for (name, kind) in [
            ("node_cpu_seconds_total", "counter"),
            ("node_load1", "gauge"),
            ("node_load5", "gauge"),
            ("node_load15", "gauge"),
            ("node_memory_MemTotal_bytes", "gauge"),
            ("node_memory_MemAvailable_bytes", "gauge"),
            ("node_memory_MemFree_bytes", "gauge"),
            ("node_memory_Buffers_bytes", "gauge"),
            ("node_memory_Cached_bytes", "gauge"),
            ("node_memory_SwapTotal_bytes", "gauge"),
            ("node_memory_SwapFree_bytes", "gauge"),
            ("node_filesystem_size_bytes", "gauge"),
            ("node_filesystem_avail_bytes", "gauge"),
            ("node_filesystem_free_bytes", "gauge"),
            ("node_filesystem_files", "gauge"),
            ("node_filesystem_files_free", "gauge"),
            ("node_network_receive_bytes_total", "counter"),
            ("node_network_receive_packets_total", "counter"),
            ("node_network_receive_errs_total", "counter"),
            ("node_network_receive_drop_total", "counter"),
            ("node_network_transmit_bytes_total", "counter"),
            ("node_network_transmit_packets_total", "counter"),
            ("node_network_transmit_errs_total", "counter"),
            ("node_network_transmit_drop_total", "counter"),
            ("node_disk_read_bytes_total", "counter"),
            ("node_disk_written_bytes_total", "counter"),
            ("node_disk_io_time_seconds_total", "counter"),
            ("node_boot_time_seconds", "gauge"),
            ("node_time_seconds", "gauge"),
            ("node_uname_info", "gauge"),
            ("fleet_agent_build_info", "gauge"),
            ("fleet_agent_controller_connected", "gauge"),
            ("fleet_agent_certificate_expiry_timestamp_seconds", "gauge"),
            ("fleet_agent_scrape_duration_seconds", "gauge"),
            ("fleet_firewall_drift", "gauge"),
            ("fleet_app_up", "gauge"),
            ("fleet_app_healthy", "gauge"),
            ("fleet_app_release_info", "gauge"),
            ("fleet_app_restarts_total", "counter"),
            ("fleet_app_memory_bytes", "gauge"),
            ("fleet_app_cpu_seconds_total", "counter"),
            ("fleet_app_health_probe_duration_seconds", "histogram"),
            ("fleet_app_crash_loop", "gauge"),
            ("fleet_app_http_requests_total", "counter"),
            ("fleet_app_http_request_duration_seconds", "histogram"),
            ("fleet_app_access_log_unparsed_total", "counter"),
        ] {
            assert_eq!(get(name), Some(kind), "{name}");
        }
    }

    /// node-mixin's and dashboard 1860's main rows' names (agent/tests/fixtures), all on
    /// the page whatever the host has.
    #[test]
    fn every_node_exporter_name_of_the_checked_in_list_is_exported() {
        let list = include_str!("../../tests/fixtures/node_exporter_names.txt");
        let families = exported_families();
        let exported = |n: &str| families.iter().any(|(f, _)| f == n);
        let names: Vec<&str> = list
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(names.len() > 60, "the list is read: {}", names.len());
        let missing: Vec<&str> = names.iter().copied().filter(|n| !exported(n)).collect();
        assert!(missing.is_empty(), "not exported: {missing:?}");
    }

    /// As in `fleet-agent run`: built on an async task (its first, names-only render must
    /// not block on D-Bus there), scraped on a blocking thread as server.rs does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn built_on_an_async_task_and_scraped_on_a_blocking_thread() {
        let m = Arc::new(Metrics::new(None));
        let page = tokio::task::spawn_blocking(move || m.render(Format::Text))
            .await
            .unwrap();
        assert!(page.contains("# TYPE node_systemd_units gauge"), "{page}");
        assert!(page.contains("node_scrape_collector_success{collector=\"systemd\"}"));
    }

    #[test]
    fn the_page_is_one_family_per_name() {
        let families = exported_families();
        let mut names: Vec<&str> = families.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a family is described twice");
    }

    #[test]
    fn agent_metrics_follow_the_session_and_the_certificate() {
        let m = Metrics::new(Some(PathBuf::from("/nonexistent/fleet-agent-state")));
        let out = m.render(Format::Text);
        assert!(
            out.contains("fleet_agent_controller_connected 0.0\n"),
            "{out}"
        );
        assert!(out.contains(&format!(
            "fleet_agent_build_info{{version=\"{}\"}} 1.0\n",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(
            !out.contains("\nfleet_agent_certificate_expiry_timestamp_seconds "),
            "no certificate, no sample\n{out}"
        );
        m.connected().set(true);
        let out = m.render(Format::OpenMetrics);
        assert!(
            out.contains("fleet_agent_controller_connected 1.0\n"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"));
        let took: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("fleet_agent_scrape_duration_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(took > 0.0 && took < 5.0, "{took}");
    }
}
