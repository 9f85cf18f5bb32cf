//! Fleet-wide agent upgrades: roll a fleet-agent package held by the controller across the
//! hosts in batches. Each host gets `UpgradeAgent`, fetches the package over its own stream
//! (sha256-checked there), installs it with dpkg and comes back with a new session whose
//! Hello reports the new version. The next batch starts only when every host of this one
//! is back; a host that is not back within the deadline (or refuses) halts the upgrade,
//! so a bad package stops at one batch. Apps are never touched: the agent's restart does
//! not stop them.
//!
//! Everything that can be refused is refused before the first command goes out: an
//! unknown version, a package whose blob is gone, unknown hosts, a second upgrade.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_proto::package::PackageVersion;
use fleet_proto::v1::{
    command, command_result, AgentUpgradeEvent, UpgradeAgent, UpgradeAgentsRequest,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::commands::CommandError;
use crate::rollout::natural_sort;
use crate::shared::{internal, Shared};
use crate::store::AgentPackageRecord;
use crate::timefmt::now_ms;

pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
const MAX_DEADLINE: Duration = Duration::from_secs(3600);
const MIN_DEADLINE: Duration = Duration::from_secs(1);
/// Hosts upgraded at once, at most: each is a package download from the controller.
pub const MAX_PARALLEL: u32 = 1000;
const POLL: Duration = Duration::from_millis(200);

pub type EventStream = ReceiverStream<Result<AgentUpgradeEvent, Status>>;

/// At most one upgrade runs at a time: two would fight over the same agents.
#[derive(Default)]
pub struct Upgrades {
    running: AtomicBool,
}

struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// One host as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub name: String,
    pub up: bool,
    /// What its last Hello said: the agent's own version and its package's (empty when
    /// not installed from a package).
    pub version: String,
    pub package_version: String,
}

/// Whether a host reporting these versions runs package `version`. The package version
/// decides when there is one (a rebuilt package may carry the same binary version).
pub fn runs(version: &PackageVersion, agent_version: &str, package_version: &str) -> bool {
    if package_version.is_empty() {
        version.is_reported_by(agent_version)
    } else {
        package_version == version.as_str()
    }
}

/// What an upgrade will do, decided before it starts.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Already running the version: nothing to do.
    pub current: Vec<String>,
    /// Down when the upgrade starts: left alone (upgrade them again when they are back).
    pub skipped: Vec<String>,
    pub batches: Vec<Vec<String>>,
}

/// Splits the hosts that need the package into batches of `max_parallel`, in the order
/// given.
pub fn plan(targets: &[Target], version: &PackageVersion, max_parallel: usize) -> Plan {
    let mut plan = Plan::default();
    let mut todo = Vec::new();
    for t in targets {
        if runs(version, &t.version, &t.package_version) {
            plan.current.push(t.name.clone());
        } else if !t.up {
            plan.skipped.push(t.name.clone());
        } else {
            todo.push(t.name.clone());
        }
    }
    plan.batches = todo
        .chunks(max_parallel.max(1))
        .map(<[String]>::to_vec)
        .collect();
    plan
}

/// An upgrade request's bounds, refused before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUpgradeRequest {
    #[error(
        "deadline must be between {}s and {}s",
        MIN_DEADLINE.as_secs(),
        MAX_DEADLINE.as_secs()
    )]
    Deadline,
    #[error("--max-parallel must be at most {MAX_PARALLEL}")]
    MaxParallel,
}

impl From<BadUpgradeRequest> for Status {
    fn from(e: BadUpgradeRequest) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

pub fn deadline(ms: u64) -> Result<Duration, BadUpgradeRequest> {
    if ms == 0 {
        return Ok(DEFAULT_DEADLINE);
    }
    let d = Duration::from_millis(ms);
    if !(MIN_DEADLINE..=MAX_DEADLINE).contains(&d) {
        return Err(BadUpgradeRequest::Deadline);
    }
    Ok(d)
}

pub fn max_parallel(n: u32) -> Result<usize, BadUpgradeRequest> {
    match n {
        0 => Ok(1),
        n if n > MAX_PARALLEL => Err(BadUpgradeRequest::MaxParallel),
        n => Ok(n as usize),
    }
}

/// Why one host's agent upgrade failed; the text is the host's event and audit detail.
#[derive(Debug, thiserror::Error)]
enum UpgradeError {
    #[error("this agent cannot upgrade itself ({0}): upgrade it with apt")]
    CannotUpgradeItself(String),
    /// The agent refused; its message says why.
    #[error("{0}")]
    Agent(String),
    #[error(transparent)]
    Call(#[from] CommandError),
    #[error(
        "came back with fleet-agent {reported}, not {version}: see \
         `journalctl -u fleet-agent-upgrade` on the host"
    )]
    StillOld {
        reported: String,
        version: PackageVersion,
    },
    #[error("not back with fleet-agent {version} within {}s", .deadline.as_secs())]
    NotBack {
        version: PackageVersion,
        deadline: Duration,
    },
}

/// The package to roll out, refused unless the controller holds it whole.
pub fn package(shared: &Shared, version: &PackageVersion) -> Result<AgentPackageRecord, Status> {
    let pkg = shared
        .store
        .agent_package(version.as_str())
        .map_err(internal)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "the controller holds no fleet-agent package {version}: upload it first with `fleetctl agent upload fleet-agent_{version}_amd64.deb`; see `fleetctl agent list`"
            ))
        })?;
    let present = shared
        .blobs
        .local(&pkg.sha256)
        .map_err(|e| Status::internal(e.to_string()))?
        .and_then(|p| std::fs::metadata(p).ok())
        .is_some_and(|m| m.len() == pkg.size);
    if !present {
        return Err(Status::failed_precondition(format!(
            "the blob of fleet-agent {version} (sha256 {}) is missing from the controller's data directory: upload the package again",
            pkg.sha256
        )));
    }
    Ok(pkg)
}

pub fn start(
    shared: Arc<Shared>,
    actor: String,
    req: UpgradeAgentsRequest,
) -> Result<EventStream, Status> {
    let version: PackageVersion = crate::agentpkg::version(&req.version)?;
    let max_parallel = max_parallel(req.max_parallel)?;
    let deadline = deadline(req.deadline_ms)?;
    let pkg = package(&shared, &version)?;
    let mut names = crate::desired::targets(&shared, &req.hosts)?;
    natural_sort(&mut names);
    let records: HashMap<String, (String, String)> = shared
        .store
        .hosts()
        .map_err(internal)?
        .into_iter()
        .map(|h| (h.name, (h.version, h.package_version)))
        .collect();
    let targets: Vec<Target> = names
        .iter()
        .map(|n| {
            let (version, package_version) = records.get(n).cloned().unwrap_or_default();
            Target {
                name: n.clone(),
                up: shared.sessions.up(n).is_some(),
                version,
                package_version,
            }
        })
        .collect();
    let plan = plan(&targets, &version, max_parallel);
    if shared.upgrades.running.swap(true, Ordering::AcqRel) {
        return Err(Status::failed_precondition(
            "an agent upgrade is already running: wait for it to finish",
        ));
    }
    let hosts: usize = plan.batches.iter().map(Vec::len).sum();
    let audited = shared.audit(
        &actor,
        "agent.upgrade",
        &format!("fleet-agent@{version}"),
        &format!(
            "{hosts} host(s) in {} batch(es) of up to {max_parallel}, {} current, {} skipped (down), deadline {}s",
            plan.batches.len(),
            plan.current.len(),
            plan.skipped.len(),
            deadline.as_secs()
        ),
    );
    if let Err(e) = audited {
        shared.upgrades.running.store(false, Ordering::Release);
        return Err(internal(e));
    }
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let _running = Running(&shared.upgrades.running);
        let run = Run {
            shared: &shared,
            tx,
            version,
            pkg,
            deadline,
        };
        run.all(&actor, plan).await;
    });
    Ok(ReceiverStream::new(rx))
}

struct Run<'a> {
    shared: &'a Arc<Shared>,
    tx: mpsc::Sender<Result<AgentUpgradeEvent, Status>>,
    version: PackageVersion,
    pkg: AgentPackageRecord,
    deadline: Duration,
}

impl Run<'_> {
    async fn event(&self, kind: &str, host: &str, batch: usize, message: String) {
        // The client may have hung up; the upgrade runs on regardless.
        let _ = self
            .tx
            .send(Ok(AgentUpgradeEvent {
                time_ms: now_ms(),
                kind: kind.into(),
                host: host.into(),
                batch: batch as u32,
                message,
            }))
            .await;
    }

    async fn all(&self, actor: &str, plan: Plan) {
        let v = &self.version;
        self.event(
            "started",
            "",
            0,
            format!(
                "fleet-agent {v}: {} batch(es), {} host(s) current, {} down",
                plan.batches.len(),
                plan.current.len(),
                plan.skipped.len()
            ),
        )
        .await;
        for h in &plan.current {
            self.event("current", h, 0, format!("already runs fleet-agent {v}"))
                .await;
        }
        for h in &plan.skipped {
            self.event(
                "skipped",
                h,
                0,
                "host is down: upgrade it when it is back".into(),
            )
            .await;
        }
        let mut upgraded = 0usize;
        for (i, batch) in plan.batches.iter().enumerate() {
            self.event("batch", "", i, batch.join(",")).await;
            let mut set = JoinSet::new();
            for host in batch {
                let shared = self.shared.clone();
                let (host, version, pkg, deadline) = (
                    host.clone(),
                    self.version.clone(),
                    self.pkg.clone(),
                    self.deadline,
                );
                set.spawn(async move {
                    let r = upgrade_host(&shared, &host, &version, &pkg, deadline).await;
                    (host, r)
                });
            }
            let mut failed = Vec::new();
            while let Some(joined) = set.join_next().await {
                let Ok((host, result)) = joined else {
                    continue;
                };
                match result {
                    Ok(msg) => {
                        upgraded += 1;
                        self.event("upgraded", &host, i, msg).await;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        tracing::warn!(host = %host, version = %v, "agent upgrade failed: {msg}");
                        self.event("failed", &host, i, msg.clone()).await;
                        failed.push(format!("{host}: {msg}"));
                    }
                }
            }
            if !failed.is_empty() {
                let msg = format!(
                    "halted at batch {}: {}; later batches were not touched",
                    i + 1,
                    failed.join("; ")
                );
                self.finish(actor, "halted", msg).await;
                return;
            }
        }
        let msg = format!("fleet-agent {v} on {upgraded} host(s)");
        self.finish(actor, "finished", msg).await;
    }

    async fn finish(&self, actor: &str, kind: &str, msg: String) {
        if let Err(e) = self.shared.audit(
            actor,
            &format!("agent.upgrade.{kind}"),
            &format!("fleet-agent@{}", self.version),
            &msg,
        ) {
            tracing::error!(error = %e, "cannot record the end of an agent upgrade");
        }
        self.event(kind, "", 0, msg).await;
    }
}

/// Upgrades one host and waits until it is back with the new version.
async fn upgrade_host(
    shared: &Shared,
    host: &str,
    version: &PackageVersion,
    pkg: &AgentPackageRecord,
    deadline: Duration,
) -> Result<String, UpgradeError> {
    let started = Instant::now();
    let before = shared.sessions.session_id(host);
    let cmd = command::Kind::UpgradeAgent(UpgradeAgent {
        version: version.to_string(),
        sha256: pkg.sha256.clone(),
        size: pkg.size,
    });
    match shared
        .commands
        .call(&shared.sessions, host, cmd, deadline)
        .await
    {
        Ok(r) if r.status == command_result::Status::Ok as i32 => {
            tracing::info!(host, %version, "agent installing the new package: {}", r.message);
        }
        Ok(r) if r.status == command_result::Status::Unsupported as i32 => {
            return Err(UpgradeError::CannotUpgradeItself(r.message))
        }
        Ok(r) => return Err(UpgradeError::Agent(r.message)),
        // The package's postinst restarts the agent, which may cut the stream before the
        // answer is out: the new Hello below tells whether it worked.
        Err(CommandError::Disconnected) => {}
        Err(e) => return Err(e.into()),
    }
    loop {
        let now = shared.sessions.session_id(host);
        if now.is_some() && now != before && shared.sessions.up(host).is_some() {
            let (agent, package) = shared
                .store
                .host(host)
                .ok()
                .flatten()
                .map(|h| (h.version, h.package_version))
                .unwrap_or_default();
            let reported = if package.is_empty() {
                agent.clone()
            } else {
                package.clone()
            };
            if runs(version, &agent, &package) {
                return Ok(format!(
                    "back with fleet-agent {reported} after {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
            }
            // Back, but still the old binary: dpkg failed (it ran detached from the agent,
            // so its error is in the host's journal, unit fleet-agent-upgrade).
            if started.elapsed() > deadline {
                return Err(UpgradeError::StillOld {
                    reported,
                    version: version.clone(),
                });
            }
        }
        if started.elapsed() > deadline {
            return Err(UpgradeError::NotBack {
                version: version.clone(),
                deadline,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, up: bool, version: &str) -> Target {
        Target {
            name: name.into(),
            up,
            version: version.into(),
            package_version: String::new(),
        }
    }

    #[test]
    fn the_package_version_decides_when_there_is_one() {
        let v: PackageVersion = "0.1.0-2".parse().unwrap();
        assert!(runs(&v, "0.1.0", "0.1.0-2"));
        assert!(!runs(&v, "0.1.0", "0.1.0-1"), "same binary, older package");
        assert!(runs(&v, "0.1.0", ""), "no package: the binary's version");
        let mut pkg = t("h1", true, "0.1.0");
        pkg.package_version = "0.1.0-1".into();
        assert_eq!(plan(&[pkg], &v, 1).batches, vec![vec!["h1".to_string()]]);
    }

    #[test]
    fn hosts_are_batched_skipping_current_and_down_ones() {
        let v: PackageVersion = "0.2.0-1".parse().unwrap();
        let targets = [
            t("h1", true, "0.1.0"),
            t("h2", true, "0.2.0"),
            t("h3", false, "0.1.0"),
            t("h4", true, "0.1.0"),
            t("h5", true, "0.1.0"),
            t("h6", true, ""),
        ];
        let p = plan(&targets, &v, 2);
        assert_eq!(p.current, ["h2"]);
        assert_eq!(p.skipped, ["h3"]);
        assert_eq!(
            p.batches,
            vec![
                vec!["h1".to_string(), "h4".into()],
                vec!["h5".into(), "h6".into()]
            ]
        );
        let one = plan(&targets, &v, 0);
        assert_eq!(one.batches.len(), 4, "0 means one at a time");
        assert!(plan(&[t("h2", true, "0.2.0")], &v, 5).batches.is_empty());
    }

    #[test]
    fn bounds_are_refused_with_the_limit() {
        assert_eq!(max_parallel(0), Ok(1));
        assert_eq!(max_parallel(7), Ok(7));
        assert!(max_parallel(MAX_PARALLEL + 1)
            .unwrap_err()
            .to_string()
            .contains("at most"));
        assert!(deadline(10)
            .unwrap_err()
            .to_string()
            .contains("between 1s and"));
        assert_eq!(deadline(0), Ok(DEFAULT_DEADLINE));
        assert_eq!(deadline(5000), Ok(Duration::from_secs(5)));
        assert!(deadline(10).is_err());
        assert!(deadline(7_200_000).is_err());
    }
}
