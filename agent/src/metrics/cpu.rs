//! `cpu` and `stat` collectors, both from /proc/stat: per-CPU seconds by mode (and guest
//! time, which the kernel also counts in user/nice), boot time, context switches, forks,
//! interrupts and runnable/blocked processes.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};

use super::procfs::{CPU_MODES, USER_HZ};
use super::source::{fam, one, Collected, Outcome, Reader, Source, SECONDS};

#[derive(Debug)]
pub struct Cpu;

/// The per-CPU lines of /proc/stat: the CPU number and its columns, parsed as ticks.
fn cpu_lines(text: &str) -> impl Iterator<Item = (&str, [u64; 10])> {
    text.lines().filter_map(|line| {
        let mut f = line.split_whitespace();
        let n = f.next()?.strip_prefix("cpu")?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Older kernels have fewer columns; missing (or garbled) ones stay 0 as in
        // node_exporter.
        let mut cols = [0u64; 10];
        for (slot, v) in cols.iter_mut().zip(f) {
            *slot = v.parse().unwrap_or(0);
        }
        Some((n, cols))
    })
}

impl Source for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let text = io.proc("stat").unwrap_or_default();
        let mut f = fam(
            enc,
            "node_cpu",
            "Seconds the CPUs spent in each mode.",
            SECONDS,
            Counter,
        )?;
        let mut any = false;
        for (cpu, cols) in cpu_lines(text) {
            any = true;
            for (mode, v) in CPU_MODES.iter().zip(cols) {
                f.sample(&[("cpu", cpu), ("mode", mode)], v as f64 / USER_HZ)?;
            }
        }
        let mut f = fam(
            enc,
            "node_cpu_guest",
            "Seconds the CPUs spent in guests (VMs) for each mode.",
            SECONDS,
            Counter,
        )?;
        for (cpu, cols) in cpu_lines(text) {
            f.sample(&[("cpu", cpu), ("mode", "user")], cols[8] as f64 / USER_HZ)?;
            f.sample(&[("cpu", cpu), ("mode", "nice")], cols[9] as f64 / USER_HZ)?;
        }
        Ok(Outcome::from_ok(any))
    }
}

#[derive(Debug)]
pub struct Stat;

/// The first value of the /proc/stat line starting with `key `.
fn stat_value(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == key).then_some(())?;
        f.next()?.parse::<u64>().ok().map(|v| v as f64)
    })
}

impl Source for Stat {
    fn name(&self) -> &'static str {
        "stat"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let text = io.proc("stat").unwrap_or_default();
        let v = |k| stat_value(text, k);
        one(
            enc,
            "node_boot_time",
            "Node boot time, in unixtime.",
            SECONDS,
            Gauge,
            v("btime"),
        )?;
        one(
            enc,
            "node_context_switches",
            "Total number of context switches.",
            None,
            Counter,
            v("ctxt"),
        )?;
        one(
            enc,
            "node_forks",
            "Total number of forks.",
            None,
            Counter,
            v("processes"),
        )?;
        one(
            enc,
            "node_intr",
            "Total number of interrupts serviced.",
            None,
            Counter,
            v("intr"),
        )?;
        one(
            enc,
            "node_procs_running",
            "Number of processes in runnable state.",
            None,
            Gauge,
            v("procs_running"),
        )?;
        one(
            enc,
            "node_procs_blocked",
            "Number of processes blocked waiting for I/O to complete.",
            None,
            Gauge,
            v("procs_blocked"),
        )?;
        Ok(Outcome::from_ok(v("btime").is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    const STAT: &str = "\
cpu  180105 0 40822 238352 2976 0 612 116 0 0
cpu0 87532 0 19367 123553 816 0 79 55 300 2
cpu1 92573 3 21455 114798 2160 1 532 60
cpux 1 2 3
cpu2 18446744073709551615 garbage
intr 1234 0 0
ctxt 98765
btime 1767225600
processes 5102
procs_running 3
procs_blocked 1
";

    #[test]
    fn cpu_seconds_and_guest_time_per_cpu() {
        let fx = Fixture::new(&[("stat", STAT)]);
        let page = render(Cpu, fx.path(), fx.path());
        for l in [
            "node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 875.32",
            "node_cpu_seconds_total{cpu=\"1\",mode=\"steal\"} 0.6",
            "node_cpu_guest_seconds_total{cpu=\"0\",mode=\"user\"} 3.0",
            "node_cpu_guest_seconds_total{cpu=\"0\",mode=\"nice\"} 0.02",
            // An old kernel's short line: no guest columns, 0 as node_exporter reports.
            "node_cpu_guest_seconds_total{cpu=\"1\",mode=\"user\"} 0.0",
            // A huge value is kept, a garbled one reads 0.
            "node_cpu_seconds_total{cpu=\"2\",mode=\"user\"} 184467440737095530.0",
            "node_cpu_seconds_total{cpu=\"2\",mode=\"nice\"} 0.0",
            "node_scrape_collector_success{collector=\"cpu\"} 1.0",
        ] {
            assert!(has(&page, l), "{l} in\n{page}");
        }
        assert!(!page.contains("cpu=\"x\""));
    }

    #[test]
    fn stat_counters() {
        let fx = Fixture::new(&[("stat", STAT)]);
        let page = render(Stat, fx.path(), fx.path());
        for l in [
            "node_boot_time_seconds 1767225600.0",
            "node_context_switches_total 98765.0",
            "node_forks_total 5102.0",
            "node_intr_total 1234.0",
            "node_procs_running 3.0",
            "node_procs_blocked 1.0",
        ] {
            assert!(has(&page, l), "{l} in\n{page}");
        }
    }

    #[test]
    fn missing_file_describes_families_and_fails() {
        let fx = Fixture::new(&[]);
        let page = render(Stat, fx.path(), fx.path());
        assert!(page.contains("# TYPE node_forks counter"), "{page}");
        assert!(!page.contains("\nnode_forks_total "));
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"stat\"} 0.0"
        ));
        let page = render(Cpu, fx.path(), fx.path());
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"cpu\"} 0.0"
        ));
    }
}
