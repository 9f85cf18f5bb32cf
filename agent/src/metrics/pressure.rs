//! `pressure` collector: pressure stall information (/proc/pressure, Linux 4.20+), the
//! cumulative `total=` microseconds as node_exporter's `*_seconds_total` counters.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::Counter;

use super::source::{one, Collected, Outcome, Reader, Source, SECONDS};

#[derive(Debug)]
pub struct Pressure;

/// `total=` of the `some` or `full` line, in seconds.
pub fn total(text: &str, kind: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(kind))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse::<u64>()
        .ok()
        .map(|us| us as f64 / 1e6)
}

/// (family, help, file, line).
const SERIES: [(&str, &str, &str, &str); 7] = [
    (
        "node_pressure_cpu_waiting",
        "Total time in seconds that processes have waited for CPU time",
        "cpu",
        "some",
    ),
    (
        "node_pressure_io_waiting",
        "Total time in seconds that processes have waited due to IO congestion",
        "io",
        "some",
    ),
    (
        "node_pressure_io_stalled",
        "Total time in seconds no process could make progress due to IO congestion",
        "io",
        "full",
    ),
    (
        "node_pressure_memory_waiting",
        "Total time in seconds that processes have waited for memory",
        "memory",
        "some",
    ),
    (
        "node_pressure_memory_stalled",
        "Total time in seconds no process could make progress due to memory congestion",
        "memory",
        "full",
    ),
    (
        "node_pressure_irq_stalled",
        "Total time in seconds no process could make progress due to IRQ congestion",
        "irq",
        "full",
    ),
    // Kept last: dashboard 1860 does not use it, but node_exporter 1.8+ exports it.
    (
        "node_pressure_cpu_stalled",
        "Total time in seconds no process could make progress due to CPU congestion",
        "cpu",
        "full",
    ),
];

impl Source for Pressure {
    fn name(&self) -> &'static str {
        "pressure"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let mut any = false;
        let mut path = String::with_capacity(32);
        for (name, help, file, kind) in SERIES {
            path.clear();
            path.push_str("pressure/");
            path.push_str(file);
            let v = io.proc(&path).ok().and_then(|t| total(t, kind));
            any |= v.is_some();
            one(enc, name, help, SECONDS, Counter, v)?;
        }
        Ok(Outcome::from_ok(any))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    #[test]
    fn totals_in_seconds() {
        let fx = Fixture::new(&[
            ("pressure/cpu", "some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
            ("pressure/io", "some avg10=1.00 avg60=0.50 avg300=0.10 total=2500\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=18446744073709551615\n"),
            ("pressure/memory", "garbage\n"),
        ]);
        let page = render(Pressure, fx.path(), fx.path());
        for l in [
            "node_pressure_cpu_waiting_seconds_total 1.5",
            "node_pressure_io_waiting_seconds_total 0.0025",
            "node_pressure_io_stalled_seconds_total 18446744073709.55",
            "node_scrape_collector_success{collector=\"pressure\"} 1.0",
        ] {
            assert!(has(&page, l), "{l} in\n{page}");
        }
        // Malformed and missing files: described, no sample.
        assert!(page.contains("# TYPE node_pressure_memory_waiting_seconds counter"));
        assert!(!page.contains("\nnode_pressure_memory_waiting_seconds_total"));
        assert!(!page.contains("\nnode_pressure_irq_stalled_seconds_total"));
    }

    #[test]
    fn no_psi_kernel() {
        let fx = Fixture::new(&[]);
        let page = render(Pressure, fx.path(), fx.path());
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"pressure\"} 0.0"
        ));
    }
}
