//! What an app may claim of its host: the account it runs as and the port it listens on,
//! never one the host itself or fleet needs.

use std::net::SocketAddr;

use super::{err, SpecError};

pub fn check_user(user: &str) -> Result<(), SpecError> {
    let ok = (1..=32).contains(&user.len())
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(err(
            "user",
            format!("{user:?} must match [a-z_][a-z0-9_-]{{0,31}}"),
        ));
    }
    if user == "root" {
        return Err(err(
            "user",
            "apps never run as root: name an unprivileged user (it is created if missing)",
        ));
    }
    if RESERVED_USERS.contains(&user) || user.starts_with('_') || user.starts_with("systemd-") {
        return Err(err(
            "user",
            format!(
                "{user:?} is a system account: name a user of the app's own (fleet creates it; \
                 the agent also refuses any existing account it did not create for this app)"
            ),
        ));
    }
    Ok(())
}

/// Accounts an app may never run as, whether or not they exist on a host yet: Debian's
/// static system users (base-passwd), the ones its common services create, and fleet's
/// own. Names starting with `_` or `systemd-` are refused too (Debian's convention for
/// system accounts). The agent adds the rule that matters on a real host: an existing
/// account is only used if fleet created it for this app.
pub const RESERVED_USERS: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "nogroup",
    "messagebus",
    "sshd",
    "polkitd",
    "syslog",
    "systemd",
    "tss",
    "uuidd",
    "dnsmasq",
    "avahi",
    "colord",
    "postgres",
    "mysql",
    "redis",
    "nginx",
    "apache",
    "memcache",
    "ntp",
    "chrony",
    "postfix",
    "dovecot",
    "bind",
    "statd",
    "rpc",
    "tcpdump",
    "usbmux",
    "fleet",
    "fleet-agent",
    "fleet-controller",
    "prometheus",
    "node-exporter",
    "admin",
    "operator",
    "adm",
    "staff",
    "sudo",
    "wheel",
    "shadow",
    "disk",
    "kmem",
    "tty",
    "docker",
];

/// Ports an app may never listen on: SSH, the controller's gRPC and HTTP ports and the
/// agent's default metrics port. A host's own configured metrics port is checked by its
/// agent as well.
pub const RESERVED_PORTS: &[(u16, &str)] = &[
    (22, "SSH"),
    (7443, "the fleet controller's gRPC port"),
    (7444, "the fleet controller's HTTP port (/metrics, /v1/sd)"),
    (9437, "the fleet agent's metrics port"),
];

/// An app's listen address: a unicast address (or the unspecified one, for "every
/// address") and a port nothing of the host's own needs.
pub fn check_listen(listen: &SocketAddr) -> Result<(), SpecError> {
    if listen.port() == 0 {
        return Err(err("listen", "port must not be 0"));
    }
    if let Some((_, what)) = RESERVED_PORTS.iter().find(|(p, _)| *p == listen.port()) {
        return Err(err(
            "listen",
            format!(
                "port {} is reserved for {what}: pick another port",
                listen.port()
            ),
        ));
    }
    let ip = listen.ip();
    if ip.is_multicast() {
        return Err(err(
            "listen",
            format!("{ip} is a multicast address: listen on a unicast address or 0.0.0.0"),
        ));
    }
    if let std::net::IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return Err(err(
                "listen",
                "255.255.255.255 is the broadcast address: listen on a unicast address or 0.0.0.0",
            ));
        }
    }
    Ok(())
}
