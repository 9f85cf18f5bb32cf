//! Hosts a running rollout leaves alone from one batch on: cordoned, or with the app
//! stopped, after the rollout began (its targets were chosen without them already).

use super::live::Live;
use super::record::{HostStep, Phase};
use crate::shared::Shared;

/// Hosts cordoned, or with the app stopped, since the rollout began are left as they
/// are when their batch comes (skipped, said so; they keep their release). Two small
/// table reads per batch, not per host.
pub(super) fn leave_out_cordoned_and_stopped(
    shared: &Shared,
    live: &Live,
    app: &str,
    b: usize,
    todo: Vec<HostStep>,
) -> Vec<HostStep> {
    let cordons = shared.store.cordoned().unwrap_or_else(|e| {
        tracing::error!(%app, error = %e, "cannot read the cordoned hosts; none left out");
        Default::default()
    });
    let stopped = shared.store.stopped_hosts(app).unwrap_or_else(|e| {
        tracing::error!(%app, error = %e, "cannot read where the app is stopped; none left out");
        Default::default()
    });
    let mut kept = Vec::with_capacity(todo.len());
    for h in todo {
        let why = match cordons.get(&h.host) {
            Some(c) if c.reason.is_empty() => {
                "cordoned during the rollout: left as it is".to_owned()
            }
            Some(c) => format!("cordoned ({}) during the rollout: left as it is", c.reason),
            None if stopped.contains(&h.host) => {
                format!("{app} was stopped here during the rollout: left as it is")
            }
            None => {
                kept.push(h);
                continue;
            }
        };
        live.step("skipped", &h.host, b, &why.clone(), |r| {
            let step = r.host_mut(&h.host);
            step.phase = Phase::Skipped;
            step.message = why;
        });
    }
    kept
}
