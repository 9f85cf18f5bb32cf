//! Helpers the fuzz targets share: a canonical TOML writer for validated specs (so a spec
//! can be checked to round-trip) and strict line checkers for what the renderers write.

use std::time::Duration;

use fleet_proto::spec::{AppName, AppSpec, LogMode, RESERVED_PORTS, RESERVED_USERS};
use toml::{Table, Value};

fn dur(d: Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

/// Writes `spec` back as spec TOML, every field explicit, so that parsing the result must
/// give `spec` again.
pub fn spec_to_toml(s: &AppSpec) -> String {
    let mut t = Table::new();
    t.insert("name".into(), Value::String(s.name.to_string()));
    t.insert("server".into(), Value::String(s.server.as_str().into()));
    t.insert("entry".into(), Value::String(s.entry.clone()));
    t.insert("listen".into(), Value::String(s.listen.to_string()));
    if let Some(w) = s.workers {
        t.insert("workers".into(), Value::Integer(w.into()));
    }
    let mut h = Table::new();
    h.insert("path".into(), Value::String(s.health.path.clone()));
    h.insert("timeout".into(), dur(s.health.timeout));
    h.insert("interval".into(), dur(s.health.interval));
    h.insert("failures".into(), Value::Integer(s.health.failures.into()));
    t.insert("health".into(), Value::Table(h));
    let env: Table = s
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    t.insert("env".into(), Value::Table(env));
    t.insert("secrets".into(), strings(&s.secrets));
    t.insert("user".into(), Value::String(s.user.clone()));
    t.insert(
        "releases_kept".into(),
        Value::Integer(s.releases_kept.into()),
    );
    t.insert("graceful_timeout".into(), dur(s.graceful_timeout));
    if let Some(g) = &s.group {
        t.insert("group".into(), Value::String(g.clone()));
    }
    let mut l = Table::new();
    let mode = match s.logs.mode {
        LogMode::Journal => "journal",
        LogMode::Files => "files",
    };
    l.insert("mode".into(), Value::String(mode.into()));
    if let Some(r) = &s.logs.rotation {
        if let Some(p) = r.period {
            l.insert("period".into(), Value::String(p.as_str().into()));
        }
        if let Some(m) = r.max_size {
            l.insert("max_size".into(), Value::String(m.to_string()));
        }
        l.insert("keep".into(), Value::Integer(r.keep.into()));
        l.insert("compress".into(), Value::Boolean(r.compress));
    }
    if let Some(i) = s.logs.rate_limit_interval {
        l.insert("rate_limit_interval".into(), dur(i));
    }
    if let Some(b) = s.logs.rate_limit_burst {
        l.insert("rate_limit_burst".into(), Value::Integer(b.into()));
    }
    t.insert("logs".into(), Value::Table(l));
    if !s.pre_start.is_empty() {
        t.insert("pre_start".into(), strings(&s.pre_start));
        t.insert("pre_start_timeout".into(), dur(s.pre_start_timeout));
    }
    toml::to_string(&t).expect("a TOML table always serializes")
}

/// The invariants every validated spec must hold, whatever text it came from: the values
/// that reach paths, unit files and env files are in their documented alphabets.
pub fn check_spec_invariants(s: &AppSpec) {
    let name = s.name.as_str();
    assert!(name.parse::<AppName>().is_ok(), "name {name:?}");
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "name {name:?}"
    );
    assert!(s.user != "root" && !s.user.is_empty() && s.user.is_ascii());
    assert!(!s.user.contains(['/', '\n', ' ', '.']), "user {:?}", s.user);
    assert!(s.listen.port() != 0);
    assert!(!RESERVED_PORTS.iter().any(|(p, _)| *p == s.listen.port()));
    assert!(!s.listen.ip().is_multicast(), "listen {}", s.listen);
    assert!(
        !RESERVED_USERS.contains(&s.user.as_str())
            && !s.user.starts_with('_')
            && !s.user.starts_with("systemd-"),
        "user {:?}",
        s.user
    );
    assert!(s.health.path.starts_with('/'));
    assert!(!s
        .health
        .path
        .contains(|c: char| c.is_control() || c == ' ' || c == '%'));
    assert!(
        s.entry.contains(':') && s.entry.is_ascii(),
        "entry {:?}",
        s.entry
    );
    for (k, v) in &s.env {
        assert!(valid_env_key(k), "env key {k:?}");
        assert!(!v.contains(['\n', '\r', '\0']), "env value {v:?}");
    }
    for k in &s.secrets {
        assert!(valid_env_key(k), "secret {k:?}");
        assert!(!s.env.contains_key(k));
    }
    for a in &s.pre_start {
        assert!(
            !a.is_empty() && !a.contains(|c: char| c.is_control()),
            "{a:?}"
        );
    }
    if let Some(g) = &s.group {
        assert!(g.parse::<AppName>().is_ok(), "group {g:?}");
    }
    assert_eq!(s.logs.rotation.is_some(), s.logs.mode == LogMode::Files);
}

pub fn valid_env_key(k: &str) -> bool {
    !k.is_empty()
        && k.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && k.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Splits an `Exec*=` command line the way systemd does for the forms `units.rs` writes:
/// words separated by spaces, double quotes with `\\` and `\"` escapes, `%%` and `$$`
/// for a literal `%` and `$`. Anything else (a lone `%` or `$`, another escape, an
/// unterminated quote) would be read differently by systemd, so it is an error here.
pub fn split_exec(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Ok(out);
        };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quote in {line:?}")),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('\\' | '"')) => word.push(c),
                        other => return Err(format!("escape \\{other:?} in {line:?}")),
                    },
                    Some(c @ ('%' | '$')) => {
                        if chars.next() != Some(c) {
                            return Err(format!("lone {c} in {line:?}"));
                        }
                        word.push(c);
                    }
                    Some(c) => word.push(c),
                }
            }
            if !matches!(chars.peek(), None | Some(' ')) {
                return Err(format!("text after a closing quote in {line:?}"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                if matches!(c, '"' | '\\' | '%' | '$' | '\'' | ';') {
                    return Err(format!("special {c:?} outside quotes in {line:?}"));
                }
                word.push(c);
                chars.next();
            }
        }
        out.push(word);
    }
}

/// Lines `Policy::render` writes verbatim around the rules.
const NFT_FIXED: &[&str] = &[
    "\t\tiif \"lo\" accept",
    "\t\tct state established,related accept",
    "\t\tct state invalid drop",
    "\t\ticmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } accept",
    "\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request, nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept",
];
const NFT_REJECT: &[&str] = &[
    "\t\tmeta l4proto 6 reject with tcp reset",
    "\t\treject with icmpx type admin-prohibited",
];

fn rule_name_ok(n: &str, apps: &[(String, u16)]) -> bool {
    let policy_name = !n.is_empty()
        && n.len() <= 40
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    policy_name || n == "metrics" || apps.iter().any(|(a, _)| n == format!("app-{a}"))
}

/// `{ a, b, c }` at the start of `s`: the items and what follows the closing brace.
fn braced(s: &str) -> Result<(Vec<&str>, &str), String> {
    let s = s.strip_prefix("{ ").ok_or("set must open with '{ '")?;
    let (list, rest) = s.split_once(" } ").ok_or("set must close with ' } '")?;
    Ok((list.split(", ").collect(), rest))
}

fn check_rule_line(body: &str, verdict: &str, apps: &[(String, u16)]) -> Result<(), String> {
    let mut rest = body;
    for fam in ["ip", "ip6"] {
        if let Some(r) = rest.strip_prefix(&format!("{fam} saddr ")) {
            let (cidrs, r) = braced(r)?;
            for c in cidrs {
                let (a, l) = c
                    .split_once('/')
                    .ok_or(format!("{c:?} has no prefix length"))?;
                let addr: std::net::IpAddr = a.parse().map_err(|_| format!("address {a:?}"))?;
                let len: u8 = l.parse().map_err(|_| format!("prefix {l:?}"))?;
                let (v4, max) = (addr.is_ipv4(), if addr.is_ipv4() { 32 } else { 128 });
                if v4 != (fam == "ip") || len > max {
                    return Err(format!("{c:?} under {fam}"));
                }
                let canon = fleet_proto::firewall::Cidr::parse(c).map_err(|e| e.to_string())?;
                if canon.to_string() != c {
                    return Err(format!("{c:?} is not normalised"));
                }
            }
            rest = r;
            break;
        }
    }
    let mut matched_l4 = false;
    for p in ["tcp", "udp"] {
        if let Some(r) = rest.strip_prefix(&format!("{p} dport ")) {
            let (ports, r) = braced(r)?;
            for p in ports {
                let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                let lo: u16 = lo.parse().map_err(|_| format!("port {p:?}"))?;
                let hi: u16 = hi.parse().map_err(|_| format!("port {p:?}"))?;
                if lo == 0 || lo > hi || (lo == hi && p.contains('-')) {
                    return Err(format!("port range {p:?}"));
                }
            }
            rest = r;
            matched_l4 = true;
            break;
        }
    }
    if !matched_l4 {
        for n in ["6", "17"] {
            if let Some(r) = rest.strip_prefix(&format!("meta l4proto {n} ")) {
                rest = r;
                break;
            }
        }
    }
    let name = rest
        .strip_prefix(&format!("{verdict} comment \""))
        .and_then(|r| r.strip_suffix('"'))
        .ok_or(format!(
            "rule {body:?} must end in `{verdict} comment \"NAME\"`"
        ))?;
    if !rule_name_ok(name, apps) {
        return Err(format!("rule name {name:?}"));
    }
    Ok(())
}

/// Checks that `text` is exactly what `Policy::render` documents: the table replaced in one
/// transaction, one input chain, deny rules (drop) before the fixed lines, allow rules
/// (accept) after, the reject tail only under a reject default.
pub fn check_nft(text: &str, apps: &[(String, u16)]) -> Result<(), String> {
    let body = text
        .strip_suffix('\n')
        .ok_or("file must end in a newline")?;
    if text.contains(['\r', '\0']) {
        return Err("carriage return or NUL".into());
    }
    let lines: Vec<&str> = body.split('\n').collect();
    let head = [
        "table inet fleet {}",
        "delete table inet fleet",
        "table inet fleet {",
        "\tchain input {",
    ];
    if lines.len() < head.len() + 1 + NFT_FIXED.len() + 2 || lines[..4] != head {
        return Err("bad head".into());
    }
    let policy = lines[4]
        .strip_prefix("\t\ttype filter hook input priority filter; policy ")
        .and_then(|r| r.strip_suffix(';'))
        .ok_or("bad chain header")?;
    if policy != "accept" && policy != "drop" {
        return Err(format!("chain policy {policy:?}"));
    }
    if lines[lines.len() - 2..] != ["\t}", "}"] {
        return Err("bad tail".into());
    }
    let rules = &lines[5..lines.len() - 2];
    let fixed_at = rules
        .iter()
        .position(|l| *l == NFT_FIXED[0])
        .ok_or("fixed lines missing")?;
    if rules.len() < fixed_at + NFT_FIXED.len()
        || rules[fixed_at..fixed_at + NFT_FIXED.len()] != *NFT_FIXED
    {
        return Err("fixed lines out of order".into());
    }
    for l in &rules[..fixed_at] {
        let b = l.strip_prefix("\t\t").ok_or("rule indent")?;
        check_rule_line(b, "drop", apps)?;
    }
    let mut allows = &rules[fixed_at + NFT_FIXED.len()..];
    if allows.ends_with(NFT_REJECT) {
        if policy != "drop" {
            return Err("reject tail under an accept policy".into());
        }
        allows = &allows[..allows.len() - NFT_REJECT.len()];
    }
    for l in allows {
        let b = l.strip_prefix("\t\t").ok_or("rule indent")?;
        check_rule_line(b, "accept", apps)?;
    }
    Ok(())
}
