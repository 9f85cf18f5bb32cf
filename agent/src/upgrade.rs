//! Self-upgrade: install a fleet-agent package the controller sends (`UpgradeAgent`).
//!
//! The package travels like a release: fetched by sha256 over the session stream into the
//! agent's state directory, resumable across reconnects, then checked against the size and
//! sha256 the controller named before anything is installed. dpkg then runs in a transient
//! unit of its own (`systemd-run`), not as our child: the package's postinst restarts
//! fleet-agent.service, and stopping that unit kills every process in its cgroup, which
//! would kill a dpkg we had started ourselves halfway through. The command is answered
//! once dpkg is started; the controller counts the upgrade done when the agent comes back
//! with the new version in its Hello. Apps are units of their own and are not touched.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_proto::package::PackageVersion;
use fleet_proto::v1::{
    agent_message, command, command_result, Command, CommandResult, UpgradeAgent,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::fetch::{FetchError, Fetcher};
use crate::outbox::{self, Outbox};

/// Below the controller's own limit for blobs; an agent package is a few MiB.
pub const MAX_PACKAGE_BYTES: u64 = 256 * 1024 * 1024;
/// The transient unit dpkg runs in; one at a time (systemd refuses a second while it runs).
pub const UNIT: &str = "fleet-agent-upgrade";
const DIR: &str = "upgrades";

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Version(#[from] fleet_proto::package::InvalidVersion),
    #[error("invalid package sha256 {0:?}: expected 64 hex digits")]
    Sha(String),
    #[error("package size {0} is outside 1..={MAX_PACKAGE_BYTES} bytes")]
    Size(u64),
    #[error("cannot download fleet-agent {version}: {source}")]
    Fetch {
        version: PackageVersion,
        source: FetchError,
    },
    #[error("refusing to install fleet-agent {version}: the package received has sha256 {got}, the controller announced {want} (the download was corrupted or the controller's copy changed); nothing was installed")]
    Mismatch {
        version: PackageVersion,
        got: String,
        want: String,
    },
    #[error("cannot start dpkg in unit {UNIT}: {0}; nothing was installed")]
    Start(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn handles(c: &Command) -> bool {
    matches!(c.kind, Some(command::Kind::UpgradeAgent(_)))
}

#[derive(Clone)]
pub struct Upgrader {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    fetcher: Fetcher,
    outbox: Outbox,
    /// One upgrade at a time: a second would download into the same file.
    busy: tokio::sync::Mutex<()>,
}

/// The checked inputs of one upgrade.
#[derive(Debug)]
pub struct Request {
    pub version: PackageVersion,
    pub sha256: String,
    pub size: u64,
}

impl Request {
    pub fn parse(u: UpgradeAgent) -> Result<Request, UpgradeError> {
        let version: PackageVersion = u.version.parse()?;
        if u.sha256.len() != 64 || !u.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(UpgradeError::Sha(u.sha256.chars().take(80).collect()));
        }
        if u.size == 0 || u.size > MAX_PACKAGE_BYTES {
            return Err(UpgradeError::Size(u.size));
        }
        Ok(Request {
            version,
            sha256: u.sha256.to_ascii_lowercase(),
            size: u.size,
        })
    }
}

/// The `systemd-run` argv that installs `deb` (pure: what lands on the command line).
pub fn dpkg_argv(deb: &Path, version: &PackageVersion) -> Vec<String> {
    vec![
        format!("--unit={UNIT}"),
        format!("--description=fleet: install fleet-agent {version}"),
        // Gone once finished, so the next upgrade can use the name again; its log stays in
        // the journal under the unit's name.
        "--collect".into(),
        "--quiet".into(),
        "--setenv=DEBIAN_FRONTEND=noninteractive".into(),
        "--".into(),
        "dpkg".into(),
        // Keep the operator's edits of /etc/fleet conffiles without asking.
        "--force-confdef".into(),
        "--force-confold".into(),
        "-i".into(),
        deb.to_string_lossy().into_owned(),
    ]
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

impl Upgrader {
    pub fn new(agent_state: &Path, fetcher: Fetcher) -> Upgrader {
        Upgrader {
            inner: Arc::new(Inner {
                dir: agent_state.join(DIR),
                fetcher,
                outbox: Outbox::default(),
                busy: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn attach(&self, tx: mpsc::Sender<fleet_proto::v1::AgentMessage>) -> outbox::Attached {
        self.inner.outbox.attach(tx)
    }

    /// Runs the command in a task of its own (the download needs the session loop).
    pub fn dispatch(&self, c: Command) {
        let up = self.clone();
        tokio::spawn(async move {
            let outcome = match c.kind {
                Some(command::Kind::UpgradeAgent(u)) => match Request::parse(u) {
                    Ok(req) => up.upgrade(req).await,
                    Err(e) => Err(e),
                },
                _ => Err(UpgradeError::Start(
                    "not an upgrade command (channel.rs routes it)".into(),
                )),
            };
            let (status, message) = match outcome {
                Ok(m) => (command_result::Status::Ok, m),
                Err(e) => {
                    tracing::error!("agent upgrade refused: {e}");
                    (command_result::Status::Failed, e.to_string())
                }
            };
            up.inner
                .outbox
                .send(agent_message::Body::Result(CommandResult {
                    id: c.id,
                    status: status as i32,
                    message,
                    request_stats: None,
                    exit_code: 0,
                }))
                .await;
        });
    }

    async fn upgrade(&self, req: Request) -> Result<String, UpgradeError> {
        let _one = self.inner.busy.lock().await;
        let dir = &self.inner.dir;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| UpgradeError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let deb = dir.join(req.version.file_name());
        let part = dir.join(format!("{}.part", req.version.file_name()));
        // Only this upgrade's files stay: earlier packages are installed or abandoned.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p != part {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        tracing::info!(version = %req.version, sha256 = %req.sha256, size = req.size, "downloading fleet-agent package");
        self.inner
            .fetcher
            .fetch(&req.sha256, req.size, &part)
            .await
            .map_err(|source| UpgradeError::Fetch {
                version: req.version.clone(),
                source,
            })?;
        let hashed = part.clone();
        let got = tokio::task::spawn_blocking(move || sha256_file(&hashed))
            .await
            .map_err(|e| UpgradeError::Io {
                path: part.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(io(&part))?;
        if got != req.sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(UpgradeError::Mismatch {
                version: req.version,
                got,
                want: req.sha256,
            });
        }
        std::fs::rename(&part, &deb).map_err(io(&deb))?;
        let out = tokio::process::Command::new("systemd-run")
            .args(dpkg_argv(&deb, &req.version))
            .output()
            .await
            .map_err(|e| UpgradeError::Start(e.to_string()))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&deb);
            return Err(UpgradeError::Start(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        tracing::info!(version = %req.version, unit = UNIT, "installing fleet-agent package; the agent restarts when it is in place");
        Ok(format!(
            "sha256 verified; installing fleet-agent {} in unit {UNIT}",
            req.version
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(version: &str, sha: &str, size: u64) -> UpgradeAgent {
        UpgradeAgent {
            version: version.into(),
            sha256: sha.into(),
            size,
        }
    }

    #[test]
    fn bad_requests_are_refused_before_any_download() {
        let sha = "a".repeat(64);
        assert!(Request::parse(cmd("0.2.0-1", &sha, 10)).is_ok());
        let e = Request::parse(cmd("../../x", &sha, 10)).unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid fleet-agent package version"),
            "{e}"
        );
        assert!(matches!(
            Request::parse(cmd("0.2.0", "abc", 10)),
            Err(UpgradeError::Sha(_))
        ));
        assert!(matches!(
            Request::parse(cmd("0.2.0", &sha, 0)),
            Err(UpgradeError::Size(0))
        ));
        assert!(Request::parse(cmd("0.2.0", &sha, MAX_PACKAGE_BYTES + 1)).is_err());
    }

    #[test]
    fn dpkg_runs_in_its_own_unit_without_a_shell() {
        let v: PackageVersion = "0.2.0-1".parse().unwrap();
        let argv = dpkg_argv(Path::new("/var/lib/fleet-agent/upgrades/x.deb"), &v);
        assert_eq!(argv[0], "--unit=fleet-agent-upgrade");
        let dashdash = argv.iter().position(|a| a == "--").unwrap();
        assert_eq!(argv[dashdash + 1], "dpkg");
        assert_eq!(argv.last().unwrap(), "/var/lib/fleet-agent/upgrades/x.deb");
        assert!(!argv.iter().any(|a| a.contains("sh -c")));
    }

    #[tokio::test]
    async fn a_package_that_does_not_match_its_sha256_is_not_installed() {
        // A fetcher with no session cannot download: seed the partial file as if the
        // download had completed, with bytes that are not the announced package.
        let tmp = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::with_settings(crate::fetch::FetchSettings {
            attempts: 1,
            session_wait: std::time::Duration::from_millis(10),
            idle_timeout: std::time::Duration::from_millis(10),
            retry_delay: std::time::Duration::from_millis(1),
        });
        let up = Upgrader::new(tmp.path(), fetcher);
        let v: PackageVersion = "0.2.0".parse().unwrap();
        let dir = tmp.path().join(DIR);
        std::fs::create_dir_all(&dir).unwrap();
        let part = dir.join(format!("{}.part", v.file_name()));
        std::fs::write(&part, b"not the package").unwrap();
        let want = hex::encode(Sha256::digest(b"the real package"));
        let err = up
            .upgrade(Request {
                version: v.clone(),
                sha256: want.clone(),
                size: 15,
            })
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("refusing to install fleet-agent 0.2.0"),
            "{msg}"
        );
        assert!(msg.contains(&want), "{msg}");
        assert!(msg.contains("nothing was installed"), "{msg}");
        assert!(!part.exists(), "the bad download is deleted");
        assert!(!dir.join(v.file_name()).exists());
    }
}
