//! Small single-file collectors: `filefd` (/proc/sys/fs/file-nr), `conntrack`
//! (/proc/sys/net/netfilter), `loadavg`, `time`, `uname` and the
//! `node_exporter_build_info` compatibility series.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::Gauge;

use super::source::{fam, one, Collected, Outcome, Reader, Source, SECONDS};

/// The node_exporter release whose names, labels and defaults the agent follows; the
/// `version` label of `node_exporter_build_info`.
pub const NODE_EXPORTER_COMPAT: &str = "1.5.0";

fn num(text: &str) -> Option<f64> {
    text.trim().parse::<u64>().ok().map(|v| v as f64)
}

#[derive(Debug)]
pub struct Filefd;

/// `allocated unused maximum`.
pub fn parse_file_nr(text: &str) -> Option<(f64, f64)> {
    let mut f = text.split_whitespace();
    let allocated = num(f.next()?)?;
    let _unused = f.next()?;
    Some((allocated, num(f.next()?)?))
}

impl Source for Filefd {
    fn name(&self) -> &'static str {
        "filefd"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let v = io.proc("sys/fs/file-nr").ok().and_then(parse_file_nr);
        one(
            enc,
            "node_filefd_allocated",
            "File descriptor statistics: allocated.",
            None,
            Gauge,
            v.map(|v| v.0),
        )?;
        one(
            enc,
            "node_filefd_maximum",
            "File descriptor statistics: maximum.",
            None,
            Gauge,
            v.map(|v| v.1),
        )?;
        Ok(Outcome::from_ok(v.is_some()))
    }
}

#[derive(Debug)]
pub struct Conntrack;

impl Source for Conntrack {
    fn name(&self) -> &'static str {
        "conntrack"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        // Absent until nf_conntrack is loaded (the agent's nftables policy loads it).
        let count = io
            .proc("sys/net/netfilter/nf_conntrack_count")
            .ok()
            .and_then(num);
        let max = io
            .proc("sys/net/netfilter/nf_conntrack_max")
            .ok()
            .and_then(num);
        one(
            enc,
            "node_nf_conntrack_entries",
            "Number of currently allocated flow entries for connection tracking.",
            None,
            Gauge,
            count,
        )?;
        one(
            enc,
            "node_nf_conntrack_entries_limit",
            "Maximum size of connection tracking table.",
            None,
            Gauge,
            max,
        )?;
        Ok(Outcome::from_ok(count.is_some() && max.is_some()))
    }
}

#[derive(Debug)]
pub struct Loadavg;

pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut f = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([f.next()??, f.next()??, f.next()??])
}

impl Source for Loadavg {
    fn name(&self) -> &'static str {
        "loadavg"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let l = io.proc("loadavg").ok().and_then(parse_loadavg);
        for (i, (name, help)) in [
            ("node_load1", "1m load average."),
            ("node_load5", "5m load average."),
            ("node_load15", "15m load average."),
        ]
        .into_iter()
        .enumerate()
        {
            one(enc, name, help, None, Gauge, l.map(|l| l[i]))?;
        }
        Ok(Outcome::from_ok(l.is_some()))
    }
}

#[derive(Debug)]
pub struct Time;

impl Source for Time {
    fn name(&self) -> &'static str {
        "time"
    }

    fn collect(&self, _io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .ok();
        one(
            enc,
            "node_time",
            "System time in seconds since epoch (1970).",
            SECONDS,
            Gauge,
            now,
        )?;
        Ok(Outcome::from_ok(now.is_some()))
    }
}

#[derive(Debug)]
pub struct Uname;

impl Source for Uname {
    fn name(&self) -> &'static str {
        "uname"
    }

    fn collect(&self, _io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let u = nix::sys::utsname::uname().ok();
        let mut f = fam(
            enc,
            "node_uname_info",
            "Labeled system information as provided by the uname system call.",
            None,
            Gauge,
        )?;
        if let Some(u) = &u {
            let s = |v: &std::ffi::OsStr| v.to_string_lossy().into_owned();
            let (d, m, n, r, sy, v) = (
                s(u.domainname()),
                s(u.machine()),
                s(u.nodename()),
                s(u.release()),
                s(u.sysname()),
                s(u.version()),
            );
            f.sample(
                &[
                    ("domainname", d.as_str()),
                    ("machine", m.as_str()),
                    ("nodename", n.as_str()),
                    ("release", r.as_str()),
                    ("sysname", sy.as_str()),
                    ("version", v.as_str()),
                ],
                1.0,
            )?;
        }
        Ok(Outcome::from_ok(u.is_some()))
    }
}

/// `node_exporter_build_info`: the series node-mixin's dashboards pick instances by.
/// `version` is the node_exporter release the page is compatible with; the agent's own
/// version is in `revision` (and in `fleet_agent_build_info`). Labels as node_exporter 1.5's.
pub fn build_info(enc: &mut DescriptorEncoder) -> std::fmt::Result {
    let revision = concat!("fleet-agent-", env!("CARGO_PKG_VERSION"));
    fam(
        enc,
        "node_exporter_build_info",
        "A metric with a constant '1' value labeled by version, revision, branch, goversion from which node_exporter was built, and the goos and goarch for the build.",
        None,
        Gauge,
    )?
    .sample(
        &[
            ("branch", ""),
            ("goarch", std::env::consts::ARCH),
            ("goos", std::env::consts::OS),
            ("goversion", "none"),
            ("revision", revision),
            ("version", NODE_EXPORTER_COMPAT),
        ],
        1.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    #[test]
    fn filefd_and_conntrack() {
        let fx = Fixture::new(&[
            ("sys/fs/file-nr", "1792\t0\t9223372036854775807\n"),
            ("sys/net/netfilter/nf_conntrack_count", "17\n"),
            ("sys/net/netfilter/nf_conntrack_max", "262144\n"),
        ]);
        let page = render(Filefd, fx.path(), fx.path());
        assert!(has(&page, "node_filefd_allocated 1792.0"), "{page}");
        assert!(
            has(&page, "node_filefd_maximum 9223372036854776000.0"),
            "{page}"
        );
        let page = render(Conntrack, fx.path(), fx.path());
        assert!(has(&page, "node_nf_conntrack_entries 17.0"));
        assert!(has(&page, "node_nf_conntrack_entries_limit 262144.0"));
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"conntrack\"} 1.0"
        ));
    }

    #[test]
    fn missing_and_malformed() {
        let fx = Fixture::new(&[("sys/fs/file-nr", "12 x\n"), ("loadavg", "1.0 nope\n")]);
        let page = render(Filefd, fx.path(), fx.path());
        assert!(!page.contains("\nnode_filefd_allocated "));
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"filefd\"} 0.0"
        ));
        let page = render(Conntrack, fx.path(), fx.path());
        assert!(page.contains("# TYPE node_nf_conntrack_entries gauge"));
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"conntrack\"} 0.0"
        ));
        let page = render(Loadavg, fx.path(), fx.path());
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"loadavg\"} 0.0"
        ));
    }

    #[test]
    fn loadavg() {
        let fx = Fixture::new(&[("loadavg", "3.77 4.58 2.99 1/105 5102\n")]);
        let page = render(Loadavg, fx.path(), fx.path());
        assert!(
            has(&page, "node_load1 3.77") && has(&page, "node_load15 2.99"),
            "{page}"
        );
    }
}
