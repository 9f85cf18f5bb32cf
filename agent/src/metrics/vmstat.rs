//! `vmstat` collector: /proc/vmstat fields selected like node_exporter's
//! `--collector.vmstat.fields` (default `^(oom_kill|pgpg|pswp|pg.*fault).*`), untyped
//! as node_exporter exports them.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::Unknown;

use super::source::{one, Collected, FieldFilter, Filter, Outcome, Reader, Source};

pub const DEFAULT_FIELDS: &str = "^(oom_kill|pgpg|pswp|pg.*fault).*";
/// The default set's fields, described even where the kernel lacks one.
const KNOWN: &[&str] = &[
    "oom_kill",
    "pgfault",
    "pgmajfault",
    "pgpgin",
    "pgpgout",
    "pswpin",
    "pswpout",
];

#[derive(Debug)]
pub struct Vmstat {
    pub fields: FieldFilter,
}

impl Default for Vmstat {
    fn default() -> Self {
        Vmstat {
            fields: FieldFilter::new(Filter::include(DEFAULT_FIELDS)),
        }
    }
}

fn fields(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines().filter_map(|l| {
        let (k, v) = l.split_once(' ')?;
        let ok = !k.is_empty()
            && k.len() <= 64
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        ok.then_some(())?;
        Some((k, v.trim().parse::<u64>().ok()? as f64))
    })
}

impl Source for Vmstat {
    fn name(&self) -> &'static str {
        "vmstat"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let text = io.proc("vmstat").unwrap_or_default();
        let mut name = String::with_capacity(96);
        let mut seen = false;
        for (k, v) in fields(text).filter(|(k, _)| self.fields.keep(k)) {
            seen = true;
            name.clear();
            name.push_str("node_vmstat_");
            name.push_str(k);
            one(
                enc,
                &name,
                &format!("/proc/vmstat information field {k}."),
                None,
                Unknown,
                Some(v),
            )?;
        }
        for k in KNOWN {
            if self.fields.keep(k) && !fields(text).any(|(f, _)| f == *k) {
                name.clear();
                name.push_str("node_vmstat_");
                name.push_str(k);
                one(
                    enc,
                    &name,
                    "/proc/vmstat field (absent on this kernel).",
                    None,
                    Unknown,
                    None,
                )?;
            }
        }
        Ok(Outcome::from_ok(seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    #[test]
    fn default_fields_only_untyped() {
        let text = "nr_free_pages 12345\npgpgin 100\npgpgout 200\npswpin 0\npswpout 0\n\
                    pgfault 99999999999\npgmajfault 42\noom_kill 1\nthp_fault_alloc 7\n\
                    broken\npgscan_kswapd x\n";
        let fx = Fixture::new(&[("vmstat", text)]);
        let page = render(Vmstat::default(), fx.path(), fx.path());
        for l in [
            "node_vmstat_pgmajfault 42.0",
            "node_vmstat_pgfault 99999999999.0",
            "node_vmstat_oom_kill 1.0",
            "node_vmstat_pgpgout 200.0",
        ] {
            assert!(has(&page, l), "{l} in\n{page}");
        }
        assert!(page.contains("# TYPE node_vmstat_pgmajfault unknown"));
        assert!(!page.contains("nr_free_pages"));
        assert!(!page.contains("thp_fault_alloc"));
        assert_eq!(page.matches("# TYPE node_vmstat_pgfault ").count(), 1);
    }

    #[test]
    fn configured_fields_and_missing_file() {
        let fx = Fixture::new(&[("vmstat", "nr_free_pages 5\npgmajfault 1\n")]);
        let v = Vmstat {
            fields: FieldFilter::new(Filter::include("^nr_free")),
        };
        let page = render(v, fx.path(), fx.path());
        assert!(has(&page, "node_vmstat_nr_free_pages 5.0"), "{page}");
        assert!(!page.contains("pgmajfault"));
        let empty = Fixture::new(&[]);
        let page = render(Vmstat::default(), empty.path(), empty.path());
        assert!(page.contains("# TYPE node_vmstat_pgmajfault unknown"));
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"vmstat\"} 0.0"
        ));
    }
}
