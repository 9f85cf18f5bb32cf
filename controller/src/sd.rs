//! Prometheus HTTP service discovery (`GET /v1/sd/prometheus`, the `http_sd_configs`
//! format): one target per enrolled host whose agent reported a metrics port, at the
//! address the controller last saw it connect from. Down hosts stay listed, so Prometheus
//! shows them as `up == 0` instead of forgetting them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::store::HostRecord;

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<&'static str, String>,
}

/// `apps`: the apps each host last reported running (host name → app names).
pub fn targets(
    hosts: &[HostRecord],
    apps: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<TargetGroup> {
    hosts
        .iter()
        .filter_map(|h| {
            let port = u16::try_from(h.metrics_port).ok().filter(|p| *p != 0)?;
            // The recorded address is an IP (the peer address of the stream); formatting
            // through SocketAddr brackets IPv6 as Prometheus expects.
            let ip: IpAddr = h.address.parse().ok()?;
            let labels = BTreeMap::from([
                ("host", h.name.clone()),
                ("group", group_label(h)),
                ("apps", apps_label(apps.get(&h.name))),
            ]);
            Some(TargetGroup {
                targets: vec![SocketAddr::new(ip, port).to_string()],
                labels,
            })
        })
        .collect()
}

fn group_label(host: &HostRecord) -> String {
    host.group.clone()
}

/// The apps on the host, comma-separated with a comma at both ends (",blog,shop,",
/// Prometheus' convention for list labels, so `=~".*,shop,.*"` matches one app); empty
/// when the host runs none.
fn apps_label(apps: Option<&BTreeSet<String>>) -> String {
    match apps {
        Some(apps) if !apps.is_empty() => {
            let joined: Vec<&str> = apps.iter().map(String::as_str).collect();
            format!(",{},", joined.join(","))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, address: &str, metrics_port: u32) -> HostRecord {
        HostRecord {
            name: name.into(),
            enrolled_at_ms: 1,
            address: address.into(),
            last_seen_ms: 0,
            version: String::new(),
            package_version: String::new(),
            hostname: String::new(),
            os: String::new(),
            kernel: String::new(),
            cores: 0,
            memory_bytes: 0,
            serials: vec![],
            cert_expires: 0,
            metrics_port,
            group: if name == "web-1" {
                "web".into()
            } else {
                String::new()
            },
        }
    }

    #[test]
    fn one_target_per_host_with_a_metrics_port() {
        let apps = BTreeMap::from([
            (
                "web-1".to_owned(),
                BTreeSet::from(["shop".to_owned(), "blog".to_owned()]),
            ),
            ("web-2".to_owned(), BTreeSet::new()),
        ]);
        let groups = targets(
            &[
                host("web-1", "10.0.0.5", 9437),
                host("web-2", "fd00::7", 9500),
                host("off", "10.0.0.6", 0),
                host("never-connected", "", 9437),
            ],
            &apps,
        );
        let json = serde_json::to_value(&groups).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"targets": ["10.0.0.5:9437"], "labels": {"apps": ",blog,shop,", "group": "web", "host": "web-1"}},
                {"targets": ["[fd00::7]:9500"], "labels": {"apps": "", "group": "", "host": "web-2"}},
            ])
        );
        assert_eq!(
            serde_json::to_string(&targets(&[], &BTreeMap::new())).unwrap(),
            "[]"
        );
    }
}
