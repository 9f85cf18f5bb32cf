//! Firewall policy: a typed model parsed from TOML, the anti-lockout check and the
//! rendering of the agent-owned `inet fleet` table as one atomic `nft -f` file.
//!
//! Nothing from the policy reaches nft as raw text: every value is parsed into a typed
//! value (addresses, prefixes, ports, names matching `[a-z0-9_-]`) and the file is
//! written from those values only. The controller and the agent both use this module,
//! so a policy the controller accepts is rendered the same way on every host.

use std::collections::BTreeMap;
use std::time::Duration;

mod cidr;
mod lockout;
mod parse;
mod render;
mod rule;
#[cfg(test)]
mod tests;

pub use cidr::Cidr;
pub use rule::{PortRange, Proto, Rule, Sources};

/// The only table the agent ever touches.
pub const TABLE: &str = "inet fleet";
/// The agent's metrics port, opened to `prometheus_sources`.
pub const METRICS_PORT: u16 = 9437;
pub const SSH_PORT: u16 = 22;
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONFIRM_AFTER: Duration = Duration::from_secs(2);
pub const DEFAULT_DRIFT_CHECK: Duration = Duration::from_secs(30);

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

impl Policy {
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
}
