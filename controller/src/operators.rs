//! More than one operator: `fleetctl admin add|list|revoke`. Each operator is an admin
//! identity (`spiffe://TD/admin/NAME`, its key made where the operator is) that the
//! controller holds by name with a role; the access table (fleet_proto::access) says
//! which role each RPC needs, and the authorization layer asks [`Operators`] on every
//! call, so a role change or a revocation takes effect at the operator's next call.

use std::collections::HashMap;
use std::sync::RwLock;

use fleet_proto::access::OperatorRole;
use fleet_proto::identity::{Identity, Name};
use fleet_proto::v1::{
    AddAdminRequest, AddAdminResponse, AdminInfo, ListAdminsRequest, ListAdminsResponse,
    RevokeAdminRequest, RevokeAdminResponse,
};
use tonic::Status;

use crate::shared::{internal, Shared};
use crate::store::{AdminRecord, RevokedRecord, Store, StoreError};
use crate::timefmt::now_secs;

/// The first admin, made by `fleet-controller init` before operators had records: it
/// holds the admin role until a record says otherwise.
pub const FIRST_ADMIN: &str = "admin";
/// Serials kept per operator (renewals add one each).
const SERIALS_KEPT: usize = 16;

/// Each operator's role, or None once revoked: read on every call.
#[derive(Default)]
pub struct Operators(RwLock<HashMap<String, Option<OperatorRole>>>);

impl Operators {
    pub fn load(store: &Store) -> Result<Operators, StoreError> {
        let mut map = HashMap::new();
        for a in store.admins()? {
            let role = a.role.parse::<OperatorRole>().ok();
            map.insert(a.name, role.filter(|_| a.revoked_at == 0));
        }
        Ok(Operators(RwLock::new(map)))
    }

    /// The role of the operator `name`, or why it has none.
    pub fn role(&self, name: &str) -> Result<OperatorRole, String> {
        match self.0.read().expect("operators lock").get(name) {
            Some(Some(role)) => Ok(*role),
            Some(None) => Err(format!("operator {name} is revoked")),
            None if name == FIRST_ADMIN => Ok(OperatorRole::Admin),
            None => Err(format!(
                "{name} is not an operator of this fleet: an admin adds one with `fleetctl admin add`"
            )),
        }
    }

    fn set(&self, name: &str, role: Option<OperatorRole>) {
        self.0
            .write()
            .expect("operators lock")
            .insert(name.to_owned(), role);
    }
}

fn name(s: &str) -> Result<Name, Status> {
    s.parse()
        .map_err(|e| Status::invalid_argument(format!("operator name: {e}")))
}

fn first_admin_record() -> AdminRecord {
    AdminRecord {
        name: FIRST_ADMIN.into(),
        role: OperatorRole::Admin.as_str().into(),
        created_at: 0,
        created_by: "fleet-controller init".into(),
        revoked_at: 0,
        serials: Vec::new(),
        not_afters: Vec::new(),
    }
}

/// Every operator, the first admin included even without a record.
fn all(shared: &Shared) -> Result<Vec<AdminRecord>, Status> {
    let mut admins = shared.store.admins().map_err(internal)?;
    if !admins.iter().any(|a| a.name == FIRST_ADMIN) {
        admins.insert(0, first_admin_record());
    }
    Ok(admins)
}

pub fn add(shared: &Shared, actor: &str, req: AddAdminRequest) -> Result<AddAdminResponse, Status> {
    let name = name(&req.name)?;
    let role: OperatorRole = req
        .role
        .parse()
        .map_err(|e: fleet_proto::access::UnknownRole| Status::invalid_argument(e.to_string()))?;
    let existing = shared.store.admin(name.as_str()).map_err(internal)?;
    let taken = match &existing {
        Some(a) => a.revoked_at == 0,
        None => name.as_str() == FIRST_ADMIN,
    };
    if taken {
        return Err(Status::already_exists(format!(
            "operator {name} exists: pick another name, or `fleetctl admin revoke {name}` first"
        )));
    }
    let identity = Identity::admin(shared.ca.trust_domain().clone(), name.clone());
    let csr =
        crate::pki::parse_csr(&req.csr_pem).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let issued = shared
        .ca
        .issue_client(&csr, &identity, shared.settings.admin_cert_lifetime)
        .map_err(|e| {
            tracing::error!(error = %e, "issuing an operator certificate failed");
            Status::internal(format!("cannot issue the certificate: {e}"))
        })?;
    let rec = AdminRecord {
        name: name.to_string(),
        role: role.as_str().into(),
        created_at: now_secs(),
        created_by: actor.to_owned(),
        revoked_at: 0,
        serials: vec![issued.serial.clone()],
        not_afters: vec![issued.not_after],
    };
    shared.store.put_admin(&rec).map_err(internal)?;
    shared.operators.set(name.as_str(), Some(role));
    shared
        .audit(
            actor,
            "admin.add",
            &identity.uri(),
            &format!("role {role}, certificate {}", issued.serial),
        )
        .map_err(internal)?;
    Ok(AddAdminResponse {
        cert_pem: issued.cert_pem,
        ca_pem: shared.ca.cert_pem().to_owned(),
        not_after: issued.not_after,
        serial: issued.serial,
    })
}

pub fn list(shared: &Shared, _req: ListAdminsRequest) -> Result<ListAdminsResponse, Status> {
    Ok(ListAdminsResponse {
        admins: all(shared)?
            .into_iter()
            .map(|a| AdminInfo {
                name: a.name,
                role: a.role,
                created_at: a.created_at,
                created_by: a.created_by,
                revoked_at: a.revoked_at,
            })
            .collect(),
    })
}

/// A renewal (`fleetctl identity renew`) issued `serial` to `name`: kept, so revoking the
/// operator revokes it too.
pub fn renewed(shared: &Shared, name: &str, serial: &str, not_after: i64) -> Result<(), Status> {
    let mut rec = match shared.store.admin(name).map_err(internal)? {
        Some(r) => r,
        None if name == FIRST_ADMIN => first_admin_record(),
        None => return Ok(()),
    };
    rec.serials.push(serial.to_owned());
    rec.not_afters.push(not_after);
    let cut = rec.serials.len().saturating_sub(SERIALS_KEPT);
    rec.serials.drain(..cut);
    rec.not_afters.drain(..cut.min(rec.not_afters.len()));
    shared.store.put_admin(&rec).map_err(internal)
}

pub fn revoke(
    shared: &Shared,
    actor: &str,
    req: RevokeAdminRequest,
) -> Result<RevokeAdminResponse, Status> {
    let name = name(&req.name)?;
    let admins = all(shared)?;
    let Some(mut rec) = admins.iter().find(|a| a.name == name.as_str()).cloned() else {
        return Err(Status::not_found(format!(
            "no operator {name}: see `fleetctl admin list`"
        )));
    };
    if rec.revoked_at > 0 {
        return Ok(RevokeAdminResponse {
            revoked_serials: rec.serials,
        });
    }
    let admins_left = admins
        .iter()
        .filter(|a| {
            a.revoked_at == 0 && a.role == OperatorRole::Admin.as_str() && a.name != rec.name
        })
        .count();
    if rec.role == OperatorRole::Admin.as_str() && admins_left == 0 {
        return Err(Status::failed_precondition(format!(
            "{name} is the last operator with the admin role: add another admin first (`fleetctl admin add NAME --role admin`); nothing was revoked"
        )));
    }
    let now = now_secs();
    rec.revoked_at = now;
    shared.store.put_admin(&rec).map_err(internal)?;
    // The name is refused from now on, whatever certificate it presents; the serials are
    // revoked too, so the TLS layer refuses them at the handshake.
    shared.operators.set(name.as_str(), None);
    let identity = Identity::admin(shared.ca.trust_domain().clone(), name.clone()).uri();
    for (i, serial) in rec.serials.iter().enumerate() {
        let not_after = rec
            .not_afters
            .get(i)
            .copied()
            .unwrap_or(now + 367 * 24 * 3600);
        shared
            .store
            .revoke(&RevokedRecord {
                serial: serial.clone(),
                identity: identity.clone(),
                revoked_at: now,
                not_after,
            })
            .map_err(internal)?;
        shared.revocations.insert(serial.clone());
    }
    shared
        .audit(
            actor,
            "admin.revoke",
            &identity,
            &format!("role {}, {} certificate(s)", rec.role, rec.serials.len()),
        )
        .map_err(internal)?;
    Ok(RevokeAdminResponse {
        revoked_serials: rec.serials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_records_and_the_first_admin_has_one_without() {
        let ops = Operators::default();
        assert_eq!(ops.role(FIRST_ADMIN), Ok(OperatorRole::Admin));
        assert!(ops.role("alice").unwrap_err().contains("not an operator"));
        ops.set("alice", Some(OperatorRole::Viewer));
        assert_eq!(ops.role("alice"), Ok(OperatorRole::Viewer));
        ops.set("alice", None);
        assert!(ops.role("alice").unwrap_err().contains("revoked"));
        ops.set(FIRST_ADMIN, None);
        assert!(
            ops.role(FIRST_ADMIN).is_err(),
            "a revoked first admin stays revoked"
        );
    }
}
