//! `timex` collector: the kernel clock discipline's state from adjtimex(2) in read-only
//! mode (modes = 0), converted as node_exporter does: node-mixin's clock skew and
//! "not synchronising" alerts use `offset`, `maxerror` and `sync_status`.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};

use super::source::{one, Collected, Outcome, Reader, Source, SECONDS};

/// 16-bit fractional parts per million, as adjtimex reports frequencies.
const PPM16: f64 = 65536.0 * 1e6;

pub use fleet_timex::{Timex, STA_NANO, TIME_ERROR};

pub fn encode(enc: &mut DescriptorEncoder, t: Option<&Timex>) -> std::fmt::Result {
    // offset and jitter are in ns with STA_NANO, else in µs.
    let div = |t: &Timex| if t.status & STA_NANO != 0 { 1e9 } else { 1e6 };
    let g = |f: fn(&Timex) -> f64| t.map(f);
    let series: [(
        &str,
        &str,
        bool,
        prometheus_client::metrics::MetricType,
        Option<f64>,
    ); 16] = [
        (
            "node_timex_sync_status",
            "Is clock synchronized to a reliable server (1 = yes, 0 = no).",
            false,
            Gauge,
            g(|t| if t.state == TIME_ERROR { 0.0 } else { 1.0 }),
        ),
        (
            "node_timex_offset",
            "Time offset in between local system and reference clock.",
            true,
            Gauge,
            t.map(|t| t.offset as f64 / div(t)),
        ),
        (
            "node_timex_frequency_adjustment_ratio",
            "Local clock frequency adjustment.",
            false,
            Gauge,
            g(|t| 1.0 + t.freq as f64 / PPM16),
        ),
        (
            "node_timex_maxerror",
            "Maximum error in seconds.",
            true,
            Gauge,
            g(|t| t.maxerror as f64 / 1e6),
        ),
        (
            "node_timex_estimated_error",
            "Estimated error in seconds.",
            true,
            Gauge,
            g(|t| t.esterror as f64 / 1e6),
        ),
        (
            "node_timex_status",
            "Value of the status array bits.",
            false,
            Gauge,
            g(|t| t.status as f64),
        ),
        (
            "node_timex_loop_time_constant",
            "Phase-locked loop time constant.",
            false,
            Gauge,
            g(|t| t.constant as f64),
        ),
        (
            "node_timex_tick",
            "Seconds between clock ticks.",
            true,
            Gauge,
            g(|t| t.tick as f64 / 1e6),
        ),
        (
            "node_timex_pps_frequency_hertz",
            "Pulse per second frequency.",
            false,
            Gauge,
            g(|t| t.ppsfreq as f64 / PPM16),
        ),
        (
            "node_timex_pps_jitter",
            "Pulse per second jitter.",
            true,
            Gauge,
            t.map(|t| t.jitter as f64 / div(t)),
        ),
        (
            "node_timex_pps_shift",
            "Pulse per second interval duration.",
            true,
            Gauge,
            g(|t| t.shift as f64),
        ),
        (
            "node_timex_pps_stability_hertz",
            "Pulse per second stability, average of recent frequency changes.",
            false,
            Gauge,
            g(|t| t.stabil as f64 / PPM16),
        ),
        (
            "node_timex_pps_jitter",
            "Pulse per second count of jitter limit exceeded events.",
            false,
            Counter,
            g(|t| t.jitcnt as f64),
        ),
        (
            "node_timex_pps_calibration",
            "Pulse per second count of calibration intervals.",
            false,
            Counter,
            g(|t| t.calcnt as f64),
        ),
        (
            "node_timex_pps_error",
            "Pulse per second count of calibration errors.",
            false,
            Counter,
            g(|t| t.errcnt as f64),
        ),
        (
            "node_timex_pps_stability_exceeded",
            "Pulse per second count of stability limit exceeded events.",
            false,
            Counter,
            g(|t| t.stbcnt as f64),
        ),
    ];
    for (name, help, seconds, kind, v) in series {
        one(
            enc,
            name,
            help,
            if seconds { SECONDS } else { None },
            kind,
            v,
        )?;
    }
    one(
        enc,
        "node_timex_tai_offset",
        "International Atomic Time (TAI) offset.",
        SECONDS,
        Gauge,
        g(|t| t.tai as f64),
    )
}

#[derive(Debug)]
pub struct TimexSource;

impl Source for TimexSource {
    fn name(&self) -> &'static str {
        "timex"
    }

    fn collect(&self, _io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let t = fleet_timex::read()
            .map_err(|e| tracing::debug!(error = %e, "adjtimex failed"))
            .ok();
        encode(enc, t.as_ref())?;
        Ok(Outcome::from_ok(t.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    fn page(t: Option<Timex>) -> String {
        #[derive(Debug)]
        struct One(Option<Timex>);
        impl prometheus_client::collector::Collector for One {
            fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
                encode(&mut enc, self.0.as_ref())
            }
        }
        let mut r = prometheus_client::registry::Registry::default();
        r.register_collector(Box::new(One(t)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn conversions_follow_node_exporter() {
        let t = Timex {
            state: 0,
            status: STA_NANO,
            offset: -1_500_000,
            freq: 65536 * 10,
            maxerror: 250_000,
            esterror: 1_000,
            tick: 10_000,
            tai: 37,
            ..Timex::default()
        };
        let p = page(Some(t));
        for l in [
            "node_timex_sync_status 1.0",
            "node_timex_offset_seconds -0.0015",
            "node_timex_frequency_adjustment_ratio 1.00001",
            "node_timex_maxerror_seconds 0.25",
            "node_timex_estimated_error_seconds 0.001",
            "node_timex_tick_seconds 0.01",
            "node_timex_tai_offset_seconds 37.0",
            "node_timex_pps_calibration_total 0.0",
        ] {
            assert!(has(&p, l), "{l} in\n{p}");
        }
        // Microsecond mode and an unsynchronised clock (TIME_ERROR).
        let p = page(Some(Timex {
            state: TIME_ERROR,
            offset: 2_000,
            ..Timex::default()
        }));
        assert!(
            has(&p, "node_timex_sync_status 0.0") && has(&p, "node_timex_offset_seconds 0.002"),
            "{p}"
        );
        let p = page(None);
        assert!(
            p.contains("# TYPE node_timex_offset_seconds gauge")
                && !p.contains("\nnode_timex_offset_seconds ")
        );
    }

    #[test]
    fn this_hosts_clock_is_readable() {
        let fx = Fixture::new(&[]);
        let p = render(TimexSource, fx.path(), fx.path());
        assert!(
            has(&p, "node_scrape_collector_success{collector=\"timex\"} 1.0"),
            "{p}"
        );
    }
}
