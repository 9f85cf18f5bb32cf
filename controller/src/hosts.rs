//! The operator's view of and actions on hosts: `fleetctl hosts`, `host set-group`,
//! `host cordon|uncordon`, `host remove`.

use fleet_proto::identity::{Identity, Name};
use fleet_proto::v1::{
    Host, HostFacts, ListHostsRequest, ListHostsResponse, RemoveHostRequest, RemoveHostResponse,
    SetHostCordonRequest, SetHostGroupRequest,
};
use tonic::Status;

use crate::paging;
use crate::shared::{internal, Shared};
use crate::store::{CordonRecord, HostRecord};
use crate::timefmt::now_secs;

/// Longest cordon reason kept.
const MAX_REASON: usize = 200;

/// Empty means "no group"; anything else follows the host-name rules, because it lands in
/// Prometheus labels and firewall policies.
pub(crate) fn group_name(group: &str) -> Result<String, Status> {
    if group.is_empty() {
        return Ok(String::new());
    }
    group
        .parse::<Name>()
        .map(|n| n.to_string())
        .map_err(|e| Status::invalid_argument(format!("group name: {e}")))
}

fn host_name(s: &str) -> Result<Name, Status> {
    s.parse()
        .map_err(|e| Status::invalid_argument(format!("host name: {e}")))
}

fn view(shared: &Shared, h: HostRecord, cordon: Option<&CordonRecord>) -> Host {
    let live = shared.sessions.up(&h.name);
    let live_now = live.is_some();
    Host {
        state: if live.is_some() { "up" } else { "down" }.into(),
        address: live.unwrap_or(h.address),
        via: shared.sessions.via(&h.name).unwrap_or_default(),
        last_seen: if live_now {
            now_secs()
        } else {
            shared
                .last_seen
                .get(&h.name)
                .unwrap_or(h.last_seen_ms)
                .max(h.last_seen_ms)
                / 1000
        },
        version: h.version.clone(),
        cert_expires: h.cert_expires,
        group: h.group.clone(),
        facts: Some(HostFacts {
            hostname: h.hostname,
            os: h.os,
            kernel: h.kernel,
            cores: h.cores,
            memory_bytes: h.memory_bytes,
            agent_version: h.version,
            metrics_port: h.metrics_port,
            package_version: h.package_version,
        }),
        cordoned: cordon.is_some(),
        cordon_reason: cordon.map(|c| c.reason.clone()).unwrap_or_default(),
        name: h.name,
    }
}

fn one(shared: &Shared, name: &Name) -> Result<Host, Status> {
    let host = shared
        .store
        .host(name.as_str())
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("no host named {name}: see `fleetctl hosts`")))?;
    let cordoned = shared.store.cordoned().map_err(internal)?;
    Ok(view(shared, host, cordoned.get(name.as_str())))
}

pub fn list(shared: &Shared, req: ListHostsRequest) -> Result<ListHostsResponse, Status> {
    let limit = paging::limit(req.limit);
    // Host names sort the same in the store as here: the token is the last name sent.
    let rows = shared
        .store
        .hosts_page(&req.page_token, limit + 1)
        .map_err(internal)?;
    let cordoned = shared.store.cordoned().map_err(internal)?;
    let (hosts, more) = paging::fill(
        rows.into_iter().map(|h| {
            let c = cordoned.get(&h.name);
            view(shared, h, c)
        }),
        limit,
    );
    let next_page_token = match (more, hosts.last()) {
        (true, Some(last)) => last.name.clone(),
        _ => String::new(),
    };
    Ok(ListHostsResponse {
        hosts,
        next_page_token,
    })
}

pub fn set_group(shared: &Shared, actor: &str, req: SetHostGroupRequest) -> Result<Host, Status> {
    let name = host_name(&req.name)?;
    let group = group_name(&req.group)?;
    let previous = shared
        .store
        .update_host(name.as_str(), |h| {
            std::mem::replace(&mut h.group, group.clone())
        })
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("no host named {name}: see `fleetctl hosts`")))?;
    let show = |g: &str| {
        if g.is_empty() {
            "(none)".to_owned()
        } else {
            g.to_owned()
        }
    };
    shared
        .audit(
            actor,
            "host.group",
            name.as_str(),
            &format!("{} -> {}", show(&previous), show(&group)),
        )
        .map_err(internal)?;
    one(shared, &name)
}

/// Keeps a host out of deploys and rollouts (`desired::targets` leaves it out), or lets
/// it back in. Nothing changes on the host itself: it keeps running what it runs.
pub fn set_cordon(shared: &Shared, actor: &str, req: SetHostCordonRequest) -> Result<Host, Status> {
    let name = host_name(&req.name)?;
    if req.reason.chars().count() > MAX_REASON || req.reason.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "the reason must be one line of at most {MAX_REASON} characters"
        )));
    }
    if shared
        .store
        .host(name.as_str())
        .map_err(internal)?
        .is_none()
    {
        return Err(Status::not_found(format!(
            "no host named {name}: see `fleetctl hosts`"
        )));
    }
    let was = shared
        .store
        .cordoned()
        .map_err(internal)?
        .contains_key(name.as_str());
    if req.cordoned {
        let rec = CordonRecord {
            by: actor.to_owned(),
            at: now_secs(),
            reason: req.reason.clone(),
        };
        shared
            .store
            .set_cordon(name.as_str(), Some(&rec))
            .map_err(internal)?;
    } else {
        shared
            .store
            .set_cordon(name.as_str(), None)
            .map_err(internal)?;
    }
    if was != req.cordoned {
        shared
            .audit(
                actor,
                if req.cordoned {
                    "host.cordon"
                } else {
                    "host.uncordon"
                },
                name.as_str(),
                &req.reason,
            )
            .map_err(internal)?;
    }
    one(shared, &name)
}

pub fn remove(
    shared: &Shared,
    actor: &str,
    req: RemoveHostRequest,
) -> Result<RemoveHostResponse, Status> {
    let name = host_name(&req.name)?;
    let identity = Identity::agent(shared.ca.trust_domain().clone(), name.clone());
    let revoked = shared
        .store
        .remove_host(name.as_str(), &identity.uri(), now_secs())
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("no host named {name}: see `fleetctl hosts`")))?;
    shared.last_seen.forget(name.as_str());
    // Durable first, then in effect: the handshake check and the live stream.
    for r in &revoked {
        shared.revocations.insert(r.serial.clone());
    }
    let was_connected = shared.sessions.close(
        name.as_str(),
        &format!("host {name} was removed by {actor}: its certificate is revoked"),
    );
    shared
        .audit(
            actor,
            "host.remove",
            name.as_str(),
            &format!("{} certificate(s) revoked", revoked.len()),
        )
        .map_err(internal)?;
    Ok(RemoveHostResponse {
        revoked_certificates: revoked.len() as u32,
        was_connected,
    })
}
