//! What a rollout step sends a host, under an id that is the same whichever controller
//! sends it (docs/ha.md): a controller that takes a rollout over re-sends the step in
//! flight, and the agent answers it once.

use std::time::Duration;

use fleet_proto::v1::command::Kind;

use super::record::Record;
use crate::shared::Shared;

/// On top of the health deadline: unit file writes and systemd jobs.
pub(super) const ACTIVATE_SLACK: Duration = Duration::from_secs(60);

/// The command id of a rollout's step on one host: the same whichever controller sends
/// it, so the agent runs a step re-sent by a controller that took over once (docs/ha.md).
/// A retry of a step that failed is a new attempt, under a new id.
pub(super) fn step_id(rec: &Record, what: &str, host: &str, retry: bool) -> String {
    if retry {
        crate::commands::new_id()
    } else {
        format!("rollout/{}/{what}/{host}", rec.id)
    }
}

/// Sends one host its Activate under the step's id and waits for the health verdict.
pub(super) async fn activate_as(
    shared: &Shared,
    host: &str,
    id: &str,
    kind: Kind,
    deadline: Duration,
) -> Result<fleet_proto::v1::CommandResult, crate::commands::CommandError> {
    let timeout = deadline + ACTIVATE_SLACK;
    let sessions = &shared.sessions;
    shared
        .commands
        .call_as(sessions, host, id, kind, timeout)
        .await
}
