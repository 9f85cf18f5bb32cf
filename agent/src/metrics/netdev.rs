//! `netdev` collector: the 16 counters of /proc/net/dev per interface, as
//! `node_network_{receive,transmit}_<field>_total`. Debian's default excludes `lo`.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::Counter;

use super::source::{fam, Collected, Filter, Outcome, Reader, Source};

/// Debian's (and upstream's) `--collector.netdev.device-exclude`.
pub const DEFAULT_DEVICE_EXCLUDE: &str = "^lo$";

const FIELDS: [&str; 16] = [
    "receive_bytes",
    "receive_packets",
    "receive_errs",
    "receive_drop",
    "receive_fifo",
    "receive_frame",
    "receive_compressed",
    "receive_multicast",
    "transmit_bytes",
    "transmit_packets",
    "transmit_errs",
    "transmit_drop",
    "transmit_fifo",
    "transmit_colls",
    "transmit_carrier",
    "transmit_compressed",
];

#[derive(Debug)]
pub struct Netdev {
    pub devices: Filter,
}

impl Default for Netdev {
    fn default() -> Self {
        Netdev {
            devices: Filter::exclude(DEFAULT_DEVICE_EXCLUDE),
        }
    }
}

/// `name: 16 numbers` lines; the two header lines and malformed ones are skipped.
pub fn parse(text: &str) -> impl Iterator<Item = (&str, [u64; 16])> {
    text.lines().filter_map(|line| {
        let (name, rest) = line.split_once(':')?;
        let mut v = [0u64; 16];
        let mut n = 0;
        for (slot, x) in v.iter_mut().zip(rest.split_whitespace()) {
            *slot = x.parse().ok()?;
            n += 1;
        }
        (n == 16).then_some((name.trim(), v))
    })
}

impl Source for Netdev {
    fn name(&self) -> &'static str {
        "netdev"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let text = io.proc("net/dev");
        let ok = text.is_ok();
        let text = text.unwrap_or_default();
        let mut name = String::with_capacity(64);
        let mut help = String::with_capacity(64);
        for (i, field) in FIELDS.iter().enumerate() {
            name.clear();
            name.push_str("node_network_");
            name.push_str(field);
            help.clear();
            help.push_str("Network device statistic ");
            help.push_str(field);
            help.push('.');
            let mut f = fam(enc, &name, &help, None, Counter)?;
            for (dev, v) in parse(text).filter(|(d, _)| self.devices.keep(d)) {
                f.sample(&[("device", dev)], v[i] as f64)?;
            }
        }
        Ok(Outcome::from_ok(ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 5035217   27569    0    0    0     0          0         0  5035217   27569    0    0    0     0       0          0
  eth0: 98765432  123456    2    5    1     2          3        17 4321098   54321    1    3    4     5       6          7
  bad0: 1 2 3
  big0: 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
";

    #[test]
    fn all_counters_lo_excluded() {
        let fx = Fixture::new(&[("net/dev", NET_DEV)]);
        let page = render(Netdev::default(), fx.path(), fx.path());
        for l in [
            "node_network_receive_bytes_total{device=\"eth0\"} 98765432.0",
            "node_network_receive_multicast_total{device=\"eth0\"} 17.0",
            "node_network_transmit_colls_total{device=\"eth0\"} 5.0",
            "node_network_transmit_compressed_total{device=\"eth0\"} 7.0",
            "node_network_receive_bytes_total{device=\"big0\"} 18446744073709553000.0",
        ] {
            assert!(has(&page, l), "{l} in\n{page}");
        }
        assert!(!page.contains("device=\"lo\""));
        assert!(!page.contains("bad0"));
    }

    #[test]
    fn include_lo_when_asked_and_missing_file() {
        let fx = Fixture::new(&[("net/dev", NET_DEV)]);
        let page = render(
            Netdev {
                devices: Filter::default(),
            },
            fx.path(),
            fx.path(),
        );
        assert!(page.contains("device=\"lo\""));
        let empty = Fixture::new(&[]);
        let page = render(Netdev::default(), empty.path(), empty.path());
        assert!(page.contains("# TYPE node_network_receive_bytes counter"));
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"netdev\"} 0.0"
        ));
    }
}
