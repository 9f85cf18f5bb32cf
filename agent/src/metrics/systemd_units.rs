//! `systemd` collector: unit states over the system bus connection the app manager
//! already holds (shared through [`Bus`]), as node_exporter's
//! `node_systemd_unit_state{name,state,type}`, `node_systemd_units{state}` and
//! `node_systemd_service_restart_total{name}`.
//!
//! node_exporter exports five state series for every unit (500–900 on a stock Debian
//! server). The default here, `bounded`, keeps what alerts need at a fraction of that:
//! all five states of fleet's own units (`fleet-*`), and for every other unit the
//! `failed` series while it is failed — node-mixin's `NodeSystemdServiceFailed`
//! (`node_systemd_unit_state{state="failed"} == 1`) fires and resolves exactly as with
//! node_exporter. `node_systemd_units{state}` counts every unit. Restart counts (off by
//! default in node_exporter) are exported for fleet's services, or all services with
//! `systemd_unit_states = "all"`, which also exports every state of every unit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};
use zbus::Connection;
use zbus::{OwnedObjectPath, OwnedVariant as OwnedValue};

use super::source::{fam, Collected, Filter, Outcome, Reader, Source};

/// node_exporter 1.5's (and Debian's) `--collector.systemd.unit-exclude`.
pub const DEFAULT_UNIT_EXCLUDE: &str = ".+\\.(automount|device|mount|scope|slice|target)";
pub const STATES: [&str; 5] = ["active", "activating", "deactivating", "inactive", "failed"];
/// A scrape waits this long for systemd at most; then the collector fails this scrape.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on the unit-type cache (a unit's service Type only changes on daemon-reload).
const MAX_CACHED: usize = 8192;

/// The system bus connection, set by whoever connects first (the app manager).
#[derive(Clone, Debug, Default)]
pub struct Bus(Arc<OnceLock<Connection>>);

impl Bus {
    pub fn set(&self, conn: &Connection) {
        let _ = self.0.set(conn.clone());
    }

    /// The shared connection, or (no app manager connected yet, e.g. a host without apps)
    /// one of the collector's own, kept for the next scrapes.
    async fn get(&self) -> zbus::Result<Connection> {
        if let Some(c) = self.0.get() {
            return Ok(c.clone());
        }
        let c = Connection::system().await?;
        Ok(self.0.get_or_init(|| c).clone())
    }
}

/// One row of ListUnits, the fields used.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub name: String,
    pub load_state: String,
    pub active_state: String,
    pub path: String,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// What one scrape learned from systemd.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub units: Vec<Unit>,
    /// Service Type per unit name, for the units whose state series are exported.
    pub types: Vec<(String, String)>,
    pub restarts: Vec<(String, f64)>,
}

pub fn is_fleet(name: &str) -> bool {
    name.starts_with("fleet-")
}

/// How many `node_systemd_unit_state` series the systemd collector exports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemdUnitStates {
    /// All five states of fleet's own units, `failed` of every other unit: node-mixin's
    /// failed-unit alert works at a fraction of the series.
    #[default]
    Bounded,
    /// All five states of every unit, as node_exporter does (5 series per unit).
    All,
}

/// Which units get which state series.
pub fn exported_states(u: &Unit, mode: SystemdUnitStates) -> &'static [&'static str] {
    if mode == SystemdUnitStates::All || is_fleet(&u.name) {
        &STATES
    } else if u.active_state == "failed" {
        &STATES[4..]
    } else {
        &[]
    }
}

#[derive(Debug)]
pub struct Systemd {
    pub bus: Bus,
    pub mode: SystemdUnitStates,
    pub units: Filter,
    types: Mutex<HashMap<String, String>>,
    /// Off for the registry's first render (names only), which runs on an async task
    /// where blocking on D-Bus would panic; on from then on, for scrapes, which run on
    /// blocking threads.
    pub live: AtomicBool,
}

impl Systemd {
    pub fn new(bus: Bus, mode: SystemdUnitStates, units: Filter) -> Systemd {
        Systemd {
            bus,
            mode,
            units,
            types: Mutex::new(HashMap::new()),
            live: AtomicBool::new(false),
        }
    }

    async fn property(
        conn: &Connection,
        path: &str,
        iface: &str,
        prop: &str,
    ) -> zbus::Result<OwnedValue> {
        let reply = conn
            .call_method(
                Some("org.freedesktop.systemd1"),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(iface, prop),
            )
            .await?;
        let v: OwnedValue = reply.body().deserialize()?;
        Ok(v)
    }

    async fn snapshot(&self, conn: &Connection) -> zbus::Result<Snapshot> {
        let reply = conn
            .call_method(
                Some("org.freedesktop.systemd1"),
                "/org/freedesktop/systemd1",
                Some("org.freedesktop.systemd1.Manager"),
                "ListUnits",
                &(),
            )
            .await?;
        let rows: Vec<Row> = reply.body().deserialize()?;
        let mut snap = Snapshot {
            units: rows
                .into_iter()
                .map(|r| Unit {
                    name: r.0,
                    load_state: r.2,
                    active_state: r.3,
                    path: r.6.to_string(),
                })
                .collect(),
            ..Snapshot::default()
        };
        snap.units.sort_by(|a, b| a.name.cmp(&b.name));
        let cached: Vec<(String, Option<String>)> = {
            let types = self.types.lock().unwrap_or_else(|p| p.into_inner());
            self.selected(&snap.units)
                .filter(|u| !exported_states(u, self.mode).is_empty())
                .map(|u| (u.name.clone(), types.get(&u.name).cloned()))
                .collect()
        };
        for (name, known) in cached {
            let t = match known {
                Some(t) => t,
                None if name.ends_with(".service") => {
                    let path = &snap
                        .units
                        .iter()
                        .find(|u| u.name == name)
                        .expect("listed")
                        .path;
                    let t = Self::property(conn, path, "org.freedesktop.systemd1.Service", "Type")
                        .await
                        .ok()
                        .and_then(|v| String::try_from(v).ok())
                        .unwrap_or_default();
                    let mut types = self.types.lock().unwrap_or_else(|p| p.into_inner());
                    if types.len() < MAX_CACHED {
                        types.insert(name.clone(), t.clone());
                    }
                    t
                }
                None => String::new(),
            };
            snap.types.push((name, t));
        }
        let wanted: Vec<(String, String)> = self
            .selected(&snap.units)
            .filter(|u| u.name.ends_with(".service"))
            .filter(|u| self.mode == SystemdUnitStates::All || is_fleet(&u.name))
            .map(|u| (u.name.clone(), u.path.clone()))
            .collect();
        for (name, path) in wanted {
            if let Ok(v) =
                Self::property(conn, &path, "org.freedesktop.systemd1.Service", "NRestarts").await
            {
                if let Ok(n) = u32::try_from(v) {
                    snap.restarts.push((name, n as f64));
                }
            }
        }
        Ok(snap)
    }

    fn selected<'a>(&'a self, units: &'a [Unit]) -> impl Iterator<Item = &'a Unit> + 'a {
        units
            .iter()
            .filter(|u| u.load_state == "loaded" && self.units.keep(&u.name))
    }
}

pub fn encode(enc: &mut DescriptorEncoder, snap: &Snapshot, sys: &Systemd) -> std::fmt::Result {
    let mut f = fam(enc, "node_systemd_unit_state", "Systemd unit", None, Gauge)?;
    for u in sys.selected(&snap.units) {
        let t = snap
            .types
            .iter()
            .find(|(n, _)| *n == u.name)
            .map(|(_, t)| t.as_str())
            .unwrap_or("");
        for state in exported_states(u, sys.mode) {
            let v = if u.active_state == *state { 1.0 } else { 0.0 };
            f.sample(
                &[("name", u.name.as_str()), ("state", state), ("type", t)],
                v,
            )?;
        }
    }
    let mut f = fam(
        enc,
        "node_systemd_units",
        "Summary of systemd unit states",
        None,
        Gauge,
    )?;
    for state in STATES {
        let n = snap
            .units
            .iter()
            .filter(|u| u.active_state == state)
            .count();
        f.sample(&[("state", state)], n as f64)?;
    }
    let mut f = fam(
        enc,
        "node_systemd_service_restart",
        "Service unit count of Restart triggers",
        None,
        Counter,
    )?;
    for (name, n) in &snap.restarts {
        f.sample(&[("name", name.as_str())], *n)?;
    }
    Ok(())
}

impl Source for Systemd {
    fn name(&self) -> &'static str {
        "systemd"
    }

    fn collect(&self, _io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        // Scrapes run on a blocking thread of the agent's runtime (server.rs); outside one
        // (the exported-families check) there is no bus and nothing to read.
        let got = match tokio::runtime::Handle::try_current() {
            Ok(rt) if self.live.load(Ordering::Relaxed) => rt.block_on(async {
                tokio::time::timeout(TIMEOUT, async {
                    let conn = self.bus.get().await?;
                    self.snapshot(&conn).await
                })
                .await
            }),
            _ => Ok(Err(zbus::Error::Failure(
                "not scraping yet, or no async runtime".into(),
            ))),
        };
        let snap = match got {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "systemd collector: cannot list units");
                None
            }
            Err(_) => {
                tracing::debug!("systemd collector: systemd did not answer within {TIMEOUT:?}");
                None
            }
        };
        encode(enc, snap.as_ref().unwrap_or(&Snapshot::default()), self)?;
        Ok(Outcome::from_ok(snap.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::has;

    fn unit(name: &str, state: &str) -> Unit {
        Unit {
            name: name.into(),
            load_state: "loaded".into(),
            active_state: state.into(),
            path: String::new(),
        }
    }

    fn page(mode: SystemdUnitStates) -> String {
        let sys = Systemd::new(Bus::default(), mode, Filter::exclude(DEFAULT_UNIT_EXCLUDE));
        let snap = Snapshot {
            units: vec![
                unit("cron.service", "active"),
                unit("fleet-app-shop.service", "activating"),
                unit("broken.service", "failed"),
                unit("-.mount", "active"),
                Unit {
                    load_state: "not-found".into(),
                    ..unit("gone.service", "inactive")
                },
            ],
            types: vec![
                ("fleet-app-shop.service".into(), "notify".into()),
                ("broken.service".into(), "simple".into()),
            ],
            restarts: vec![("fleet-app-shop.service".into(), 4.0)],
        };
        #[derive(Debug)]
        struct One(Systemd, Snapshot);
        impl prometheus_client::collector::Collector for One {
            fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
                encode(&mut enc, &self.1, &self.0)
            }
        }
        let mut r = prometheus_client::registry::Registry::default();
        r.register_collector(Box::new(One(sys, snap)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn bounded_keeps_fleet_units_and_failed_ones() {
        let p = page(SystemdUnitStates::Bounded);
        for l in [
            "node_systemd_unit_state{name=\"fleet-app-shop.service\",state=\"activating\",type=\"notify\"} 1.0",
            "node_systemd_unit_state{name=\"fleet-app-shop.service\",state=\"failed\",type=\"notify\"} 0.0",
            "node_systemd_unit_state{name=\"broken.service\",state=\"failed\",type=\"simple\"} 1.0",
            "node_systemd_units{state=\"active\"} 2.0",
            "node_systemd_units{state=\"failed\"} 1.0",
            "node_systemd_units{state=\"inactive\"} 1.0",
            "node_systemd_service_restart_total{name=\"fleet-app-shop.service\"} 4.0",
        ] {
            assert!(has(&p, l), "{l} in\n{p}");
        }
        assert!(!p.contains("name=\"cron.service\""), "{p}");
        assert!(!p.contains("broken.service\",state=\"active\""));
        assert!(!p.contains("-.mount") && !p.contains("gone.service"));
    }

    #[test]
    fn all_exports_every_state_of_every_selected_unit() {
        let p = page(SystemdUnitStates::All);
        assert!(
            has(
                &p,
                "node_systemd_unit_state{name=\"cron.service\",state=\"active\",type=\"\"} 1.0"
            ),
            "{p}"
        );
        assert_eq!(p.matches("name=\"cron.service\"").count(), 5);
        assert!(!p.contains("-.mount"));
    }

    #[test]
    fn without_a_bus_the_collector_fails_but_describes() {
        let fx = crate::metrics::source::Fixture::new(&[]);
        let sys = Systemd::new(
            Bus::default(),
            SystemdUnitStates::Bounded,
            Filter::default(),
        );
        let p = crate::metrics::source::render(sys, fx.path(), fx.path());
        assert!(p.contains("# TYPE node_systemd_unit_state gauge"));
        assert!(p.contains("# TYPE node_systemd_service_restart counter"));
        assert!(has(
            &p,
            "node_scrape_collector_success{collector=\"systemd\"} 0.0"
        ));
    }
}
