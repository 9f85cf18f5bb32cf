//! The controller addresses of this fleet, as the operator set them: handed to every agent
//! in Welcome, so a replica added or removed reaches `agent.toml` on every host without a
//! re-enrollment (docs/ha.md). Session starts read a cached copy, never the store: a
//! reconnect wave of 50,000 agents costs one read per `TTL`, and another replica's change
//! reaches this one's agents within it.

use std::time::Duration;

use fleet_proto::controllers::ControllerList;
use fleet_proto::v1::{
    controller_message, ControllerAddresses, ControllerMessage, SetControllersRequest, Welcome,
};
use tonic::Status;

use crate::cached::Cached;
use crate::shared::{internal, Shared};
use crate::store::ControllersRecord;
use crate::timefmt::now_secs;

/// How long another replica's change may take to reach the agents connecting here.
const TTL: Duration = Duration::from_secs(10);

/// The addresses for a Welcome, cached for `TTL`. A store that cannot be read leaves the
/// last known list (or none): the agent then keeps what it has, which is never worse.
pub fn for_welcome(shared: &Shared) -> Vec<String> {
    shared.controllers.get(
        "the controller addresses",
        || shared.store.controllers().map(|r| r.addresses),
        Vec::new,
    )
}

pub fn cache() -> Cached<Vec<String>> {
    Cached::new(TTL)
}

fn reply(rec: ControllersRecord) -> ControllerAddresses {
    ControllerAddresses {
        addresses: rec.addresses,
        set_by: rec.by,
        set_at: rec.at,
    }
}

pub fn get(shared: &Shared) -> Result<ControllerAddresses, Status> {
    shared.store.controllers().map(reply).map_err(internal)
}

pub fn set(
    shared: &Shared,
    actor: &str,
    req: SetControllersRequest,
) -> Result<ControllerAddresses, Status> {
    // Empty clears the list; anything else must be a whole valid one.
    let addresses = if req.addresses.is_empty() {
        Vec::new()
    } else {
        ControllerList::new(&req.addresses)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .addrs()
            .to_vec()
    };
    let was = shared.store.controllers().map_err(internal)?;
    if was.addresses == addresses {
        return Ok(reply(was));
    }
    let rec = ControllersRecord {
        addresses,
        by: actor.to_owned(),
        at: now_secs(),
    };
    shared.store.set_controllers(&rec).map_err(internal)?;
    let shown = if rec.addresses.is_empty() {
        "(cleared)".to_owned()
    } else {
        rec.addresses.join(",")
    };
    shared
        .audit(actor, "fleet.controllers", "", &shown)
        .map_err(internal)?;
    shared.controllers.set(rec.addresses.clone());
    // Agents connected now hear it at once: the ones on this controller were welcomed
    // before the change and would otherwise learn it only on their next session.
    if !rec.addresses.is_empty() {
        let told = shared.sessions.broadcast(|| {
            Ok(Box::new(ControllerMessage {
                body: Some(controller_message::Body::Welcome(Welcome {
                    controllers: rec.addresses.clone(),
                    ..Default::default()
                })),
            }))
        });
        tracing::info!(
            agents = told,
            "told the connected agents the controller addresses"
        );
    }
    Ok(reply(rec))
}
