//! The policy TOML into a [`Policy`]: names checked, sets expanded, rules typed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{
    perr, Cidr, OnDrift, Policy, PolicyError, PortRange, Proto, Rule, Sources, Verdict,
    DEFAULT_CONFIRM_AFTER, DEFAULT_CONFIRM_TIMEOUT, DEFAULT_DRIFT_CHECK,
};

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
}
