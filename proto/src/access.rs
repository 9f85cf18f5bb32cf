//! Who may call which RPC. The controller consults [`access_for`] for every request before
//! it reaches a handler; a method missing from this table is refused (fail closed), and a
//! test checks that every RPC in `fleet.proto` is listed.

use crate::identity::Role;

/// What a caller must present to call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No client certificate needed (enrollment only).
    Anonymous,
    /// A client certificate with this role.
    Role(Role),
    /// An operator's (admin) certificate whose name the controller holds with at least
    /// this operator role.
    Operator(OperatorRole),
}

/// What an operator may do; each role may do everything the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperatorRole {
    /// Reads: hosts, apps, status, logs, rollouts, audit.
    Viewer,
    /// Also apps, releases, secrets, deploys and rollouts.
    Deployer,
    /// Everything: tokens, hosts, firewall, agent upgrades, operators, backups.
    Admin,
}

impl OperatorRole {
    pub const ALL: [OperatorRole; 3] = [
        OperatorRole::Viewer,
        OperatorRole::Deployer,
        OperatorRole::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Viewer => "viewer",
            OperatorRole::Deployer => "deployer",
            OperatorRole::Admin => "admin",
        }
    }
}

impl std::fmt::Display for OperatorRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}: one of viewer, deployer, admin")]
pub struct UnknownRole(String);

impl std::str::FromStr for OperatorRole {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OperatorRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.chars().take(32).collect()))
    }
}

const VIEW: Access = Access::Operator(OperatorRole::Viewer);
const DEPLOY: Access = Access::Operator(OperatorRole::Deployer);

/// `(service, method or "*", access)`; the first match wins. An Admin method not named
/// here needs the admin operator role.
const RULES: &[(&str, &str, Access)] = &[
    ("fleet.v1.Enrollment", "Join", Access::Anonymous),
    (
        "fleet.v1.AgentChannel",
        "Session",
        Access::Role(Role::Agent),
    ),
    ("fleet.v1.Admin", "ListHosts", VIEW),
    ("fleet.v1.Admin", "ListAudit", VIEW),
    ("fleet.v1.Admin", "GetControllers", VIEW),
    ("fleet.v1.Admin", "Events", VIEW),
    ("fleet.v1.Admin", "ListTokens", VIEW),
    ("fleet.v1.Admin", "ListApps", VIEW),
    ("fleet.v1.Admin", "GetApp", VIEW),
    ("fleet.v1.Admin", "ListReleases", VIEW),
    ("fleet.v1.Admin", "ListSecrets", VIEW),
    ("fleet.v1.Admin", "Status", VIEW),
    ("fleet.v1.Admin", "Logs", VIEW),
    ("fleet.v1.Admin", "ShowFirewall", VIEW),
    ("fleet.v1.Admin", "FirewallStatus", VIEW),
    ("fleet.v1.Admin", "WatchRollout", VIEW),
    ("fleet.v1.Admin", "ListAgentPackages", VIEW),
    ("fleet.v1.Admin", "ListAdmins", VIEW),
    // Every operator renews their own certificate.
    ("fleet.v1.Admin", "RenewIdentity", VIEW),
    ("fleet.v1.Admin", "ApplyApp", DEPLOY),
    ("fleet.v1.Admin", "UploadRelease", DEPLOY),
    ("fleet.v1.Admin", "RemoveRelease", DEPLOY),
    ("fleet.v1.Admin", "SetSecret", DEPLOY),
    ("fleet.v1.Admin", "UnsetSecret", DEPLOY),
    ("fleet.v1.Admin", "Deploy", DEPLOY),
    ("fleet.v1.Admin", "RestartApp", DEPLOY),
    ("fleet.v1.Admin", "StartRollout", DEPLOY),
    ("fleet.v1.Admin", "ControlRollout", DEPLOY),
    ("fleet.v1.Admin", "SetHostCordon", DEPLOY),
    ("fleet.v1.Admin", "SetAppRunning", DEPLOY),
    ("fleet.v1.Admin", "RemoveApp", DEPLOY),
    ("fleet.v1.Admin", "Exec", DEPLOY),
    ("fleet.v1.Admin", "*", Access::Operator(OperatorRole::Admin)),
];

/// The controller-peer role: a standby relays calls to the leader in the controller
/// identity and names the caller it speaks for (docs/ha.md); the leader then applies
/// that caller's rule above. No RPC admits the controller role in its own name, so a
/// relay can do nothing but relay.
pub fn may_relay(role: Role) -> bool {
    role == Role::Controller
}

/// The access rule for a gRPC request path (`/package.Service/Method`), or `None` when the
/// path names no RPC declared in `fleet.proto` (a service's `"*"` rule covers only the
/// methods it declares, never invented ones).
pub fn access_for(path: &str) -> Option<Access> {
    method(path)?;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    RULES
        .iter()
        .find(|(s, m, _)| *s == service && (*m == "*" || *m == method))
        .map(|(_, _, access)| *access)
}

/// One RPC of `fleet.proto`: its request path and whether each side streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method {
    /// `/fleet.v1.Service/Method`, as it appears in a request's `:path`.
    pub path: &'static str,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

impl Method {
    /// Neither side streams: the call is one request and one response.
    pub fn is_unary(&self) -> bool {
        !self.client_streaming && !self.server_streaming
    }
}

/// Every RPC declared in `fleet.proto`, read from the proto itself (compiled in) so the
/// list cannot drift from the generated services.
pub fn methods() -> &'static [Method] {
    static METHODS: std::sync::OnceLock<Vec<Method>> = std::sync::OnceLock::new();
    METHODS.get_or_init(|| parse_methods(include_str!("../proto/fleet/v1/fleet.proto")))
}

/// The RPC a request path names, if fleet serves it. Callers use the returned `path`
/// (a `'static` str) instead of the caller-supplied one, e.g. as a metric label.
pub fn method(path: &str) -> Option<&'static Method> {
    methods().iter().find(|m| m.path == path)
}

fn parse_methods(proto: &'static str) -> Vec<Method> {
    let mut out = Vec::new();
    let mut service: Option<&str> = None;
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next();
        } else if let (Some(rest), Some(service)) = (line.strip_prefix("rpc "), service) {
            let Some((name, sig)) = rest.split_once('(') else {
                continue;
            };
            let Some((request, response)) = sig.split_once("returns") else {
                continue;
            };
            let path: &'static str =
                Box::leak(format!("/fleet.v1.{service}/{}", name.trim()).into_boxed_str());
            out.push(Method {
                path,
                client_streaming: request.trim_start().starts_with("stream "),
                server_streaming: response
                    .trim_start()
                    .trim_start_matches('(')
                    .trim_start()
                    .starts_with("stream "),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relaying_role_may_call_nothing_in_its_own_name() {
        assert!(may_relay(Role::Controller));
        assert!(!may_relay(Role::Agent) && !may_relay(Role::Admin));
        for m in methods() {
            assert_ne!(
                access_for(m.path),
                Some(Access::Role(Role::Controller)),
                "{}",
                m.path
            );
        }
    }

    #[test]
    fn only_join_is_anonymous() {
        assert_eq!(
            access_for("/fleet.v1.Enrollment/Join"),
            Some(Access::Anonymous)
        );
        assert_eq!(
            access_for("/fleet.v1.AgentChannel/Session"),
            Some(Access::Role(Role::Agent))
        );
        assert_eq!(
            access_for("/fleet.v1.Admin/ListHosts"),
            Some(Access::Operator(OperatorRole::Viewer))
        );
        assert_eq!(
            access_for("/fleet.v1.Admin/Deploy"),
            Some(Access::Operator(OperatorRole::Deployer))
        );
        assert_eq!(
            access_for("/fleet.v1.Admin/CreateToken"),
            Some(Access::Operator(OperatorRole::Admin))
        );
        assert_eq!(access_for("/fleet.v1.Enrollment/Other"), None);
        assert_eq!(access_for("/grpc.reflection.v1.ServerReflection/X"), None);
        assert_eq!(access_for("garbage"), None);
        assert_eq!(access_for("/fleet.v1.Admin/NoSuchMethod"), None);
        assert_eq!(access_for("/fleet.v1.Admin/ListHosts/x"), None);
    }

    #[test]
    fn methods_know_which_side_streams() {
        let m = |p| *method(p).unwrap();
        assert!(m("/fleet.v1.Admin/ListHosts").is_unary());
        assert!(m("/fleet.v1.Enrollment/Join").is_unary());
        let session = m("/fleet.v1.AgentChannel/Session");
        assert!(session.client_streaming && session.server_streaming);
        let upload = m("/fleet.v1.Admin/UploadRelease");
        assert!(upload.client_streaming && !upload.server_streaming);
        let deploy = m("/fleet.v1.Admin/Deploy");
        assert!(!deploy.client_streaming && deploy.server_streaming);
        assert!(methods().len() >= 20, "{:?}", methods());
    }

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(OperatorRole::Viewer < OperatorRole::Deployer);
        assert!(OperatorRole::Deployer < OperatorRole::Admin);
        for r in OperatorRole::ALL {
            assert_eq!(r.as_str().parse::<OperatorRole>().unwrap(), r);
        }
        assert!("root".parse::<OperatorRole>().is_err());
    }

    /// Each named Admin rule names a real RPC: a typo would leave that RPC admin-only.
    #[test]
    fn every_named_rule_is_an_rpc() {
        for (service, m, _) in RULES {
            if *m != "*" {
                let path = format!("/{service}/{m}");
                assert!(method(&path).is_some(), "{path} is not in fleet.proto");
            }
        }
    }

    /// Every rpc declared in fleet.proto has a rule, so adding an RPC without deciding who
    /// may call it fails here rather than being refused at run time.
    #[test]
    fn every_rpc_in_the_proto_has_a_rule() {
        let proto = include_str!("../proto/fleet/v1/fleet.proto");
        let mut service = None;
        let mut count = 0;
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next();
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().unwrap().trim();
                let path = format!("/fleet.v1.{}/{}", service.unwrap(), method);
                assert!(access_for(&path).is_some(), "{path} has no access rule");
                count += 1;
            }
        }
        assert!(count >= 6, "parsed only {count} rpcs from fleet.proto");
    }
}
