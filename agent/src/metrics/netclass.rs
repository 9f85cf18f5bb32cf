//! `netclass` collector: per-interface attributes from /sys/class/net (operstate,
//! carrier, link speed, MTU, ...), named as node_exporter's `node_network_*` gauges.
//! An attribute the kernel refuses to read (speed of a virtual device, carrier of a
//! down link) is left out for that device, as node_exporter does.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{self, Counter, Gauge};
use prometheus_client::registry::Unit;

use super::source::{fam, Collected, Filter, Outcome, Reader, Source, BYTES};

/// Debian's (and upstream's) `--collector.netclass.ignored-devices`: none.
pub const DEFAULT_IGNORED_DEVICES: &str = "^$";
/// A bound on the interfaces reported (a host with thousands of veths).
pub const MAX_DEVICES: usize = 512;

#[derive(Debug)]
pub struct Netclass {
    pub devices: Filter,
}

impl Default for Netclass {
    fn default() -> Self {
        Netclass {
            devices: Filter::exclude(DEFAULT_IGNORED_DEVICES),
        }
    }
}

/// (name, help, sysfs attribute, unit, type, scale).
type Attr = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static Unit>,
    MetricType,
    f64,
);
const ATTRS: [Attr; 14] = [
    (
        "node_network_address_assign_type",
        "address_assign_type value of /sys/class/net/<iface>.",
        "addr_assign_type",
        None,
        Gauge,
        1.0,
    ),
    (
        "node_network_carrier",
        "carrier value of /sys/class/net/<iface>.",
        "carrier",
        None,
        Gauge,
        1.0,
    ),
    (
        "node_network_carrier_changes",
        "carrier_changes_total value of /sys/class/net/<iface>.",
        "carrier_changes",
        None,
        Counter,
        1.0,
    ),
    (
        "node_network_carrier_up_changes",
        "carrier_up_changes_total value of /sys/class/net/<iface>.",
        "carrier_up_count",
        None,
        Counter,
        1.0,
    ),
    (
        "node_network_carrier_down_changes",
        "carrier_down_changes_total value of /sys/class/net/<iface>.",
        "carrier_down_count",
        None,
        Counter,
        1.0,
    ),
    (
        "node_network_device_id",
        "device_id value of /sys/class/net/<iface>.",
        "dev_id",
        None,
        Gauge,
        1.0,
    ),
    (
        "node_network_dormant",
        "dormant value of /sys/class/net/<iface>.",
        "dormant",
        None,
        Gauge,
        1.0,
    ),
    (
        "node_network_flags",
        "flags value of /sys/class/net/<iface>.",
        "flags",
        None,
        Gauge,
        1.0,
    ),
    (
        "node_network_iface_id",
        "iface_id value of /sys/class/net/<iface>.",
        "ifindex",
        None,
        Gauge,
        1.0,
    ),
    (
        "node_network_iface_link",
        "iface_link value of /sys/class/net/<iface>.",
        "iflink",
        None,
        Gauge,
        1.0,
    ),
    (
        "node_network_iface_link_mode",
        "iface_link_mode value of /sys/class/net/<iface>.",
        "link_mode",
        None,
        Gauge,
        1.0,
    ),
    (
        "node_network_mtu",
        "mtu_bytes value of /sys/class/net/<iface>.",
        "mtu",
        BYTES,
        Gauge,
        1.0,
    ),
    (
        "node_network_protocol_type",
        "protocol_type value of /sys/class/net/<iface>.",
        "type",
        None,
        Gauge,
        1.0,
    ),
    (
        "node_network_transmit_queue_length",
        "transmit_queue_length value of /sys/class/net/<iface>.",
        "tx_queue_len",
        None,
        Gauge,
        1.0,
    ),
];

/// A sysfs number: decimal, or hex with 0x (`flags`); `None` when unreadable.
fn number(text: &str) -> Option<f64> {
    let t = text.trim();
    match t.strip_prefix("0x") {
        Some(h) => i64::from_str_radix(h, 16).ok().map(|v| v as f64),
        None => t.parse::<i64>().ok().map(|v| v as f64),
    }
}

impl Netclass {
    fn devices(&self, io: &mut Reader) -> Option<Vec<String>> {
        let dir = io.sys.join("class/net");
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| self.devices.keep(n))
            .collect();
        out.sort();
        out.truncate(MAX_DEVICES);
        Some(out)
    }
}

impl Source for Netclass {
    fn name(&self) -> &'static str {
        "netclass"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let devices = self.devices(io);
        let ok = devices.is_some();
        let devices = devices.unwrap_or_default();
        let mut rel = String::with_capacity(96);
        let mut attr = |io: &mut Reader, dev: &str, a: &str| {
            rel.clear();
            rel.push_str("class/net/");
            rel.push_str(dev);
            rel.push('/');
            rel.push_str(a);
            io.sys(&rel).ok().and_then(number)
        };
        for (name, help, file, unit, kind, scale) in ATTRS {
            let mut f = fam(enc, name, help, unit, kind)?;
            for dev in &devices {
                if let Some(v) = attr(io, dev, file) {
                    f.sample(&[("device", dev.as_str())], v * scale)?;
                }
            }
        }
        // Mbit/s to bytes/s. A device reporting -1 (unknown link speed) shows -125000, as
        // in node_exporter without --collector.netclass.ignore-invalid-speed.
        let mut f = fam(
            enc,
            "node_network_speed",
            "speed_bytes value of /sys/class/net/<iface>.",
            BYTES,
            Gauge,
        )?;
        for dev in &devices {
            if let Some(v) = attr(io, dev, "speed") {
                f.sample(&[("device", dev.as_str())], v * 125_000.0)?;
            }
        }
        let (mut address, mut broadcast, mut duplex, mut ifalias, mut operstate) = (
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        );
        let mut up = Vec::with_capacity(devices.len());
        let mut f = fam(
            enc,
            "node_network_info",
            "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
            None,
            Gauge,
        )?;
        for dev in &devices {
            let base = format!("class/net/{dev}/");
            io.sys_value(&(base.clone() + "address"), &mut address);
            io.sys_value(&(base.clone() + "broadcast"), &mut broadcast);
            io.sys_value(&(base.clone() + "duplex"), &mut duplex);
            io.sys_value(&(base.clone() + "ifalias"), &mut ifalias);
            io.sys_value(&(base + "operstate"), &mut operstate);
            up.push(operstate == "up");
            f.sample(
                &[
                    ("address", address.as_str()),
                    ("broadcast", broadcast.as_str()),
                    ("device", dev.as_str()),
                    ("duplex", duplex.as_str()),
                    ("ifalias", ifalias.as_str()),
                    ("operstate", operstate.as_str()),
                ],
                1.0,
            )?;
        }
        let mut f = fam(
            enc,
            "node_network_up",
            "Value is 1 if operstate is 'up', 0 otherwise.",
            None,
            Gauge,
        )?;
        for (dev, up) in devices.iter().zip(up) {
            f.sample(&[("device", dev.as_str())], if up { 1.0 } else { 0.0 })?;
        }
        Ok(Outcome::from_ok(ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    #[test]
    fn attributes_of_each_device() {
        let fx = Fixture::new(&[
            ("class/net/eth0/operstate", "up\n"),
            ("class/net/eth0/carrier", "1\n"),
            ("class/net/eth0/speed", "1000\n"),
            ("class/net/eth0/mtu", "1500\n"),
            ("class/net/eth0/flags", "0x1003\n"),
            ("class/net/eth0/address", "52:54:00:12:34:56\n"),
            ("class/net/eth0/carrier_changes", "18446744073709551615\n"),
            ("class/net/veth1/operstate", "lowerlayerdown\n"),
            ("class/net/veth1/speed", "-1\n"),
            ("class/net/veth1/carrier", "garbage\n"),
        ]);
        let page = render(Netclass::default(), fx.path(), fx.path());
        for l in [
            "node_network_up{device=\"eth0\"} 1.0",
            "node_network_up{device=\"veth1\"} 0.0",
            "node_network_carrier{device=\"eth0\"} 1.0",
            "node_network_speed_bytes{device=\"eth0\"} 125000000.0",
            "node_network_mtu_bytes{device=\"eth0\"} 1500.0",
            "node_network_flags{device=\"eth0\"} 4099.0",
            "node_network_info{address=\"52:54:00:12:34:56\",broadcast=\"\",device=\"eth0\",duplex=\"\",ifalias=\"\",operstate=\"up\"} 1.0",
        ] {
            assert!(has(&page, l), "{l} in\n{page}");
        }
        assert!(has(
            &page,
            "node_network_speed_bytes{device=\"veth1\"} -125000.0"
        ));
        assert!(!page.contains("node_network_carrier{device=\"veth1\"}"));
        // Out of i64 range: left out rather than wrapped.
        assert!(!page.contains("node_network_carrier_changes_total{device=\"eth0\"}"));
    }

    #[test]
    fn no_sysfs() {
        let fx = Fixture::new(&[]);
        let page = render(Netclass::default(), fx.path(), fx.path());
        assert!(page.contains("# TYPE node_network_speed_bytes gauge"));
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"netclass\"} 0.0"
        ));
    }
}
