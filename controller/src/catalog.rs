//! An app's releases on the controller: `fleetctl release list|remove`, and pruning after
//! an upload down to `release_retention`. A release is in use, and never removed, while a
//! host runs it, the controller means a host to run it (its desired release: convergence
//! would fetch it), or a rollout of the app is running (it may revert to any of them).

use std::collections::BTreeMap;

use fleet_proto::spec::Version;
use fleet_proto::v1::{
    ListReleasesRequest, ListReleasesResponse, ReleaseEntry, RemoveReleaseRequest,
    RemoveReleaseResponse,
};
use tonic::Status;

use crate::apps::{app_name, load_app};
use crate::shared::{internal, Shared};
use crate::store::ReleaseRecord;

/// Hosts named per release in a listing; the count is always whole.
const SAMPLE: usize = 10;

/// Which hosts run which release of `app`, from the agents' own reports.
fn running(shared: &Shared, app: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_release: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for host in shared.app_states.hosts_running(app) {
        if let Some(state) = shared.app_states.get(&host, app) {
            by_release.entry(state.release).or_default().push(host);
        }
    }
    by_release
}

/// Why `version` must stay, or None when nothing needs it.
fn in_use(
    app: &str,
    version: &str,
    running: &BTreeMap<String, Vec<String>>,
    desired: &BTreeMap<String, u32>,
    rollout_running: bool,
) -> Option<String> {
    if rollout_running {
        return Some(format!(
            "a rollout of {app} is running and may revert to it: wait for it to end (`fleetctl rollout status {app}`)"
        ));
    }
    if let Some(hosts) = running.get(version) {
        let more = hosts.len().saturating_sub(3);
        return Some(format!(
            "{} host(s) run it ({}{}): roll them to another release first",
            hosts.len(),
            hosts[..hosts.len().min(3)].join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    if let Some(n) = desired.get(version) {
        return Some(format!(
            "{n} host(s) are meant to run it (a host that is down gets it when it returns): roll the app to another release first"
        ));
    }
    None
}

pub fn list(shared: &Shared, req: ListReleasesRequest) -> Result<ListReleasesResponse, Status> {
    let app = app_name(&req.app)?;
    load_app(shared, app.as_str())?;
    let running = running(shared, app.as_str());
    let desired = shared
        .store
        .desired_versions(app.as_str())
        .map_err(internal)?;
    let releases = shared
        .store
        .releases(app.as_str())
        .map_err(internal)?
        .into_iter()
        .map(|r| {
            let hosts = running.get(&r.version).map(Vec::as_slice).unwrap_or(&[]);
            ReleaseEntry {
                running_hosts: hosts.len() as u32,
                running_sample: hosts.iter().take(SAMPLE).cloned().collect(),
                desired_hosts: desired.get(&r.version).copied().unwrap_or(0),
                version: r.version,
                sha256: r.sha256,
                size: r.size,
                uploaded_at: r.uploaded_at,
                uploaded_by: r.uploaded_by,
            }
        })
        .collect();
    Ok(ListReleasesResponse {
        releases,
        retention: shared.settings.release_retention,
    })
}

/// Deletes a release's record, then its blob unless another record shares the bytes;
/// returns the bytes freed.
fn delete(shared: &Shared, rec: &ReleaseRecord) -> Result<u64, Status> {
    shared
        .store
        .remove_release(&rec.app, &rec.version)
        .map_err(internal)?;
    if shared.store.blob_in_use(&rec.sha256).map_err(internal)? {
        return Ok(0);
    }
    shared.blobs.remove(&rec.sha256);
    Ok(rec.size)
}

pub fn remove(
    shared: &Shared,
    actor: &str,
    req: RemoveReleaseRequest,
) -> Result<RemoveReleaseResponse, Status> {
    let app = app_name(&req.app)?;
    let version: Version = req
        .version
        .parse()
        .map_err(|e: fleet_proto::spec::SpecError| Status::invalid_argument(e.to_string()))?;
    load_app(shared, app.as_str())?;
    let rec = shared
        .store
        .release(app.as_str(), version.as_str())
        .map_err(internal)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "{app} has no release {version}: see `fleetctl release list {app}`"
            ))
        })?;
    let desired = shared
        .store
        .desired_versions(app.as_str())
        .map_err(internal)?;
    let running = running(shared, app.as_str());
    if let Some(why) = in_use(
        app.as_str(),
        version.as_str(),
        &running,
        &desired,
        shared.rollouts.active(app.as_str()),
    ) {
        return Err(Status::failed_precondition(format!(
            "{app} {version} is in use: {why}; nothing was removed"
        )));
    }
    let freed_bytes = delete(shared, &rec)?;
    shared
        .audit(
            actor,
            "release.remove",
            &format!("{app}@{version}"),
            &format!("sha256 {}, {freed_bytes} bytes freed", rec.sha256),
        )
        .map_err(internal)?;
    Ok(RemoveReleaseResponse { freed_bytes })
}

/// After an upload: removes `app`'s oldest releases beyond `release_retention` that
/// nothing uses (the newest are kept even when unused). Errors are logged, never the
/// upload's: the release is stored either way.
pub fn prune(shared: &Shared, app: &str) {
    let keep = shared.settings.release_retention as usize;
    if keep == 0 {
        return;
    }
    let releases = match shared.store.releases(app) {
        Ok(r) if r.len() > keep => r,
        Ok(_) => return,
        Err(e) => {
            tracing::error!(%app, error = %e, "cannot list releases to prune");
            return;
        }
    };
    let desired = match shared.store.desired_versions(app) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(%app, error = %e, "cannot read desired releases to prune");
            return;
        }
    };
    let running = running(shared, app);
    let rollout = shared.rollouts.active(app);
    let mut pruned = Vec::new();
    for rec in &releases[..releases.len() - keep] {
        if in_use(app, &rec.version, &running, &desired, rollout).is_some() {
            continue;
        }
        match delete(shared, rec) {
            Ok(_) => pruned.push(rec.version.clone()),
            Err(e) => {
                tracing::error!(%app, version = %rec.version, error = %e.message(), "cannot prune a release")
            }
        }
    }
    if !pruned.is_empty() {
        let _ = shared.audit(
            "controller",
            "release.prune",
            app,
            &format!(
                "{} (release_retention {keep}): {}",
                pruned.len(),
                pruned.join(", ")
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_in_use_while_run_meant_or_rolling() {
        let mut running = BTreeMap::new();
        running.insert(
            "1".to_owned(),
            vec!["a".into(), "b".into(), "c".into(), "d".into()],
        );
        let mut desired = BTreeMap::new();
        desired.insert("2".to_owned(), 5);
        let why = in_use("shop", "1", &running, &desired, false).unwrap();
        assert!(
            why.contains("4 host(s) run it (a, b, c and 1 more)"),
            "{why}"
        );
        let why = in_use("shop", "2", &running, &desired, false).unwrap();
        assert!(why.contains("5 host(s) are meant to run it"), "{why}");
        assert!(in_use("shop", "3", &running, &desired, true)
            .unwrap()
            .contains("rollout of shop is running"));
        assert_eq!(in_use("shop", "3", &running, &desired, false), None);
    }
}
