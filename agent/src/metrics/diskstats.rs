//! `diskstats` collector: every /proc/diskstats column (including discards, flushes and
//! the weighted I/O time node-mixin's saturation rules use) under node_exporter's names.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{self, Counter, Gauge};
use prometheus_client::registry::Unit;

use super::procfs::DISKSTATS_SECTOR;
use super::source::{fam, Collected, Filter, Outcome, Reader, Source, BYTES, SECONDS};

/// node_exporter 1.5's (and Debian's) `--collector.diskstats.device-exclude`.
pub const DEFAULT_DEVICE_EXCLUDE: &str = "^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\\d+n\\d+p)\\d+$";

#[derive(Debug)]
pub struct Diskstats {
    pub devices: Filter,
}

impl Default for Diskstats {
    fn default() -> Self {
        Diskstats {
            devices: Filter::exclude(DEFAULT_DEVICE_EXCLUDE),
        }
    }
}

/// (name, help, unit, type, column after the device name, scale).
type Column = (
    &'static str,
    &'static str,
    Option<&'static Unit>,
    MetricType,
    usize,
    f64,
);
const MS: f64 = 0.001;
const COLUMNS: [Column; 17] = [
    (
        "node_disk_reads_completed",
        "The total number of reads completed successfully.",
        None,
        Counter,
        0,
        1.0,
    ),
    (
        "node_disk_reads_merged",
        "The total number of reads merged.",
        None,
        Counter,
        1,
        1.0,
    ),
    (
        "node_disk_read",
        "The total number of bytes read successfully.",
        BYTES,
        Counter,
        2,
        DISKSTATS_SECTOR,
    ),
    (
        "node_disk_read_time",
        "The total number of seconds spent by all reads.",
        SECONDS,
        Counter,
        3,
        MS,
    ),
    (
        "node_disk_writes_completed",
        "The total number of writes completed successfully.",
        None,
        Counter,
        4,
        1.0,
    ),
    (
        "node_disk_writes_merged",
        "The number of writes merged.",
        None,
        Counter,
        5,
        1.0,
    ),
    (
        "node_disk_written",
        "The total number of bytes written successfully.",
        BYTES,
        Counter,
        6,
        DISKSTATS_SECTOR,
    ),
    (
        "node_disk_write_time",
        "This is the total number of seconds spent by all writes.",
        SECONDS,
        Counter,
        7,
        MS,
    ),
    (
        "node_disk_io_now",
        "The number of I/Os currently in progress.",
        None,
        Gauge,
        8,
        1.0,
    ),
    (
        "node_disk_io_time",
        "Total seconds spent doing I/Os.",
        SECONDS,
        Counter,
        9,
        MS,
    ),
    (
        "node_disk_io_time_weighted",
        "The weighted # of seconds spent doing I/Os.",
        SECONDS,
        Counter,
        10,
        MS,
    ),
    (
        "node_disk_discards_completed",
        "The total number of discards completed successfully.",
        None,
        Counter,
        11,
        1.0,
    ),
    (
        "node_disk_discards_merged",
        "The total number of discards merged.",
        None,
        Counter,
        12,
        1.0,
    ),
    (
        "node_disk_discarded_sectors",
        "The total number of sectors discarded successfully.",
        None,
        Counter,
        13,
        1.0,
    ),
    (
        "node_disk_discard_time",
        "This is the total number of seconds spent by all discards.",
        SECONDS,
        Counter,
        14,
        MS,
    ),
    (
        "node_disk_flush_requests",
        "The total number of flush requests completed successfully",
        None,
        Counter,
        15,
        1.0,
    ),
    (
        "node_disk_flush_requests_time",
        "This is the total number of seconds spent by all flush requests.",
        SECONDS,
        Counter,
        16,
        MS,
    ),
];

/// `major minor name` then up to 17 columns; lines with fewer than the 11 classic
/// columns are skipped, later columns are absent on older kernels.
pub fn parse(text: &str) -> impl Iterator<Item = (&str, [Option<u64>; 17])> {
    text.lines().filter_map(|line| {
        let mut f = line.split_whitespace();
        let name = f.nth(2)?;
        let mut v = [None; 17];
        let mut n = 0;
        for (slot, x) in v.iter_mut().zip(f) {
            *slot = Some(x.parse().ok()?);
            n += 1;
        }
        (n >= 11).then_some((name, v))
    })
}

impl Source for Diskstats {
    fn name(&self) -> &'static str {
        "diskstats"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let text = io.proc("diskstats");
        let ok = text.is_ok();
        let text = text.unwrap_or_default();
        for (name, help, unit, kind, col, scale) in COLUMNS {
            let mut f = fam(enc, name, help, unit, kind)?;
            for (dev, v) in parse(text).filter(|(d, _)| self.devices.keep(d)) {
                if let Some(x) = v[col] {
                    f.sample(&[("device", dev)], x as f64 * scale)?;
                }
            }
        }
        Ok(Outcome::from_ok(ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    const DISKSTATS: &str = "\
   7       0 loop0 10 0 20 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   8       0 sda 4182 1277 331446 2033 2871 2734 118394 3419 0 5476 5769 1 2 3 4 318 316
   8       1 sda1 4000 1200 300000 2000 2800 2700 118000 3400 0 5400 5700 0 0 0 0 0 0
 259       0 nvme0n1 100 0 800 10 50 0 400 5 0 1500 15 0 0 0 0 0 0
 259       1 nvme0n1p1 100 0 800 10 50 0 400 5 0 1500 15 0 0 0 0 0 0
 253       0 dm-0 77 0 616 3 0 0 0 0 2 20 3
 253       1 dm-1 77 0 616
 253       2 dm-2 x 0 616 3 0 0 0 0 2 20 3
";

    #[test]
    fn every_column_whole_disks_only() {
        let fx = Fixture::new(&[("diskstats", DISKSTATS)]);
        let page = render(Diskstats::default(), fx.path(), fx.path());
        for l in [
            "node_disk_reads_completed_total{device=\"sda\"} 4182.0",
            "node_disk_read_bytes_total{device=\"sda\"} 169700352.0",
            "node_disk_io_time_seconds_total{device=\"sda\"} 5.476",
            "node_disk_io_time_weighted_seconds_total{device=\"sda\"} 5.769",
            "node_disk_discards_completed_total{device=\"sda\"} 1.0",
            "node_disk_flush_requests_total{device=\"sda\"} 318.0",
            "node_disk_flush_requests_time_seconds_total{device=\"sda\"} 0.316",
            "node_disk_io_now{device=\"dm-0\"} 2.0",
        ] {
            assert!(has(&page, l), "{l} in\n{page}");
        }
        for gone in ["loop0", "sda1", "nvme0n1p1", "dm-1", "dm-2"] {
            assert!(!page.contains(&format!("\"{gone}\"")), "{gone}");
        }
        // An old kernel without discard columns: those are simply absent.
        assert!(!page.contains("node_disk_discards_completed_total{device=\"dm-0\"}"));
        assert!(page.contains("node_disk_reads_completed_total{device=\"nvme0n1\"}"));
    }

    #[test]
    fn missing_file() {
        let fx = Fixture::new(&[]);
        let page = render(Diskstats::default(), fx.path(), fx.path());
        assert!(page.contains("# TYPE node_disk_io_time_weighted_seconds counter"));
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"diskstats\"} 0.0"
        ));
    }
}
