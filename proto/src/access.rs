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
}

/// `(service, method or "*", access)`; the first match wins.
const RULES: &[(&str, &str, Access)] = &[
    ("fleet.v1.Enrollment", "Join", Access::Anonymous),
    (
        "fleet.v1.AgentChannel",
        "Session",
        Access::Role(Role::Agent),
    ),
    ("fleet.v1.Admin", "*", Access::Role(Role::Admin)),
];

/// The access rule for a gRPC request path (`/package.Service/Method`), or `None` when the
/// path names no known RPC.
pub fn access_for(path: &str) -> Option<Access> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    RULES
        .iter()
        .find(|(s, m, _)| *s == service && (*m == "*" || *m == method))
        .map(|(_, _, access)| *access)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Some(Access::Role(Role::Admin))
        );
        assert_eq!(access_for("/fleet.v1.Enrollment/Other"), None);
        assert_eq!(access_for("/grpc.reflection.v1.ServerReflection/X"), None);
        assert_eq!(access_for("garbage"), None);
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
