//! What hosts are told to run: the targets of an operation, the secrets an app's spec
//! wants, and the one place an Activate command is built. Deploy (`apps`), rollouts and
//! convergence all activate releases; they share this module, below all three, instead of
//! importing each other.

use std::collections::BTreeMap;

use fleet_proto::spec::{AppSpec, SpecError};
use fleet_proto::v1::command::Kind;
use fleet_proto::v1::Activate;
use tonic::Status;

use crate::shared::{internal, Shared};
use crate::store::{ReleaseRecord, StoreError};

/// The release an Activate names.
pub struct Release<'a> {
    pub version: &'a str,
    pub sha256: &'a str,
    pub size: u64,
}

impl<'a> Release<'a> {
    pub fn of(r: &'a ReleaseRecord) -> Self {
        Release {
            version: &r.version,
            sha256: &r.sha256,
            size: r.size,
        }
    }
}

/// How the agent health-gates an activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Healthy this long, with no crash, before the host counts as done (0: first healthy).
    pub min_healthy_ms: u64,
    pub healthy_deadline_ms: u64,
}

/// The Activate command: the spec, the release, and the secrets the spec names.
pub fn activate(
    spec_toml: &str,
    release: &Release<'_>,
    secrets: BTreeMap<String, String>,
    gate: Gate,
) -> Kind {
    Kind::Activate(Activate {
        spec_toml: spec_toml.to_owned(),
        version: release.version.to_owned(),
        sha256: release.sha256.to_owned(),
        size: release.size,
        secrets: secrets.into_iter().collect(),
        healthy_deadline_ms: gate.healthy_deadline_ms,
        min_healthy_ms: gate.min_healthy_ms,
    })
}

/// Why a stored release cannot be activated any more.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("app {0} no longer exists")]
    AppGone(String),
    #[error("stored spec of {app} no longer validates: {source}")]
    Spec { app: String, source: SpecError },
    #[error("release {0} is no longer known to the controller")]
    ReleaseGone(String),
    /// `wanted_secrets`' refusal, which names the missing secrets and how to set them.
    #[error("{}", .0.message())]
    Secrets(Status),
}

/// Activate `version` of `app` with what the store holds now (spec, release, secrets).
pub fn activate_stored(
    shared: &Shared,
    app: &str,
    version: &str,
    gate: Gate,
) -> Result<(Kind, AppSpec), ActivateError> {
    let rec = shared
        .store
        .app(app)?
        .ok_or_else(|| ActivateError::AppGone(app.to_owned()))?;
    let spec = AppSpec::parse(&rec.spec_toml).map_err(|source| ActivateError::Spec {
        app: app.to_owned(),
        source,
    })?;
    let release = shared
        .store
        .release(app, version)?
        .ok_or_else(|| ActivateError::ReleaseGone(version.to_owned()))?;
    let secrets = wanted_secrets(shared, app, &spec).map_err(ActivateError::Secrets)?;
    Ok((
        activate(&rec.spec_toml, &Release::of(&release), secrets, gate),
        spec,
    ))
}

pub fn targets(shared: &Shared, requested: &[String]) -> Result<Vec<String>, Status> {
    targets_and_cordoned(shared, requested).map(|(hosts, _)| hosts)
}

/// Hosts left out because they are cordoned, with the reason given.
pub type Cordoned = Vec<(String, String)>;

/// The hosts a deploy or rollout acts on (every enrolled one, or those requested, which
/// must all be enrolled), without the cordoned ones, which come back separately with
/// their reasons so the caller can say so. Refuses when nothing is left.
pub fn targets_and_cordoned(
    shared: &Shared,
    requested: &[String],
) -> Result<(Vec<String>, Cordoned), Status> {
    let enrolled: Vec<String> = shared.store.host_names().map_err(internal)?;
    let wanted = if requested.is_empty() {
        if enrolled.is_empty() {
            return Err(Status::failed_precondition("no hosts are enrolled: enroll one with `fleetctl token create` and `fleet-agent join`"));
        }
        enrolled
    } else {
        let known: std::collections::HashSet<&str> = enrolled.iter().map(String::as_str).collect();
        let unknown: Vec<&String> = requested
            .iter()
            .filter(|h| !known.contains(h.as_str()))
            .collect();
        if !unknown.is_empty() {
            return Err(Status::invalid_argument(format!(
                "unknown host(s): {}: see `fleetctl hosts`",
                unknown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        requested.to_vec()
    };
    let cordons = shared.store.cordoned().map_err(internal)?;
    let (cordoned, hosts): (Vec<String>, Vec<String>) =
        wanted.into_iter().partition(|h| cordons.contains_key(h));
    if hosts.is_empty() {
        return Err(Status::failed_precondition(format!(
            "every target host is cordoned ({}): `fleetctl host uncordon NAME` to let one back in",
            cordoned.join(", ")
        )));
    }
    let cordoned = cordoned
        .into_iter()
        .map(|h| {
            let reason = cordons
                .get(&h)
                .map(|c| c.reason.clone())
                .unwrap_or_default();
            (h, reason)
        })
        .collect();
    Ok((hosts, cordoned))
}

/// Splits `hosts` into those `app` may be deployed to and those an operator stopped it
/// on (left as they are until `fleetctl app start`). Refuses when none are left.
pub fn without_stopped(
    shared: &Shared,
    app: &str,
    hosts: Vec<String>,
) -> Result<(Vec<String>, Vec<String>), Status> {
    let stopped = shared.store.stopped_hosts(app).map_err(internal)?;
    if stopped.is_empty() {
        return Ok((hosts, Vec::new()));
    }
    let (stopped, hosts): (Vec<String>, Vec<String>) =
        hosts.into_iter().partition(|h| stopped.contains(h));
    if hosts.is_empty() {
        return Err(Status::failed_precondition(format!(
            "{app} is stopped on every target host ({}): `fleetctl app start {app}` first",
            stopped.join(", ")
        )));
    }
    Ok((hosts, stopped))
}

/// The secret values the app's spec names; refuses when any is not set, before any host
/// is touched.
pub fn wanted_secrets(
    shared: &Shared,
    app: &str,
    spec: &AppSpec,
) -> Result<BTreeMap<String, String>, Status> {
    let secrets = shared.store.secrets(app).map_err(internal)?;
    let missing: Vec<&String> = spec
        .secrets
        .iter()
        .filter(|s| !secrets.contains_key(*s))
        .collect();
    if !missing.is_empty() {
        return Err(Status::failed_precondition(format!(
            "{app} needs secrets that are not set: {} (set each with `fleetctl secret set {app} KEY`); no host was touched",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let mut opened = BTreeMap::new();
    for (k, v) in secrets {
        if spec.secrets.contains(&k) {
            let value = shared.sealer.open(&format!("{app}/{k}"), &v).map_err(|e| {
                tracing::error!(error = %e, "cannot open a sealed secret");
                Status::internal(e.to_string())
            })?;
            opened.insert(k, value);
        }
    }
    Ok(opened)
}
