//! The anti-lockout check: a policy that would cut a host off from its controller or
//! from SSH is refused before any host applies it.

use std::net::IpAddr;

use super::{Cidr, Policy, PortRange, Proto, Rule, Verdict, SSH_PORT};

/// Ports the kernel picks for the agent's own connection to the controller (Linux
/// defaults are 32768-60999; wider on purpose so a tuned host is covered too).
const EPHEMERAL: PortRange = PortRange {
    lo: 1024,
    hi: 65535,
};

impl Policy {
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
}
