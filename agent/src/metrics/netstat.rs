//! `netstat` and `sockstat` collectors: protocol counters from /proc/net/{netstat,snmp,
//! snmp6} (fields chosen like node_exporter's `--collector.netstat.fields`, untyped) and
//! socket counts from /proc/net/sockstat{,6}.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Gauge, Unknown};

use super::source::{one, Collected, FieldFilter, Filter, Outcome, Reader, Source};

/// node_exporter 1.5's (and Debian's) default `--collector.netstat.fields`.
pub const DEFAULT_FIELDS: &str = "^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$";

/// Described even where the kernel lacks them: the ones dashboards and the shipped rules use.
const KNOWN: &[&str] = &[
    "Tcp_CurrEstab",
    "Tcp_RetransSegs",
    "Tcp_OutSegs",
    "Tcp_InSegs",
    "Tcp_ActiveOpens",
    "Tcp_PassiveOpens",
    "Tcp_InErrs",
    "Tcp_OutRsts",
    "TcpExt_ListenOverflows",
    "TcpExt_ListenDrops",
    "TcpExt_TCPSynRetrans",
    "Udp_InDatagrams",
    "Udp_OutDatagrams",
    "Udp_InErrors",
    "Udp_NoPorts",
    "IpExt_InOctets",
    "IpExt_OutOctets",
];

#[derive(Debug)]
pub struct Netstat {
    pub fields: FieldFilter,
}

impl Default for Netstat {
    fn default() -> Self {
        Netstat {
            fields: FieldFilter::new(Filter::include(DEFAULT_FIELDS)),
        }
    }
}

fn ident(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// /proc/net/{netstat,snmp}: pairs of `Proto: names...` / `Proto: values...` lines.
/// Calls `f("Proto_Name", value)`.
pub fn pairs(
    text: &str,
    mut f: impl FnMut(&str, &str, f64) -> std::fmt::Result,
) -> std::fmt::Result {
    let mut lines = text.lines();
    while let (Some(h), Some(v)) = (lines.next(), lines.next()) {
        let (Some((p1, names)), Some((p2, values))) = (h.split_once(':'), v.split_once(':')) else {
            continue;
        };
        if p1 != p2 || !ident(p1) {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            // Negative values exist (Tcp MaxConn -1): kept as is.
            if let (true, Ok(v)) = (ident(n), v.parse::<i64>()) {
                f(p1, n, v as f64)?;
            }
        }
    }
    Ok(())
}

/// /proc/net/snmp6: `Ip6InReceives  123` lines; the protocol is the prefix up to the
/// first lowercase-to-uppercase boundary after a digit (`Ip6`, `Icmp6`, `Udp6`, `UdpLite6`).
pub fn snmp6(
    text: &str,
    mut f: impl FnMut(&str, &str, f64) -> std::fmt::Result,
) -> std::fmt::Result {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let Some(i) = k.find('6') else { continue };
        let (proto, name) = k.split_at(i + 1);
        if let (true, true, Ok(v)) = (ident(proto), ident(name), v.parse::<i64>()) {
            f(proto, name, v as f64)?;
        }
    }
    Ok(())
}

impl Source for Netstat {
    fn name(&self) -> &'static str {
        "netstat"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let mut name = String::with_capacity(96);
        let mut key = String::with_capacity(96);
        let mut seen: Vec<&'static str> = Vec::new();
        let mut any = false;
        for (file, v6) in [
            ("net/netstat", false),
            ("net/snmp", false),
            ("net/snmp6", true),
        ] {
            let Ok(text) = io.proc(file) else { continue };
            any = true;
            let mut emit = |proto: &str, field: &str, v: f64| {
                key.clear();
                key.push_str(proto);
                key.push('_');
                key.push_str(field);
                if !self.fields.keep(&key) {
                    return Ok(());
                }
                if let Some(k) = KNOWN.iter().find(|k| **k == key) {
                    seen.push(*k);
                }
                name.clear();
                name.push_str("node_netstat_");
                name.push_str(&key);
                one(
                    enc,
                    &name,
                    "Statistic from /proc/net/{netstat,snmp,snmp6}.",
                    None,
                    Unknown,
                    Some(v),
                )
            };
            if v6 {
                snmp6(text, &mut emit)?;
            } else {
                pairs(text, &mut emit)?;
            }
        }
        for k in KNOWN {
            if self.fields.keep(k) && !seen.contains(k) {
                name.clear();
                name.push_str("node_netstat_");
                name.push_str(k);
                one(
                    enc,
                    &name,
                    "Statistic (absent on this kernel).",
                    None,
                    Unknown,
                    None,
                )?;
            }
        }
        Ok(Outcome::from_ok(any))
    }
}

#[derive(Debug)]
pub struct Sockstat;

/// Described always; sockstat lines add more where the kernel has them.
const SOCKSTAT_KNOWN: &[&str] = &[
    "sockets_used",
    "TCP_inuse",
    "TCP_orphan",
    "TCP_tw",
    "TCP_alloc",
    "TCP_mem",
    "TCP_mem_bytes",
    "UDP_inuse",
    "UDP_mem",
    "UDP_mem_bytes",
    "UDPLITE_inuse",
    "RAW_inuse",
    "FRAG_inuse",
    "FRAG_memory",
];

/// `PROTO: key value key value` lines; `mem` (pages) also gives `mem_bytes`.
fn sockstat_lines(
    text: &str,
    page: f64,
    mut f: impl FnMut(&str, &str, &str, f64) -> std::fmt::Result,
) -> std::fmt::Result {
    for line in text.lines() {
        let Some((proto, rest)) = line.split_once(':') else {
            continue;
        };
        if !ident(proto) {
            continue;
        }
        let mut it = rest.split_whitespace();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let Ok(v) = v.parse::<u64>() else { continue };
            if !ident(k) {
                continue;
            }
            let v = v as f64;
            if proto == "sockets" && k == "used" {
                f("sockets", "used", "", v)?;
                continue;
            }
            f(proto, k, "", v)?;
            if k == "mem" {
                f(proto, k, "_bytes", v * page)?;
            }
        }
    }
    Ok(())
}

impl Source for Sockstat {
    fn name(&self) -> &'static str {
        "sockstat"
    }

    fn collect(&self, io: &mut Reader, enc: &mut DescriptorEncoder) -> Collected {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as f64;
        let mut name = String::with_capacity(64);
        let mut seen: Vec<&'static str> = Vec::new();
        let mut any = false;
        for file in ["net/sockstat", "net/sockstat6"] {
            let Ok(text) = io.proc(file) else { continue };
            any = true;
            sockstat_lines(text, page, |proto, k, suffix, v| {
                name.clear();
                name.push_str("node_sockstat_");
                name.push_str(proto);
                name.push('_');
                name.push_str(k);
                name.push_str(suffix);
                let key = &name["node_sockstat_".len()..];
                if let Some(k) = SOCKSTAT_KNOWN.iter().find(|k| **k == key) {
                    seen.push(*k);
                }
                one(
                    enc,
                    &name,
                    "Number of sockets (or memory) from /proc/net/sockstat.",
                    None,
                    Gauge,
                    Some(v),
                )
            })?;
        }
        for k in SOCKSTAT_KNOWN {
            if !seen.contains(k) {
                name.clear();
                name.push_str("node_sockstat_");
                name.push_str(k);
                one(
                    enc,
                    &name,
                    "Socket statistic (absent on this kernel).",
                    None,
                    Gauge,
                    None,
                )?;
            }
        }
        Ok(Outcome::from_ok(any))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::source::{has, render, Fixture};

    const NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPTimeouts PruneCalled
TcpExt: 0 0 12 13 99 5
IpExt: InNoRoutes InOctets OutOctets
IpExt: 0 123456789012 98765
Broken: A B
";
    const SNMP: &str = "\
Tcp: RtoAlgorithm RtoMin MaxConn ActiveOpens PassiveOpens CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts
Tcp: 1 200 -1 10 20 7 1000 2000 33 0 4
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors
Udp: 50 1 0 60 0 0
";
    const SNMP6: &str = "Ip6InReceives 10\nIp6InOctets 4096\nUdp6InDatagrams 5\nIcmp6InMsgs 2\n";

    #[test]
    fn default_fields_untyped() {
        let fx = Fixture::new(&[
            ("net/netstat", NETSTAT),
            ("net/snmp", SNMP),
            ("net/snmp6", SNMP6),
        ]);
        let page = render(Netstat::default(), fx.path(), fx.path());
        for l in [
            "node_netstat_Tcp_CurrEstab 7.0",
            "node_netstat_Tcp_RetransSegs 33.0",
            "node_netstat_TcpExt_ListenOverflows 12.0",
            "node_netstat_TcpExt_ListenDrops 13.0",
            "node_netstat_IpExt_InOctets 123456789012.0",
            "node_netstat_Udp_NoPorts 1.0",
            "node_netstat_Ip6_InOctets 4096.0",
            "node_netstat_Udp6_InDatagrams 5.0",
            "node_netstat_Icmp6_InMsgs 2.0",
        ] {
            assert!(has(&page, l), "{l} in\n{page}");
        }
        assert!(page.contains("# TYPE node_netstat_Tcp_CurrEstab unknown"));
        for gone in [
            "PruneCalled",
            "RtoMin",
            "MaxConn",
            "Ip6_InReceives",
            "Broken",
        ] {
            assert!(!page.contains(gone), "{gone}");
        }
        assert_eq!(
            page.matches("# TYPE node_netstat_Tcp_CurrEstab ").count(),
            1
        );
    }

    #[test]
    fn sockstat_counts_and_memory() {
        let fx = Fixture::new(&[
            ("net/sockstat", "sockets: used 230\nTCP: inuse 5 orphan 0 tw 2 alloc 8 mem 3\nUDP: inuse 1 mem 2\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\nJunk: a b\n"),
            ("net/sockstat6", "TCP6: inuse 2\nUDP6: inuse 1\n"),
        ]);
        let page = render(Sockstat, fx.path(), fx.path());
        for l in [
            "node_sockstat_sockets_used 230.0",
            "node_sockstat_TCP_inuse 5.0",
            "node_sockstat_TCP_tw 2.0",
            "node_sockstat_TCP_mem 3.0",
            "node_sockstat_TCP6_inuse 2.0",
            "node_sockstat_FRAG_memory 0.0",
        ] {
            assert!(has(&page, l), "{l} in\n{page}");
        }
        assert!(page
            .lines()
            .any(|l| l.starts_with("node_sockstat_TCP_mem_bytes ")));
        assert_eq!(page.matches("# TYPE node_sockstat_TCP_inuse ").count(), 1);
    }

    #[test]
    fn missing_files() {
        let fx = Fixture::new(&[]);
        let page = render(Netstat::default(), fx.path(), fx.path());
        assert!(page.contains("# TYPE node_netstat_Tcp_CurrEstab unknown"));
        assert!(has(
            &page,
            "node_scrape_collector_success{collector=\"netstat\"} 0.0"
        ));
        let page = render(Sockstat, fx.path(), fx.path());
        assert!(page.contains("# TYPE node_sockstat_TCP_inuse gauge"));
    }
}
