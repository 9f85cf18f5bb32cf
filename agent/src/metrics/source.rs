//! The frame node_exporter-style collectors plug into: each [`Source`] reads its host
//! files at scrape time and encodes straight from the text it read (one reused buffer, no
//! snapshot kept between scrapes), and [`Sources`] times each one for
//! `node_scrape_collector_duration_seconds` / `node_scrape_collector_success`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Largest /proc or /sys file a collector reads (the biggest, /proc/net/netstat or a
/// busy /proc/self/mountinfo, are a few KiB): a bound, not a tuning knob.
pub const MAX_FILE: u64 = 4 << 20;

/// How a collector's scrape went, for `node_scrape_collector_success`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Its data is missing or unreadable on this host (no conntrack module, no /proc/pressure):
    /// the families are still described, without samples, and success is 0 as in node_exporter.
    Failed,
}

impl Outcome {
    pub fn from_ok(ok: bool) -> Outcome {
        if ok {
            Outcome::Ok
        } else {
            Outcome::Failed
        }
    }
}

pub type Collected = Result<Outcome, fmt::Error>;

/// One node_exporter collector (`cpu`, `meminfo`, ...).
pub trait Source: Send + Sync + fmt::Debug {
    /// node_exporter's collector name, the `collector` label of the scrape series.
    fn name(&self) -> &'static str;
    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected;
}

impl<T: Source> Source for std::sync::Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        (**self).collect(io, enc)
    }
}

/// Where the host's /proc and /sys are (node_exporter's `--path.procfs`/`--path.sysfs`),
/// plus the read buffers the collectors share; one scrape runs at a time.
#[derive(Debug)]
pub struct Reader {
    pub proc: PathBuf,
    pub sys: PathBuf,
    buf: String,
    path: PathBuf,
}

impl Reader {
    pub fn new(proc: impl Into<PathBuf>, sys: impl Into<PathBuf>) -> Reader {
        Reader {
            proc: proc.into(),
            sys: sys.into(),
            buf: String::with_capacity(16 * 1024),
            path: PathBuf::with_capacity(256),
        }
    }

    /// `<proc>/<rel>` read into the shared buffer.
    pub fn proc(&mut self, rel: &str) -> std::io::Result<&str> {
        self.path.clear();
        self.path.push(&self.proc);
        self.path.push(rel);
        read_into(&self.path, &mut self.buf)?;
        Ok(&self.buf)
    }

    /// `<sys>/<rel>` read into the shared buffer.
    pub fn sys(&mut self, rel: &str) -> std::io::Result<&str> {
        self.path.clear();
        self.path.push(&self.sys);
        self.path.push(rel);
        read_into(&self.path, &mut self.buf)?;
        Ok(&self.buf)
    }

    /// A small sysfs attribute, trimmed, copied into `out` (so several can be held at once).
    pub fn sys_value(&mut self, rel: &str, out: &mut String) -> bool {
        out.clear();
        match self.sys(rel) {
            Ok(v) => {
                out.push_str(v.trim());
                true
            }
            Err(_) => false,
        }
    }
}

fn read_into(path: &Path, buf: &mut String) -> std::io::Result<()> {
    buf.clear();
    std::fs::File::open(path)?
        .take(MAX_FILE)
        .read_to_string(buf)
        .map(|_| ())
}

/// One family being written: its descriptor is out, samples follow.
pub struct Fam<'a> {
    metric: MetricEncoder<'a>,
    kind: MetricType,
}

/// Starts a family. `name` without the unit and (counters) `_total` suffixes, as
/// prometheus-client wants it; it adds them.
pub fn fam<'a>(
    enc: &'a mut DescriptorEncoder,
    name: &'a str,
    help: &str,
    unit: Option<&'a Unit>,
    kind: MetricType,
) -> Result<Fam<'a>, fmt::Error> {
    Ok(Fam {
        metric: enc.encode_descriptor(name, help, unit, kind)?,
        kind,
    })
}

impl Fam<'_> {
    pub fn sample(&mut self, labels: &impl EncodeLabelSet, v: f64) -> fmt::Result {
        let mut m = self.metric.encode_family(labels)?;
        put(&mut m, self.kind, v)
    }

    /// A sample with labels known only at run time (none: a bare `name value` line).
    pub fn series(&mut self, labels: &[(String, String)], v: f64) -> fmt::Result {
        if labels.is_empty() {
            put(&mut self.metric, self.kind, v)
        } else {
            self.sample(&labels, v)
        }
    }

    /// The family's one sample without labels.
    pub fn value(mut self, v: f64) -> fmt::Result {
        put(&mut self.metric, self.kind, v)
    }
}

fn put(m: &mut MetricEncoder, kind: MetricType, v: f64) -> fmt::Result {
    match kind {
        MetricType::Counter => m.encode_counter::<NoLabelSet, f64, f64>(&v, None),
        _ => m.encode_gauge(&v),
    }
}

/// A family with one unlabelled sample, left without a sample when unknown.
pub fn one(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    v: Option<f64>,
) -> fmt::Result {
    let f = fam(enc, name, help, unit, kind)?;
    match v {
        Some(v) => f.value(v),
        None => Ok(()),
    }
}

pub const SECONDS: Option<&Unit> = Some(&Unit::Seconds);
pub const BYTES: Option<&Unit> = Some(&Unit::Bytes);

/// Include/exclude regexes with node_exporter's semantics: a name is kept when it matches
/// `include` (if set) and does not match `exclude` (if set).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub include: Option<regex_lite::Regex>,
    pub exclude: Option<regex_lite::Regex>,
}

impl Filter {
    pub fn exclude(re: &str) -> Filter {
        Filter {
            include: None,
            exclude: Some(regex_lite::Regex::new(re).expect("built-in default regex")),
        }
    }

    pub fn include(re: &str) -> Filter {
        Filter {
            include: Some(regex_lite::Regex::new(re).expect("built-in default regex")),
            exclude: None,
        }
    }

    pub fn keep(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|r| r.is_match(name))
            && !self.exclude.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// A [`Filter`] over field names that repeat every scrape (vmstat, netstat): each name's
/// answer is remembered, so the small regex engine runs once per field, not per scrape.
#[derive(Debug, Default)]
pub struct FieldFilter {
    pub filter: Filter,
    memo: Mutex<Vec<(String, bool)>>,
}

/// Field names remembered at most (the kernel has a few hundred).
const MAX_MEMO: usize = 2048;

impl FieldFilter {
    pub fn new(filter: Filter) -> FieldFilter {
        FieldFilter {
            filter,
            memo: Mutex::new(Vec::new()),
        }
    }

    pub fn keep(&self, name: &str) -> bool {
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        match memo.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => memo[i].1,
            Err(i) => {
                let keep = self.filter.keep(name);
                if memo.len() < MAX_MEMO {
                    memo.insert(i, (name.to_owned(), keep));
                }
                keep
            }
        }
    }
}

/// One collector's part of a scrape: its name, seconds taken, outcome.
type Timing = (&'static str, f64, Outcome);

/// Every enabled collector, run in order at each scrape, then the scrape series.
#[derive(Debug)]
pub struct Sources {
    sources: Vec<Box<dyn Source>>,
    /// The shared buffers, and the per-collector timings of the scrape being encoded.
    state: Mutex<(Reader, Vec<Timing>)>,
}

impl Sources {
    pub fn new(sources: Vec<Box<dyn Source>>, reader: Reader) -> Sources {
        let n = sources.len();
        Sources {
            sources,
            state: Mutex::new((reader, Vec::with_capacity(n))),
        }
    }
}

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (reader, timings) = &mut *state;
        timings.clear();
        for s in &self.sources {
            let start = Instant::now();
            let outcome = s.collect(reader, &mut enc)?;
            timings.push((s.name(), start.elapsed().as_secs_f64(), outcome));
        }
        let mut f = fam(
            &mut enc,
            "node_scrape_collector_duration",
            "node_exporter: Duration of a collector scrape.",
            SECONDS,
            MetricType::Gauge,
        )?;
        for (name, secs, _) in timings.iter() {
            f.sample(&[("collector", *name)], *secs)?;
        }
        let mut f = fam(
            &mut enc,
            "node_scrape_collector_success",
            "node_exporter: Whether a collector succeeded.",
            None,
            MetricType::Gauge,
        )?;
        for (name, _, outcome) in timings.iter() {
            f.sample(
                &[("collector", *name)],
                if *outcome == Outcome::Ok { 1.0 } else { 0.0 },
            )?;
        }
        Ok(())
    }
}

/// Test helper: one source's page over fixture directories, in OpenMetrics text.
#[cfg(test)]
pub fn render(source: impl Source + 'static, proc: &Path, sys: &Path) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Sources::new(
        vec![Box::new(source)],
        Reader::new(proc, sys),
    )));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
}

/// Test helper: a temporary directory tree of fixture files, removed on drop.
#[cfg(test)]
pub struct Fixture(pub PathBuf);

#[cfg(test)]
impl Fixture {
    pub fn new(files: &[(&str, &str)]) -> Fixture {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fleet-metrics-fixture-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        for (rel, text) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        Fixture(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Test helper: whether `page` has exactly this sample line.
#[cfg(test)]
pub fn has(page: &str, line: &str) -> bool {
    page.lines().any(|l| l == line)
}
