//! Firewall policy: a typed model parsed from TOML, the anti-lockout check and the
//! rendering of the agent-owned `inet fleet` table as one atomic `nft -f` file.
//!
//! Nothing from the policy reaches nft as raw text: every value is parsed into a typed
//! value (addresses, prefixes, ports, names matching `[a-z0-9_-]`) and the file is
//! written from those values only. The controller and the agent both use this module,
//! so a policy the controller accepts is rendered the same way on every host.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

/// The only table the agent ever touches.
pub const TABLE: &str = "inet fleet";
/// The agent's metrics port, opened to `prometheus_sources`.
pub const METRICS_PORT: u16 = 9437;
pub const SSH_PORT: u16 = 22;
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONFIRM_AFTER: Duration = Duration::from_secs(2);
pub const DEFAULT_DRIFT_CHECK: Duration = Duration::from_secs(30);
/// Ports the kernel picks for the agent's own connection to the controller (Linux
/// defaults are 32768-60999; wider on purpose so a tuned host is covered too).
const EPHEMERAL: PortRange = PortRange {
    lo: 1024,
    hi: 65535,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("firewall policy: {0}")]
pub struct PolicyError(pub String);

fn perr(msg: impl Into<String>) -> PolicyError {
    PolicyError(msg.into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Reject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDrift {
    Reapply,
    Report,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// IANA protocol number.
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// An inclusive port range; a single port has `lo == hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
    fn overlaps(&self, o: &PortRange) -> bool {
        self.lo <= o.hi && o.lo <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// An address prefix, normalised (host bits cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, PolicyError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| perr(format!("{s:?} is not an IP address or CIDR")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| perr(format!("{s:?}: prefix length must be 0-{max}")))?,
        };
        Ok(Cidr {
            addr: mask(addr, len),
            len,
        })
    }

    pub fn host(addr: IpAddr) -> Cidr {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, len }
    }

    fn bits(&self) -> (u128, u8) {
        match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    /// True when every address of `o` is in `self`.
    pub fn covers(&self, o: &Cidr) -> bool {
        if self.addr.is_ipv4() != o.addr.is_ipv4() || self.len > o.len {
            return false;
        }
        let ((a, w), (b, _)) = (self.bits(), o.bits());
        prefix_bits(a, w, self.len) == prefix_bits(b, w, self.len)
    }

    /// True when `self` and `o` share at least one address.
    pub fn overlaps(&self, o: &Cidr) -> bool {
        self.covers(o) || o.covers(self)
    }
}

fn prefix_bits(v: u128, width: u8, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        v >> (width - len)
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Who a rule is about: everyone, or a list of prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sources {
    Any,
    Only(Vec<Cidr>),
}

impl Sources {
    fn covers(&self, c: &Cidr) -> bool {
        match self {
            Sources::Any => true,
            Sources::Only(v) => v.iter().any(|s| s.covers(c)),
        }
    }
    fn overlaps(&self, c: &Cidr) -> bool {
        match self {
            Sources::Any => true,
            Sources::Only(v) => v.iter().any(|s| s.overlaps(c)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// None: both TCP and UDP.
    pub proto: Option<Proto>,
    /// Empty: every port.
    pub ports: Vec<PortRange>,
    pub sources: Sources,
    /// Empty: every host.
    pub groups: Vec<String>,
}

impl Rule {
    fn protos(&self) -> Vec<Proto> {
        match self.proto {
            Some(p) => vec![p],
            None => vec![Proto::Tcp, Proto::Udp],
        }
    }
    fn hits_port(&self, proto: Proto, port: &PortRange) -> bool {
        self.proto.is_none_or(|p| p == proto)
            && (self.ports.is_empty() || self.ports.iter().any(|r| r.overlaps(port)))
    }
    fn opens_port(&self, proto: Proto, port: u16) -> bool {
        self.proto.is_none_or(|p| p == proto)
            && (self.ports.is_empty() || self.ports.iter().any(|r| r.contains(port)))
    }
}

/// A parsed, validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub default: Verdict,
    pub on_drift: OnDrift,
    pub confirm_timeout: Duration,
    /// How long the new rules must carry the controller's stream before they are
    /// confirmed: rules that break it a little later are still caught.
    pub confirm_after: Duration,
    pub drift_check: Duration,
    pub admin_sources: Vec<Cidr>,
    pub prometheus_sources: Vec<Cidr>,
    pub groups: BTreeMap<String, Vec<String>>,
    /// Per-app source restriction of the app's listen port; apps not listed are open.
    pub app_sources: BTreeMap<String, Sources>,
    pub deny: Vec<Rule>,
    pub allow: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    on_drift: Option<String>,
    #[serde(default)]
    confirm_timeout: Option<String>,
    #[serde(default)]
    confirm_after: Option<String>,
    #[serde(default)]
    drift_check: Option<String>,
    #[serde(default)]
    admin_sources: Option<Vec<String>>,
    #[serde(default)]
    prometheus_sources: Vec<String>,
    #[serde(default)]
    sets: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    app_sources: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    allow: Vec<RawRule>,
    #[serde(default)]
    deny: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    proto: Option<String>,
    #[serde(default)]
    ports: Vec<RawPort>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    One(u16),
    Range(String),
}

fn check_name(what: &str, n: &str) -> Result<(), PolicyError> {
    let ok = !n.is_empty()
        && n.len() <= 40
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(perr(format!(
            "{what} {n:?} must match [a-z][a-z0-9_-]{{0,39}}"
        )))
    }
}

fn duration(field: &str, v: Option<String>, default: Duration) -> Result<Duration, PolicyError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(&s).map_err(|e| perr(format!("{field} = {s:?}: {e}"))),
    }
}

fn port_range(p: &RawPort) -> Result<PortRange, PolicyError> {
    let r = match p {
        RawPort::One(n) => PortRange { lo: *n, hi: *n },
        RawPort::Range(s) => {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            let parse = |x: &str| {
                x.trim()
                    .parse::<u16>()
                    .map_err(|_| perr(format!("port {s:?} must be N or N-M")))
            };
            PortRange {
                lo: parse(a)?,
                hi: parse(b)?,
            }
        }
    };
    if r.lo == 0 || r.lo > r.hi {
        return Err(perr(format!("port range {r} is empty or includes 0")));
    }
    Ok(r)
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| perr(e.to_string()))?;
        for name in raw.sets.keys() {
            check_name("set", name)?;
        }
        let mut sets = BTreeMap::new();
        for (name, members) in &raw.sets {
            let v = members
                .iter()
                .map(|m| Cidr::parse(m))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| perr(format!("set {name}: {}", e.0)))?;
            sets.insert(name.clone(), v);
        }
        // A source is a CIDR or the name of a set; an empty list means anywhere.
        let sources = |what: &str, list: &[String]| -> Result<Sources, PolicyError> {
            if list.is_empty() {
                return Ok(Sources::Any);
            }
            let mut out = Vec::new();
            for s in list {
                // IPv6 addresses may start with a letter too: try the address first.
                if let Some(set) = sets.get(s) {
                    out.extend(set.iter().copied());
                } else if let Ok(c) = Cidr::parse(s) {
                    out.push(c);
                } else if s.starts_with(|c: char| c.is_ascii_lowercase()) && !s.contains(':') {
                    return Err(perr(format!("{what}: unknown set {s:?}")));
                } else {
                    out.push(Cidr::parse(s).map_err(|e| perr(format!("{what}: {}", e.0)))?);
                }
            }
            out.sort();
            out.dedup();
            Ok(Sources::Only(out))
        };
        for (g, hosts) in &raw.groups {
            check_name("group", g)?;
            for h in hosts {
                check_name("host", h)?;
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut rules = |kind: &str, list: &[RawRule]| -> Result<Vec<Rule>, PolicyError> {
            let mut out = Vec::new();
            for r in list {
                check_name("rule", &r.name)?;
                if !seen.insert(r.name.clone()) {
                    return Err(perr(format!("two rules are named {:?}", r.name)));
                }
                let what = format!("{kind} rule {:?}", r.name);
                let proto = match r.proto.as_deref() {
                    None | Some("any") => None,
                    Some("tcp") => Some(Proto::Tcp),
                    Some("udp") => Some(Proto::Udp),
                    Some(p) => return Err(perr(format!("{what}: proto {p:?} (tcp|udp|any)"))),
                };
                let ports = r
                    .ports
                    .iter()
                    .map(port_range)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| perr(format!("{what}: {}", e.0)))?;
                if kind == "allow" && ports.is_empty() && r.sources.is_empty() {
                    return Err(perr(format!(
                        "{what} opens every port to everyone: give ports or sources"
                    )));
                }
                for g in &r.groups {
                    if !raw.groups.contains_key(g) {
                        return Err(perr(format!("{what}: unknown group {g:?}")));
                    }
                }
                out.push(Rule {
                    name: r.name.clone(),
                    proto,
                    ports,
                    sources: sources(&what, &r.sources)?,
                    groups: r.groups.clone(),
                });
            }
            Ok(out)
        };
        let deny = rules("deny", &raw.deny)?;
        let allow = rules("allow", &raw.allow)?;
        let cidrs = |what: &str, list: &[String]| -> Result<Vec<Cidr>, PolicyError> {
            match sources(what, list)? {
                Sources::Any => Ok(Vec::new()),
                Sources::Only(v) => Ok(v),
            }
        };
        let admin_sources = match &raw.admin_sources {
            // Unset: SSH must stay open to everyone the policy could cut off.
            None => vec![
                Cidr::parse("0.0.0.0/0").expect("literal"),
                Cidr::parse("::/0").expect("literal"),
            ],
            Some(list) => cidrs("admin_sources", list)?,
        };
        let mut app_sources = BTreeMap::new();
        for (app, list) in &raw.app_sources {
            check_name("app", app)?;
            app_sources.insert(app.clone(), sources(&format!("app_sources.{app}"), list)?);
        }
        let confirm_timeout = duration(
            "confirm_timeout",
            raw.confirm_timeout,
            DEFAULT_CONFIRM_TIMEOUT,
        )?;
        let confirm_after = duration("confirm_after", raw.confirm_after, DEFAULT_CONFIRM_AFTER)?;
        if confirm_timeout < Duration::from_secs(5) || confirm_timeout > Duration::from_secs(3600) {
            return Err(perr("confirm_timeout must be between 5s and 1h"));
        }
        if confirm_after + Duration::from_secs(3) > confirm_timeout {
            return Err(perr(
                "confirm_after must leave at least 3s before confirm_timeout",
            ));
        }
        let drift_check = duration("drift_check", raw.drift_check, DEFAULT_DRIFT_CHECK)?;
        if drift_check < Duration::from_secs(1) {
            return Err(perr("drift_check must be at least 1s"));
        }
        Ok(Policy {
            default: match raw.default.as_deref() {
                None | Some("drop") => Verdict::Drop,
                Some("reject") => Verdict::Reject,
                Some("accept") => Verdict::Accept,
                Some(v) => return Err(perr(format!("default = {v:?} (drop|reject|accept)"))),
            },
            on_drift: match raw.on_drift.as_deref() {
                None | Some("reapply") => OnDrift::Reapply,
                Some("report") => OnDrift::Report,
                Some(v) => return Err(perr(format!("on_drift = {v:?} (reapply|report)"))),
            },
            confirm_timeout,
            confirm_after,
            drift_check,
            admin_sources,
            prometheus_sources: cidrs("prometheus_sources", &raw.prometheus_sources)?,
            groups: raw.groups,
            app_sources,
            deny,
            allow,
        })
    }

    fn applies(&self, rule: &Rule, host: &str) -> bool {
        rule.groups.is_empty()
            || rule.groups.iter().any(|g| {
                self.groups
                    .get(g)
                    .is_some_and(|h| h.iter().any(|x| x == host))
            })
    }

    /// The allow rules for `host`: its own, the metrics port and its apps' ports.
    fn host_allows(&self, host: &str, apps: &[(String, u16)]) -> Vec<Rule> {
        let mut out: Vec<Rule> = self
            .allow
            .iter()
            .filter(|r| self.applies(r, host))
            .cloned()
            .collect();
        if !self.prometheus_sources.is_empty() {
            out.push(Rule {
                name: "metrics".into(),
                proto: Some(Proto::Tcp),
                ports: vec![PortRange {
                    lo: METRICS_PORT,
                    hi: METRICS_PORT,
                }],
                sources: Sources::Only(self.prometheus_sources.clone()),
                groups: Vec::new(),
            });
        }
        for (app, port) in apps {
            out.push(Rule {
                name: format!("app-{app}"),
                proto: Some(Proto::Tcp),
                ports: vec![PortRange {
                    lo: *port,
                    hi: *port,
                }],
                sources: self.app_sources.get(app).cloned().unwrap_or(Sources::Any),
                groups: Vec::new(),
            });
        }
        out
    }

    /// Why this policy would cut `host` off from the controller or from SSH, naming the
    /// rule; empty when it would not. `controller` is the controller's address as the
    /// agent sees it.
    pub fn lockouts(&self, host: &str, controller: Option<IpAddr>) -> Vec<String> {
        let mut out = Vec::new();
        let deny: Vec<&Rule> = self.deny.iter().filter(|r| self.applies(r, host)).collect();
        if let Some(c) = controller {
            let c = Cidr::host(c);
            for r in &deny {
                // Deny rules come before `established`, so they cut the agent's own
                // connection: the controller's packets arrive on an ephemeral port.
                if r.sources.covers(&c) && r.hits_port(Proto::Tcp, &EPHEMERAL) {
                    out.push(format!(
                        "deny rule {:?} drops the controller's traffic (from {})",
                        r.name, c.addr
                    ));
                }
            }
        }
        let ssh = PortRange {
            lo: SSH_PORT,
            hi: SSH_PORT,
        };
        let allows = self.host_allows(host, &[]);
        for a in &self.admin_sources {
            if let Some(r) = deny
                .iter()
                .find(|r| r.sources.overlaps(a) && r.hits_port(Proto::Tcp, &ssh))
            {
                out.push(format!(
                    "deny rule {:?} blocks SSH (tcp/22) from admin source {a}",
                    r.name
                ));
                continue;
            }
            if self.default == Verdict::Accept {
                continue;
            }
            let open = allows
                .iter()
                .any(|r| r.opens_port(Proto::Tcp, SSH_PORT) && r.sources.covers(a));
            if !open {
                out.push(format!(
                    "default policy {:?} blocks SSH (tcp/22) from admin source {a}: no allow rule opens it to all of {a}",
                    self.default
                ));
            }
        }
        out
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
default = "reject"
admin_sources = ["198.18.0.1/32"]
prometheus_sources = ["198.18.0.1"]
[sets]
outer = ["198.18.0.1/32", "fd00::/64"]
v6 = ["abcd::1"]
[groups]
web = ["host1"]
[[allow]]
name = "ssh"
proto = "tcp"
ports = [22]
[[allow]]
name = "web"
proto = "tcp"
ports = [8000, "9000-9010"]
sources = ["outer"]
groups = ["web"]
"#;

    fn ctl() -> Option<IpAddr> {
        Some("198.18.0.1".parse().unwrap())
    }

    #[test]
    fn renders_a_whole_table_replacement() {
        let p = Policy::parse(BASE).unwrap();
        let t = p.render("host1", &[("shop".into(), 8080)]);
        assert!(t.starts_with("table inet fleet {}\ndelete table inet fleet\ntable inet fleet {\n"));
        assert!(t.contains("tcp dport { 22 } accept comment \"ssh\""));
        assert!(t.contains(
            "ip saddr { 198.18.0.1/32 } tcp dport { 8000, 9000-9010 } accept comment \"web\""
        ));
        assert!(t.contains("ip6 saddr { fd00::/64 } tcp dport { 8000, 9000-9010 } accept"));
        assert!(
            t.contains("ip saddr { 198.18.0.1/32 } tcp dport { 9437 } accept comment \"metrics\"")
        );
        assert!(t.contains("tcp dport { 8080 } accept comment \"app-shop\""));
        assert!(t.contains("ct state established,related accept"));
        assert!(t.contains("reject with tcp reset"));
        // Per-group rules only on the group's hosts.
        assert!(!p.render("host2", &[]).contains("\"web\""));
    }

    #[test]
    fn deny_rules_come_before_established() {
        let p = Policy::parse(&format!(
            "{BASE}\n[[deny]]\nname = \"bad\"\nsources = [\"10.0.0.0/8\"]\n"
        ))
        .unwrap();
        let t = p.render("host1", &[]);
        let deny = t.find("drop comment \"bad\"").unwrap();
        assert!(deny < t.find("established").unwrap());
    }

    #[test]
    fn cidrs_are_normalised_and_compared() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.covers(&Cidr::parse("10.9.0.0/16").unwrap()));
        assert!(!c.covers(&Cidr::parse("11.0.0.0/16").unwrap()));
        assert!(!c.covers(&Cidr::parse("::/0").unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .covers(&Cidr::parse("1.2.3.4").unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten").is_err());
    }

    #[test]
    fn nothing_untyped_gets_through() {
        for bad in [
            "[[allow]]\nname = \"x; flush ruleset\"\nports = [1]\n",
            "[[allow]]\nname = \"x\"\nports = [1]\nsources = [\"1.2.3.4 } accept\"]\n",
            "[[allow]]\nname = \"x\"\nports = [\"1-x\"]\n",
            "[[allow]]\nname = \"x\"\nproto = \"icmp\"\nports = [1]\n",
            "[[allow]]\nname = \"x\"\nports = [1]\nsources = [\"nosuchset\"]\n",
            "[[allow]]\nname = \"x\"\n",
            "default = \"maybe\"\n",
            "bogus = 1\n",
            "confirm_timeout = \"1s\"\n",
        ] {
            assert!(Policy::parse(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn a_policy_keeping_ssh_and_controller_is_not_a_lockout() {
        let p = Policy::parse(BASE).unwrap();
        assert_eq!(p.lockouts("host1", ctl()), Vec::<String>::new());
    }

    #[test]
    fn dropping_the_controller_is_named() {
        let p = Policy::parse(&format!(
            "{BASE}\n[[deny]]\nname = \"outside\"\nsources = [\"198.18.0.0/24\"]\n"
        ))
        .unwrap();
        let why = p.lockouts("host1", ctl());
        assert!(why
            .iter()
            .any(|w| w.contains("\"outside\"") && w.contains("controller")));
        assert!(why.iter().any(|w| w.contains("SSH")));
    }

    #[test]
    fn a_deny_on_an_unrelated_port_locks_nothing_out() {
        let p = Policy::parse(&format!(
            "{BASE}\n[[deny]]\nname = \"smtp\"\nproto = \"tcp\"\nports = [25]\n"
        ))
        .unwrap();
        assert!(p.lockouts("host1", ctl()).is_empty());
    }

    #[test]
    fn ssh_missing_under_default_drop_is_refused() {
        let p = Policy::parse(
            "default = \"drop\"\nadmin_sources = [\"198.18.0.1\"]\n[[allow]]\nname = \"ssh-office\"\nproto = \"tcp\"\nports = [22]\nsources = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let why = p.lockouts("host1", ctl());
        assert_eq!(why.len(), 1);
        assert!(why[0].contains("SSH") && why[0].contains("198.18.0.1/32"));
        // Accept-by-default never blocks SSH.
        let p = Policy::parse("default = \"accept\"\n").unwrap();
        assert!(p.lockouts("host1", ctl()).is_empty());
    }
}
