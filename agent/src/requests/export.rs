//! The request families on the agent's /metrics, encoded at scrape time from the counts
//! (as metrics/apps.rs does): described even with no app, so dashboards and alert rules
//! find every name on every host.

use std::fmt;

use fleet_proto::requests::DURATION_BUCKETS;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::registry::ReleaseCounts;
use super::{lock, Requests};

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Debug)]
pub(super) struct Collector(pub(super) Requests);

impl fmt::Debug for Requests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requests")
            .field("epoch", &self.inner.epoch)
            .finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        // Copied out first: a scrape never holds an app's lock while it writes.
        let apps: Vec<(String, Vec<ReleaseCounts>, u64)> = lock(&self.0.inner.apps)
            .iter()
            .map(|(name, w)| {
                let w = lock(w);
                (
                    name.to_string(),
                    w.counts.releases().to_vec(),
                    w.counts.unparsed,
                )
            })
            .collect();

        let mut m = enc.encode_descriptor(
            "fleet_app_http_requests",
            "HTTP requests the app answered, from its access log, by release and status class \
             (the agent's health probes not counted)",
            None,
            MetricType::Counter,
        )?;
        for (app, releases, _) in &apps {
            for r in releases {
                for (code, n) in CLASSES.iter().zip(r.classes) {
                    let labels = [
                        ("app", app.as_str()),
                        ("release", r.release.as_str()),
                        ("code", code),
                    ];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }

        let mut m = enc.encode_descriptor(
            "fleet_app_http_request_duration",
            "Response time of the app's HTTP requests, from its access log, by release",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (app, releases, _) in &apps {
            for r in releases {
                let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(r.buckets)
                    .collect();
                let labels = [("app", app.as_str()), ("release", r.release.as_str())];
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    r.sum_seconds,
                    r.count(),
                    &buckets,
                    None,
                )?;
            }
        }

        let mut m = enc.encode_descriptor(
            "fleet_app_access_log_unparsed",
            "Lines of the app's access log that are not fleet's access line",
            None,
            MetricType::Counter,
        )?;
        for (app, _, unparsed) in &apps {
            ConstCounter::new(*unparsed).encode(m.encode_family(&[("app", app.as_str())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::io::Write;

    fn render(r: &Requests) -> String {
        let mut registry = Registry::default();
        r.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn every_family_is_described_without_apps() {
        let out = render(&Requests::default());
        for family in [
            "fleet_app_http_requests counter",
            "fleet_app_http_request_duration_seconds histogram",
            "fleet_app_access_log_unparsed counter",
        ] {
            assert!(
                out.contains(&format!("# TYPE {family}\n")),
                "{family}\n{out}"
            );
        }
        assert!(out.lines().all(|l| l.starts_with('#')), "{out}");
    }

    #[test]
    fn counts_are_exported_per_app_release_and_class() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let r = Requests::default();
        let spec = crate::units::tests::spec("");
        r.watch(&spec, path.clone());
        let mut f = std::fs::File::create(&path).unwrap();
        for l in [
            "fleet1 r1 200 1500 \"GET / HTTP/1.1\" - 0 [t]",
            "fleet1 r1 500 200000 \"GET /fail HTTP/1.1\" - 0 [t]",
            "fleet1 r2 200 100 \"GET / HTTP/1.1\" - 0 [t]",
            "nonsense",
        ] {
            writeln!(f, "{l}").unwrap();
        }
        super::super::read_once(&mut lock(&lock(&r.inner.apps)[&spec.name])).unwrap();
        let out = render(&r);
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        for want in [
            "fleet_app_http_requests_total{app=\"shop\",release=\"r1\",code=\"2xx\"} 1",
            "fleet_app_http_requests_total{app=\"shop\",release=\"r1\",code=\"5xx\"} 1",
            "fleet_app_http_requests_total{app=\"shop\",release=\"r1\",code=\"4xx\"} 0",
            "fleet_app_http_requests_total{app=\"shop\",release=\"r2\",code=\"2xx\"} 1",
            "fleet_app_http_request_duration_seconds_count{app=\"shop\",release=\"r1\"} 2",
            "fleet_app_http_request_duration_seconds_sum{app=\"shop\",release=\"r1\"} 0.2015",
            "fleet_app_http_request_duration_seconds_bucket{le=\"0.001\",app=\"shop\",release=\"r1\"} 0",
            "fleet_app_http_request_duration_seconds_bucket{le=\"0.002\",app=\"shop\",release=\"r1\"} 1",
            "fleet_app_http_request_duration_seconds_bucket{le=\"0.15\",app=\"shop\",release=\"r1\"} 1",
            "fleet_app_http_request_duration_seconds_bucket{le=\"0.25\",app=\"shop\",release=\"r1\"} 2",
            "fleet_app_http_request_duration_seconds_bucket{le=\"+Inf\",app=\"shop\",release=\"r1\"} 2",
            "fleet_app_access_log_unparsed_total{app=\"shop\"} 1",
        ] {
            assert!(samples.contains(&want), "missing {want:?} in\n{out}");
        }
    }
}
