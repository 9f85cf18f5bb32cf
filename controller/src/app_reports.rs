//! An agent's report of one app's state, as the controller takes it in: dropped when the
//! app is not one it manages, kept in `AppStates`, and shown to convergence and to the
//! app's lifecycle. The first report of an app on a host, and each session's first, read
//! the store; `channel` runs those off the async workers.

use std::sync::Arc;

use fleet_proto::v1::AppState;

use crate::shared::Shared;

/// Keeps an app's state and lets convergence and the app's lifecycle look at it; None when
/// the app is not one the controller manages. Some(the state it replaced).
pub fn record(
    shared: &Arc<Shared>,
    name: &str,
    id: u64,
    state: AppState,
) -> Option<Option<AppState>> {
    if !known_app(shared, name, &state.app) {
        return None;
    }
    let prev = shared.app_states.update(name, state.clone());
    if crate::converge::on_app_state(shared, name, id, &state) {
        crate::lifecycle::reconcile(shared, name, &state);
    }
    Some(prev)
}

/// Whether `app` is one the controller manages: states of invented apps are dropped, so
/// an agent cannot grow the controller's memory or anyone's status output. Only a
/// host's first report of an app reads the store.
fn known_app(shared: &Shared, host: &str, app: &str) -> bool {
    if app.parse::<fleet_proto::spec::AppName>().is_err() {
        return false;
    }
    if shared.app_states.knows(host, app) {
        return true;
    }
    matches!(shared.store.app(app), Ok(Some(_)))
}
