//! Prometheus HTTP service discovery (`GET /v1/sd/prometheus`, the `http_sd_configs`
//! format): one target per enrolled host whose agent reported a metrics port, at the
//! address the controller last saw it connect from. Down hosts stay listed, so Prometheus
//! shows them as `up == 0` instead of forgetting them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::store::HostRecord;

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<&'static str, String>,
}

pub fn targets(hosts: &[HostRecord]) -> Vec<TargetGroup> {
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
                ("apps", apps_label(h)),
            ]);
            Some(TargetGroup {
                targets: vec![SocketAddr::new(ip, port).to_string()],
                labels,
            })
        })
        .collect()
}

/// Extension point: hosts have no groups yet; fill this in when they do.
fn group_label(_host: &HostRecord) -> String {
    String::new()
}

/// Extension point: the apps placed on the host, comma-separated with a comma at both
/// ends (",shop,blog,", Prometheus' convention for list labels, so `=~".*,shop,.*"`
/// matches one app). Empty until the controller tracks app placement.
fn apps_label(_host: &HostRecord) -> String {
    String::new()
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
            hostname: String::new(),
            os: String::new(),
            kernel: String::new(),
            cores: 0,
            memory_bytes: 0,
            serials: vec![],
            cert_expires: 0,
            metrics_port,
        }
    }

    #[test]
    fn one_target_per_host_with_a_metrics_port() {
        let groups = targets(&[
            host("web-1", "10.0.0.5", 9437),
            host("web-2", "fd00::7", 9500),
            host("off", "10.0.0.6", 0),
            host("never-connected", "", 9437),
        ]);
        let json = serde_json::to_value(&groups).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"targets": ["10.0.0.5:9437"], "labels": {"apps": "", "group": "", "host": "web-1"}},
                {"targets": ["[fd00::7]:9500"], "labels": {"apps": "", "group": "", "host": "web-2"}},
            ])
        );
        assert_eq!(serde_json::to_string(&targets(&[])).unwrap(), "[]");
    }
}
