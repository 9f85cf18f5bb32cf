//! `meminfo` collector: every /proc/meminfo field as `node_memory_<field>[_bytes]`, named
//! as node_exporter names them (`Active(anon)` becomes `Active_anon`; fields in kB are
//! bytes, unit-less ones such as `HugePages_Total` keep their count).

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::Gauge;

use super::source::{one, Collected, Outcome, Reader, Source, BYTES};

/// Fields described even on a kernel that lacks them, so dashboards' names always exist:
/// those of Debian 12's kernel that dashboard 1860 and node-mixin use.
pub const KNOWN: &[&str] = &[
    "Active",
    "Active_anon",
    "Active_file",
    "AnonHugePages",
    "AnonPages",
    "Bounce",
    "Buffers",
    "Cached",
    "CommitLimit",
    "Committed_AS",
    "DirectMap1G",
    "DirectMap2M",
    "DirectMap4k",
    "Dirty",
    "FileHugePages",
    "FilePmdMapped",
    "HardwareCorrupted",
    "Hugetlb",
    "Hugepagesize",
    "Inactive",
    "Inactive_anon",
    "Inactive_file",
    "KReclaimable",
    "KernelStack",
    "Mapped",
    "MemAvailable",
    "MemFree",
    "MemTotal",
    "Mlocked",
    "NFS_Unstable",
    "PageTables",
    "Percpu",
    "SReclaimable",
    "SUnreclaim",
    "Shmem",
    "ShmemHugePages",
    "ShmemPmdMapped",
    "Slab",
    "SwapCached",
    "SwapFree",
    "SwapTotal",
    "Unevictable",
    "VmallocChunk",
    "VmallocTotal",
    "VmallocUsed",
    "Writeback",
    "WritebackTmp",
    "Zswap",
    "Zswapped",
];
const KNOWN_COUNTS: &[&str] = &[
    "HugePages_Free",
    "HugePages_Rsvd",
    "HugePages_Surp",
    "HugePages_Total",
];

/// Longest field name accepted (the kernel's longest is ~20): a bound on the name buffer.
const MAX_FIELD: usize = 64;

/// One meminfo line: node_exporter's name for the field, its value (bytes when the line
/// is in kB) and whether it is in bytes.
fn parse_line(line: &str, name: &mut String) -> Option<(f64, bool)> {
    let (key, rest) = line.split_once(':')?;
    let key = key.trim();
    if key.is_empty() || key.len() > MAX_FIELD {
        return None;
    }
    let mut parts = rest.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let bytes = match parts.next() {
        Some("kB") => true,
        None => false,
        Some(_) => return None,
    };
    name.clear();
    for c in key.chars() {
        match c {
            '(' => name.push('_'),
            ')' => {}
            c if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
            _ => return None,
        }
    }
    let v = value as f64;
    Some((if bytes { v * 1024.0 } else { v }, bytes))
}

#[derive(Debug)]
pub struct Meminfo;

impl Source for Meminfo {
    fn name(&self) -> &'static str {
        "meminfo"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let text = io.proc("meminfo").unwrap_or_default();
        let mut name = String::with_capacity(MAX_FIELD + 16);
        let mut field = String::with_capacity(MAX_FIELD);
        let mut help = String::with_capacity(MAX_FIELD + 32);
        let mut seen = 0usize;
        for line in text.lines() {
            let Some((v, bytes)) = parse_line(line, &mut field) else {
                continue;
            };
            seen += 1;
            name.clear();
            name.push_str("node_memory_");
            name.push_str(&field);
            help.clear();
            help.push_str("Memory information field ");
            help.push_str(&field);
            help.push('.');
            one(
                enc,
                &name,
                &help,
                bytes.then_some(()).and(BYTES),
                Gauge,
                Some(v),
            )?;
        }
        // The known names this kernel does not have: described, no sample.
        let has = |f: &str| text.lines().any(|l| key_is(l, f));
        for (list, unit) in [(KNOWN, BYTES), (KNOWN_COUNTS, None)] {
            for f in list {
                if !has(f) {
                    name.clear();
                    name.push_str("node_memory_");
                    name.push_str(f);
                    one(
                        enc,
                        &name,
                        "Memory information field (absent on this kernel).",
                        unit,
                        Gauge,
                        None,
                    )?;
                }
            }
        }
        Ok(Outcome::from_ok(seen > 0))
    }
}

/// Whether a meminfo line is for node_exporter's field name `f`.
fn key_is(line: &str, f: &str) -> bool {
    let Some((key, _)) = line.split_once(':') else {
        return false;
    };
    let key = key.trim();
    // `Active(anon)` is `Active_anon`.
    match key.split_once('(') {
        Some((a, b)) => f
            .strip_prefix(a)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|r| Some(r) == b.strip_suffix(')')),
        None => key == f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    const MEMINFO: &str = "\
MemTotal:       24558940 kB
MemFree:        18000000 kB
MemAvailable:   23000000 kB
Active(anon):     123456 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
Bogus line without colon
Weird: 12 MB
NewField:  18446744073709551615 kB
";

    #[test]
    fn every_field_under_node_exporter_names() {
        let fx = Fixture::new(&[("meminfo", MEMINFO)]);
        let page = render(Meminfo, fx.path(), fx.path());
        for l in [
            "node_memory_MemTotal_bytes 25148354560.0",
            "node_memory_Active_anon_bytes 126418944.0",
            "node_memory_HugePages_Total 0.0",
            "node_memory_Hugepagesize_bytes 2097152.0",
            // A field this code has never heard of is exported too; huge values survive.
            "node_memory_NewField_bytes 1.888946593147858e22",
        ] {
            assert!(has(&page, l), "{l} in\n{page}");
        }
        assert!(!page.contains("Weird"), "unknown unit skipped\n{page}");
        // Known but absent here: described once, without a sample.
        assert_eq!(
            page.matches("# TYPE node_memory_SwapTotal_bytes gauge")
                .count(),
            1
        );
        assert_eq!(
            page.matches("# TYPE node_memory_MemTotal_bytes gauge")
                .count(),
            1
        );
        assert_eq!(
            page.matches("# TYPE node_memory_Active_anon_bytes gauge")
                .count(),
            1
        );
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"meminfo\"} 1.0"
        ));
    }

    #[test]
    fn missing_file_still_describes_the_known_fields() {
        let fx = Fixture::new(&[]);
        let page = render(Meminfo, fx.path(), fx.path());
        assert!(page.contains("# TYPE node_memory_MemAvailable_bytes gauge"));
        assert!(page.contains("# TYPE node_memory_HugePages_Free gauge"));
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"meminfo\"} 0.0"
        ));
    }
}
