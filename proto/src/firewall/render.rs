//! The `inet fleet` table as one `nft -f` file, written from typed values only.

use std::fmt::Write as _;

use super::{Cidr, Policy, PortRange, Rule, Sources, Verdict, TABLE};

impl Policy {
    /// The complete `nft -f` file for `host`: creating then deleting the table first makes
    /// the whole file one transaction that replaces the table, whether or not it existed.
    pub fn render(&self, host: &str, apps: &[(String, u16)]) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "table {TABLE} {{}}");
        let _ = writeln!(s, "delete table {TABLE}");
        let _ = writeln!(s, "table {TABLE} {{");
        let _ = writeln!(s, "\tchain input {{");
        let policy = match self.default {
            Verdict::Accept => "accept",
            // Reject is done by the last rules: a chain policy can only accept or drop.
            Verdict::Drop | Verdict::Reject => "drop",
        };
        let _ = writeln!(
            s,
            "\t\ttype filter hook input priority filter; policy {policy};"
        );
        for r in self.deny.iter().filter(|r| self.applies(r, host)) {
            rule_lines(&mut s, r, "drop");
        }
        s.push_str("\t\tiif \"lo\" accept\n");
        s.push_str("\t\tct state established,related accept\n");
        s.push_str("\t\tct state invalid drop\n");
        // `icmp type`/`icmpv6 type` imply the protocol; `meta l4proto ipv6-icmp` would need
        // /etc/protocols, which minimal hosts (no netbase) lack.
        s.push_str(
            "\t\ticmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } accept\n",
        );
        s.push_str(
            "\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request, nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept\n",
        );
        for r in self.host_allows(host, apps) {
            rule_lines(&mut s, &r, "accept");
        }
        if self.default == Verdict::Reject {
            s.push_str("\t\tmeta l4proto 6 reject with tcp reset\n");
            s.push_str("\t\treject with icmpx type admin-prohibited\n");
        }
        s.push_str("\t}\n}\n");
        s
    }
}

/// One line per (protocol, address family) combination of a rule.
fn rule_lines(s: &mut String, r: &Rule, verdict: &str) {
    let families: Vec<(&str, Vec<Cidr>)> = match &r.sources {
        Sources::Any => vec![("", Vec::new())],
        Sources::Only(v) => {
            let v4: Vec<Cidr> = v.iter().copied().filter(|c| c.addr.is_ipv4()).collect();
            let v6: Vec<Cidr> = v.iter().copied().filter(|c| !c.addr.is_ipv4()).collect();
            let mut f = Vec::new();
            if !v4.is_empty() {
                f.push(("ip", v4));
            }
            if !v6.is_empty() {
                f.push(("ip6", v6));
            }
            f
        }
    };
    for (fam, cidrs) in &families {
        let src = if cidrs.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
            format!("{fam} saddr {{ {} }} ", list.join(", "))
        };
        if r.ports.is_empty() && r.proto.is_none() {
            let _ = writeln!(s, "\t\t{src}{verdict} comment \"{}\"", r.name);
            continue;
        }
        for p in r.protos() {
            let ports = if r.ports.is_empty() {
                // By number: names need /etc/protocols, which minimal hosts lack.
                format!("meta l4proto {} ", p.number())
            } else {
                let list: Vec<String> = r.ports.iter().map(PortRange::to_string).collect();
                format!("{p} dport {{ {} }} ", list.join(", "))
            };
            let _ = writeln!(s, "\t\t{src}{ports}{verdict} comment \"{}\"", r.name);
        }
    }
}
