//! What the controller knows of each host's firewall between applies: its last report,
//! which policy reverted where, and the locks and slots that keep applies and catch-ups
//! from stepping on each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fleet_proto::v1::FirewallState;
use tokio::sync::Semaphore;

use super::IN_FLIGHT;

/// Latest firewall state each host reported, and which policy reverted where.
#[derive(Default)]
pub struct FirewallStates {
    /// With when it arrived, to tell a report made after an apply from an older one.
    states: Mutex<HashMap<String, (FirewallState, Instant)>>,
    /// Host -> sha256 of the policy whose last attempt there ended reverted.
    reverted: Mutex<HashMap<String, String>>,
    /// A fleet-wide apply holds it for writing, catch-ups for reading: catch-ups run side
    /// by side (each on its own host), never while an apply is changing the stored policy.
    pub(super) applying: tokio::sync::RwLock<()>,
    /// Bounds the commands in flight of catch-ups together (a reconnect wave can start
    /// thousands).
    pub(super) catch_up_slots: CatchUpSlots,
}

pub(super) struct CatchUpSlots(pub(super) Arc<Semaphore>);

impl Default for CatchUpSlots {
    fn default() -> Self {
        CatchUpSlots(Arc::new(Semaphore::new(IN_FLIGHT)))
    }
}

impl FirewallStates {
    /// Records a report; true if it differs from the host's previous one (worth a log
    /// line: a reconnecting host repeats its state).
    pub fn update(&self, host: &str, state: FirewallState) -> bool {
        let old = self
            .states
            .lock()
            .expect("firewall states lock")
            .insert(host.to_owned(), (state.clone(), Instant::now()));
        old.is_none_or(|(o, _)| o != state)
    }

    pub(super) fn get(&self, host: &str) -> Option<FirewallState> {
        self.states
            .lock()
            .expect("firewall states lock")
            .get(host)
            .map(|(s, _)| s.clone())
    }

    /// The host's report of a revert, if it sent one after `since`.
    pub(super) fn reverted_since(&self, host: &str, since: Instant) -> Option<String> {
        let states = self.states.lock().expect("firewall states lock");
        let (s, at) = states.get(host)?;
        (*at >= since && s.state == "reverted").then(|| s.detail.clone())
    }

    pub(super) fn outcome(&self, host: &str, policy_sha: &str, outcome: &str) {
        let mut r = self.reverted.lock().expect("firewall reverted lock");
        match outcome {
            // Unconfirmed changes revert by themselves: not to be retried on reconnect.
            "reverted" | "unconfirmed" => {
                r.insert(host.to_owned(), policy_sha.to_owned());
            }
            "confirmed" => {
                r.remove(host);
            }
            _ => {}
        }
    }

    pub(super) fn reverted_here(&self, host: &str, policy_sha: &str) -> bool {
        self.reverted
            .lock()
            .expect("firewall reverted lock")
            .get(host)
            .is_some_and(|s| s == policy_sha)
    }
}
