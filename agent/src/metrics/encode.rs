//! Small helpers over prometheus-client's collector encoder, for values read at scrape
//! time (node figures, app state) rather than kept in live metric objects.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

pub type Labels = Vec<(&'static str, String)>;

/// One labelled family; described even when `samples` is empty.
pub fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, v) in samples {
        value(metric.encode_family(&labels)?, kind, v)?;
    }
    Ok(())
}

/// One family without labels; its sample is left out when the value is unknown.
pub fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    v: Option<f64>,
) -> fmt::Result {
    let metric = enc.encode_descriptor(name, help, unit, kind)?;
    match v {
        Some(v) => value(metric, kind, v),
        None => Ok(()),
    }
}

fn value(metric: MetricEncoder, kind: MetricType, v: f64) -> fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(v).encode(metric),
        _ => ConstGauge::new(v).encode(metric),
    }
}
