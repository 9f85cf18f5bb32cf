//! `textfile` collector: `*.prom` files other tools write into a directory (Debian's
//! apt, SMART and NVMe helper timers use /var/lib/prometheus/node-exporter), in the
//! Prometheus text format, re-emitted on the agent's page.
//!
//! A file is taken whole or not at all: one that does not parse, carries client-side
//! timestamps, exceeds the bounds, or defines a family the agent itself exports (or that
//! an earlier file already defined) is left out, `node_textfile_scrape_error` is 1, and a
//! warning is logged once per version of the file. A missing directory is not an error
//! (a host without Debian's helpers has none), unlike node_exporter.
//!
//! Counters keep their names; histograms and summaries are passed through series by
//! series as untyped families (`_bucket`, `_sum`, `_count` keep working in queries).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::UNIX_EPOCH;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::source::{fam, Collected, Outcome, Reader, Source, SECONDS};

pub const MAX_FILES: usize = 64;
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Samples over all files of one scrape.
pub const MAX_SAMPLES: usize = 10_000;
pub const MAX_FAMILIES_PER_FILE: usize = 1_000;
const MAX_LABELS: usize = 32;

/// A family's declared type; summaries are read as untyped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Untyped,
}

#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// One parsed file: `(name, help, type)` per family in order, and its samples.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub families: Vec<(String, String, Kind)>,
    pub samples: Vec<Sample>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("line {0}: {1}")]
    Line(usize, &'static str),
    #[error("more than {MAX_FAMILIES_PER_FILE} families")]
    TooManyFamilies,
}

fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn valid_label(n: &str) -> bool {
    valid_name(n) && !n.contains(':')
}

/// Whether a sample belongs to family `fam` of type `kind`: its own name, or a
/// histogram's (summary's, parsed as untyped) suffixed series.
fn belongs(sample: &str, fam: &str, kind: Kind) -> bool {
    let suffixes: &[&str] = match kind {
        Kind::Histogram => &["_bucket", "_sum", "_count"],
        Kind::Untyped => &["_sum", "_count"],
        _ => &[],
    };
    sample == fam
        || sample
            .strip_prefix(fam)
            .is_some_and(|rest| suffixes.contains(&rest))
}

/// Parses label pairs after `{`, up to and including `}`; returns the rest of the line.
fn labels<'a>(mut s: &'a str, out: &mut Vec<(String, String)>) -> Option<&'a str> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Some(rest);
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        if !valid_label(key) || out.iter().any(|(k, _)| k == key) || out.len() >= MAX_LABELS {
            return None;
        }
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    _ => return None,
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key.to_owned(), value));
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        }
    }
}

fn number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses Prometheus text format 0.0.4.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    let mut p = Parsed::default();
    let mut typed: Vec<&str> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let err = |m| ParseError::Line(n, m);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut w = c.trim_start().splitn(3, [' ', '\t']);
            let (kw, name, rest) = (w.next(), w.next(), w.next().unwrap_or("").trim());
            match (kw, name) {
                (Some("HELP"), Some(name)) | (Some("TYPE"), Some(name)) if !valid_name(name) => {
                    return Err(err("bad metric name"))
                }
                (Some("HELP"), Some(name)) => {
                    let help = rest.replace("\\n", " ").replace("\\\\", "\\");
                    match p.families.iter_mut().find(|f| f.0 == name) {
                        Some(f) if p.samples.iter().any(|s| belongs(&s.name, name, f.2)) => {
                            return Err(err("HELP after the family's samples"))
                        }
                        Some(f) => f.1 = help,
                        None => p.families.push((name.to_owned(), help, Kind::Untyped)),
                    }
                }
                (Some("TYPE"), Some(name)) => {
                    let kind = match rest {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        // Summaries pass through as untyped series.
                        "untyped" | "summary" => Kind::Untyped,
                        _ => return Err(err("unknown TYPE")),
                    };
                    if p.samples.iter().any(|s| s.name == name) {
                        return Err(err("TYPE after the family's samples"));
                    }
                    if typed.contains(&name) {
                        return Err(err("second TYPE line for a family"));
                    }
                    typed.push(name);
                    match p.families.iter_mut().find(|f| f.0 == name) {
                        Some(f) => f.2 = kind,
                        None => p.families.push((name.to_owned(), String::new(), kind)),
                    }
                }
                // Any other comment.
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err("bad metric name"));
        }
        let mut ls = Vec::new();
        let rest = match line[name_end..].trim_start().strip_prefix('{') {
            Some(r) => labels(r, &mut ls).ok_or(err("bad labels"))?,
            None => &line[name_end..],
        };
        let mut w = rest.split_whitespace();
        let value = w.next().and_then(number).ok_or(err("bad value"))?;
        if w.next().is_some() {
            return Err(err("client-side timestamps are not supported"));
        }
        ls.sort();
        if p.samples.iter().any(|s| s.name == name && s.labels == ls) {
            return Err(err("duplicate series"));
        }
        if !p.families.iter().any(|(f, _, k)| belongs(name, f, *k)) {
            p.families
                .push((name.to_owned(), String::new(), Kind::Untyped));
        }
        if p.families.len() > MAX_FAMILIES_PER_FILE {
            return Err(ParseError::TooManyFamilies);
        }
        p.samples.push(Sample {
            name: name.to_owned(),
            labels: ls,
            value,
        });
    }
    Ok(p)
}

/// The series names a parsed file puts on the page (what clashes are checked on).
fn series_names(p: &Parsed) -> BTreeSet<&str> {
    let mut out: BTreeSet<&str> = p.samples.iter().map(|s| s.name.as_str()).collect();
    out.extend(p.families.iter().map(|f| f.0.as_str()));
    out
}

#[derive(Debug)]
pub struct Textfile {
    pub dir: PathBuf,
    /// Series names the rest of the page has; set once the registry is complete.
    pub reserved: OnceLock<BTreeSet<String>>,
    /// `(file, mtime)` already warned about, so a bad file logs once, not every scrape.
    warned: Mutex<Vec<(String, f64)>>,
}

impl Textfile {
    pub fn new(dir: PathBuf) -> Textfile {
        Textfile {
            dir,
            reserved: OnceLock::new(),
            warned: Mutex::new(Vec::new()),
        }
    }

    fn reject(&self, file: &str, mtime: f64, why: &str) {
        let mut w = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if w.iter().any(|(f, m)| f == file && *m == mtime) {
            return;
        }
        w.retain(|(f, _)| f != file);
        if w.len() < MAX_FILES * 2 {
            w.push((file.to_owned(), mtime));
        }
        tracing::warn!(
            directory = %self.dir.display(),
            file,
            error = why,
            "textfile left out of /metrics (node_textfile_scrape_error is 1): fix or remove it"
        );
    }

    fn reserved(&self, name: &str) -> bool {
        name.starts_with("fleet_")
            || name.starts_with("node_textfile_")
            || name.starts_with("node_scrape_collector_")
            || self.reserved.get().is_some_and(|r| {
                r.contains(name)
                    || ["_total", "_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s).is_some_and(|b| r.contains(b)))
            })
    }
}

impl Source for Textfile {
    fn name(&self) -> &'static str {
        "textfile"
    }

    fn collect(&self, _io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        // Until the rest of the page's names are known (the registry's first render),
        // nothing is read: a file could not be checked for clashes.
        if self.reserved.get().is_none() {
            fam(
                enc,
                "node_textfile_mtime",
                "Unixtime mtime of textfiles successfully read.",
                SECONDS,
                MetricType::Gauge,
            )?;
            fam(
                enc,
                "node_textfile_scrape_error",
                "1 if there was an error opening or reading a file, 0 otherwise",
                None,
                MetricType::Gauge,
            )?
            .value(0.0)?;
            return Ok(Outcome::Ok);
        }
        let mut error = false;
        let mut files: Vec<(String, f64, Parsed)> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => {
                let mut v: Vec<(String, PathBuf)> = e
                    .filter_map(|e| {
                        let e = e.ok()?;
                        let n = e.file_name().into_string().ok()?;
                        n.ends_with(".prom").then(|| (n, e.path()))
                    })
                    .collect();
                v.sort();
                if v.len() > MAX_FILES {
                    self.reject("*.prom", 0.0, "more than 64 files; the rest are left out");
                    error = true;
                    v.truncate(MAX_FILES);
                }
                v
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                self.reject("", 0.0, &format!("cannot read the directory: {e}"));
                error = true;
                Vec::new()
            }
        };
        let mut samples = 0usize;
        for (file, path) in entries {
            let mut text = String::new();
            let meta = std::fs::metadata(&path);
            let mtime = meta
                .as_ref()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let read = std::fs::File::open(&path)
                .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text));
            let problem = match read {
                Err(e) => Some(format!("cannot read: {e}")),
                Ok(n) if n as u64 > MAX_FILE_BYTES => Some("larger than 1 MiB".to_owned()),
                Ok(_) => None,
            };
            if let Some(why) = problem {
                self.reject(&file, mtime, &why);
                error = true;
                continue;
            }
            let parsed = match parse(&text) {
                Ok(p) => p,
                Err(e) => {
                    self.reject(&file, mtime, &e.to_string());
                    error = true;
                    continue;
                }
            };
            let own = series_names(&parsed);
            let clash = own
                .iter()
                .find(|n| self.reserved(n) || names.iter().any(|m| m == *n))
                .map(|n| n.to_string());
            if let Some(n) = clash {
                self.reject(
                    &file,
                    mtime,
                    &format!("{n} is already on the page (the agent's own, or an earlier file's)"),
                );
                error = true;
                continue;
            }
            if samples + parsed.samples.len() > MAX_SAMPLES {
                self.reject(&file, mtime, "more than 10000 samples over all files");
                error = true;
                continue;
            }
            samples += parsed.samples.len();
            names.extend(own.into_iter().map(str::to_owned));
            files.push((file, mtime, parsed));
        }
        for (_, _, p) in &files {
            encode_file(enc, p)?;
        }
        let mut f = fam(
            enc,
            "node_textfile_mtime",
            "Unixtime mtime of textfiles successfully read.",
            SECONDS,
            MetricType::Gauge,
        )?;
        for (file, mtime, _) in &files {
            f.sample(&[("file", file.as_str())], *mtime)?;
        }
        fam(
            enc,
            "node_textfile_scrape_error",
            "1 if there was an error opening or reading a file, 0 otherwise",
            None,
            MetricType::Gauge,
        )?
        .value(if error { 1.0 } else { 0.0 })?;
        Ok(Outcome::Ok)
    }
}

/// Re-emits one file's families through the page's encoder.
fn encode_file(enc: &mut DescriptorEncoder, p: &Parsed) -> std::fmt::Result {
    // Each distinct series name becomes one family: a counter keeps its `_total` (the
    // encoder adds it back), everything else is its own gauge or untyped family.
    let mut done: Vec<&str> = Vec::new();
    for s in &p.samples {
        if done.contains(&s.name.as_str()) {
            continue;
        }
        done.push(&s.name);
        let (help, kind) = p
            .families
            .iter()
            .find(|(f, _, k)| belongs(&s.name, f, *k))
            .map(|(f, h, k)| (h.as_str(), if *f == s.name { *k } else { Kind::Untyped }))
            .unwrap_or(("", Kind::Untyped));
        let (name, kind) = match kind {
            Kind::Counter => match s.name.strip_suffix("_total") {
                Some(base) => (base, MetricType::Counter),
                None => (s.name.as_str(), MetricType::Unknown),
            },
            Kind::Gauge => (s.name.as_str(), MetricType::Gauge),
            _ => (s.name.as_str(), MetricType::Unknown),
        };
        let help = if help.is_empty() {
            "Metric read from a textfile."
        } else {
            help
        };
        let mut f = fam(enc, name, help, None, kind)?;
        for t in p.samples.iter().filter(|t| t.name == s.name) {
            f.series(&t.labels, t.value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    const APT: &str = "\
# HELP apt_upgrades_pending Apt packages pending updates by origin.
# TYPE apt_upgrades_pending gauge
apt_upgrades_pending{arch=\"amd64\",origin=\"Debian:bookworm-security/stable-security\"} 3
# HELP node_reboot_required Node reboot is required for software updates.
# TYPE node_reboot_required gauge
node_reboot_required 0
# TYPE smart_errors_total counter
smart_errors_total{disk=\"/dev/sda\",msg=\"say \\\"hi\\\"\\n\"} 1.5e3
# TYPE latency histogram
latency_bucket{le=\"0.1\"} 2
latency_bucket{le=\"+Inf\"} 3
latency_sum 0.5
latency_count 3
";

    #[test]
    fn parses_the_text_format() {
        let p = parse(APT).unwrap();
        assert_eq!(p.samples.len(), 7);
        assert_eq!(
            p.samples[2].labels[1],
            ("msg".into(), "say \"hi\"\n".into())
        );
        assert_eq!(p.samples[2].value, 1500.0);
        assert_eq!(p.families[0].1, "Apt packages pending updates by origin.");
        for (bad, why) in [
            (
                "foo 1 1700000000\n",
                "client-side timestamps are not supported",
            ),
            ("foo{a=\"1\" 1\n", "bad labels"),
            ("foo{a=\"1\",a=\"2\"} 1\n", "bad labels"),
            ("9foo 1\n", "bad metric name"),
            ("foo one\n", "bad value"),
            ("foo 1\nfoo 2\n", "duplicate series"),
            ("# TYPE foo nonsense\n", "unknown TYPE"),
            (
                "# TYPE foo gauge\n# TYPE foo counter\n",
                "second TYPE line for a family",
            ),
            ("foo{a=\"\\x\"} 1\n", "bad labels"),
        ] {
            match parse(bad) {
                Err(ParseError::Line(_, m)) => assert_eq!(m, why, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn good_files_are_served_and_bad_ones_rejected_whole() {
        let fx = Fixture::new(&[
            ("apt.prom", APT),
            ("broken.prom", "ok_metric 1\nthis is not a metric\n"),
            ("clash.prom", "node_load1 99\n"),
            ("dupe.prom", "apt_upgrades_pending{origin=\"x\"} 1\n"),
            ("ignored.txt", "not_prom 1\n"),
        ]);
        let t = Textfile::new(fx.path().to_owned());
        t.reserved.set(["node_load1".to_owned()].into()).unwrap();
        let page = render(t, fx.path(), fx.path());
        for l in [
            "apt_upgrades_pending{arch=\"amd64\",origin=\"Debian:bookworm-security/stable-security\"} 3.0",
            "node_reboot_required 0.0",
            "smart_errors_total{disk=\"/dev/sda\",msg=\"say \\\"hi\\\"\\n\"} 1500.0",
            "latency_bucket{le=\"+Inf\"} 3.0",
            "node_textfile_scrape_error 1.0",
        ] {
            assert!(has(&page, l), "{l} in\n{page}");
        }
        assert!(page.contains("# TYPE smart_errors counter"));
        assert!(page.contains("node_textfile_mtime_seconds{file=\"apt.prom\"} "));
        for gone in [
            "ok_metric",
            "node_load1 ",
            "origin=\"x\"",
            "not_prom",
            "file=\"broken.prom\"",
        ] {
            assert!(!page.contains(gone), "{gone} in\n{page}");
        }
    }

    fn ready(dir: PathBuf) -> Textfile {
        let t = Textfile::new(dir);
        t.reserved.set(BTreeSet::new()).unwrap();
        t
    }

    #[test]
    fn nothing_is_read_before_the_page_names_are_known() {
        let fx = Fixture::new(&[("a.prom", "a_metric 1\n")]);
        let page = render(Textfile::new(fx.path().to_owned()), fx.path(), fx.path());
        assert!(!page.contains("a_metric") && has(&page, "node_textfile_scrape_error 0.0"));
    }

    #[test]
    fn no_directory_is_no_error_and_good_files_clear_it() {
        let fx = Fixture::new(&[("a.prom", "a_metric 1\n")]);
        let page = render(
            Textfile::new(fx.path().join("missing")),
            fx.path(),
            fx.path(),
        );
        assert!(has(&page, "node_textfile_scrape_error 0.0"), "{page}");
        let page = render(ready(fx.path().to_owned()), fx.path(), fx.path());
        assert!(
            has(&page, "node_textfile_scrape_error 0.0") && has(&page, "a_metric 1.0"),
            "{page}"
        );
    }

    #[test]
    fn size_and_count_are_bounded() {
        let big = "x 1\n".repeat((MAX_FILE_BYTES as usize / 4) + 1);
        let fx = Fixture::new(&[("big.prom", &big)]);
        let page = render(ready(fx.path().to_owned()), fx.path(), fx.path());
        assert!(has(&page, "node_textfile_scrape_error 1.0"));
        let many: Vec<(String, String)> = (0..=MAX_FILES)
            .map(|i| (format!("f{i:03}.prom"), format!("m{i} 1\n")))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let fx = Fixture::new(&refs);
        let page = render(ready(fx.path().to_owned()), fx.path(), fx.path());
        assert!(has(&page, "node_textfile_scrape_error 1.0"));
        assert!(has(&page, "m0 1.0") && !page.contains(&format!("\nm{MAX_FILES} ")));
    }
}
