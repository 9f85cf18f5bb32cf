//! fleet's .deb packages in the lab: where the lab finds them, the signed apt repository
//! it serves to its hosts on the bridge, and installing a package into a host the way an
//! operator does.
//!
//! The packages come from `bash packaging/deb/build.sh` (its OUT_DIR, by default the
//! workspace's target/debian; `FLEET_DEB_DIR` overrides it). Packages older than the
//! release binaries are rebuilt with build.sh, unless `FLEET_LAB_BUILD=0`, which makes
//! that an error.

use crate::config::{Paths, OUTER_ADDR};
use crate::fleet::Binaries;
use crate::proc::ProcRec;
use crate::{exec, launch, net};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

/// Where the lab serves the apt repository: the outer machine on the lab bridge.
pub const REPO_PORT: u16 = 7480;
/// Where hosts keep the repository's public key (the sources line's `signed-by=`).
pub const KEYRING_IN_HOST: &str = "/usr/share/keyrings/fleet-archive-keyring.gpg";
/// The apt source the lab writes into hosts.
pub const SOURCES_IN_HOST: &str = "/etc/apt/sources.list.d/fleet.list";
/// The version build.sh gives the packages without FLEET_DEB_VERSION.
pub const DEB_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-1");
pub const PACKAGES: [&str; 3] = ["fleet-agent", "fleet-controller", "fleetctl"];
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// An OUT_DIR of packaging/deb/build.sh.
#[derive(Clone, Debug)]
pub struct Packages {
    pub dir: PathBuf,
}

impl Packages {
    pub fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }
    pub fn keyring(&self) -> PathBuf {
        self.dir.join("fleet-archive-keyring.gpg")
    }
    /// The .deb of `pkg` at `version` (a Debian version, e.g. "0.1.0-1").
    pub fn deb(&self, pkg: &str, version: &str) -> PathBuf {
        self.dir.join(format!("{pkg}_{version}_amd64.deb"))
    }
}

fn workspace() -> PathBuf {
    PathBuf::from(WORKSPACE)
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(WORKSPACE))
}

/// `FLEET_DEB_DIR`, else the workspace's target/debian (build.sh's default).
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FLEET_DEB_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("debian")
}

fn mtime(p: &Path) -> Option<SystemTime> {
    p.metadata().and_then(|m| m.modified()).ok()
}

/// What is missing or stale in `pk` for binaries `b`, if anything.
fn problem(pk: &Packages, b: &Binaries) -> Option<String> {
    for f in [pk.repo().join("InRelease"), pk.keyring()] {
        if !f.exists() {
            return Some(format!("{} is missing", f.display()));
        }
    }
    for (pkg, bin) in PACKAGES.iter().zip([&b.agent, &b.controller, &b.fleetctl]) {
        let deb = pk.deb(pkg, DEB_VERSION);
        match (mtime(&deb), mtime(bin)) {
            (None, _) => return Some(format!("{} is missing", deb.display())),
            (Some(d), Some(m)) if d < m => {
                return Some(format!("{} is older than {}", deb.display(), bin.display()))
            }
            _ => {}
        }
    }
    None
}

/// The packages for binaries `b`, built with build.sh first if missing or stale.
pub fn ensure(b: &Binaries) -> Result<Packages> {
    let pk = Packages { dir: default_dir() };
    let Some(why) = problem(&pk, b) else {
        return Ok(pk);
    };
    let cmd = format!("bash packaging/deb/build.sh {}", pk.dir.display());
    if std::env::var("FLEET_LAB_BUILD").as_deref() == Ok("0") {
        bail!("fleet packages are not ready ({why}) and FLEET_LAB_BUILD=0: run `{cmd}`");
    }
    tracing::info!(reason = %why, "building the fleet packages: {cmd}");
    let st = Command::new("bash")
        .arg("packaging/deb/build.sh")
        .arg(&pk.dir)
        .current_dir(workspace())
        .status()
        .context("run bash packaging/deb/build.sh")?;
    anyhow::ensure!(st.success(), "`{cmd}` failed");
    if let Some(why) = problem(&pk, b) {
        bail!("`{cmd}` ran but the packages are still not ready: {why}");
    }
    Ok(pk)
}

pub fn repo_url() -> String {
    format!("http://{OUTER_ADDR}:{REPO_PORT}/")
}

/// The line of /etc/apt/sources.list.d/fleet.list for the lab's repository.
pub fn sources_line() -> String {
    format!("deb [signed-by={KEYRING_IN_HOST}] {} ./", repo_url())
}

/// Serves `pk`'s repo directory on the bridge (a static HTTP server, python3's
/// http.server: nothing but files), as a lab process torn down with the lab.
pub fn serve_repo(paths: &Paths, pk: &Packages, lock: &File) -> Result<(Child, ProcRec)> {
    let args: Vec<String> = vec![
        "python3".into(),
        "-m".into(),
        "http.server".into(),
        "--bind".into(),
        OUTER_ADDR.into(),
        "--directory".into(),
        pk.repo().display().to_string(),
        REPO_PORT.to_string(),
    ];
    let log = paths.repo_log();
    let (child, rec) = launch::spawn("repo", r#"exec "$@""#, &args, &log, lock)?;
    let end = Instant::now() + Duration::from_secs(15);
    while !net::tcp_reachable(OUTER_ADDR, REPO_PORT, Duration::from_millis(300)) {
        if !rec.alive() || Instant::now() > end {
            bail!(
                "the apt repository server did not start on {} (log: {})",
                repo_url(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((child, rec))
}

/// Points host N's apt at the lab's repository: the keyring and the sources line. Hosts
/// have no other apt source (host.rs), so `apt-get update` fetches only this.
pub fn add_repo_source(paths: &Paths, pk: &Packages, n: u32) -> Result<()> {
    let keyring =
        std::fs::read(pk.keyring()).with_context(|| format!("read {}", pk.keyring().display()))?;
    exec::write_file(paths, n, KEYRING_IN_HOST, &keyring, 0o644)?;
    exec::write_file(
        paths,
        n,
        SOURCES_IN_HOST,
        format!("{}\n", sources_line()).as_bytes(),
        0o644,
    )
}

/// Installs the .deb of `pkg` at `version` into host N with `dpkg -i` (its maintainer
/// scripts run against the host's real systemd, as on a VM). Returns dpkg's output.
pub fn dpkg_install(
    paths: &Paths,
    pk: &Packages,
    n: u32,
    pkg: &str,
    version: &str,
) -> Result<String> {
    let deb = pk.deb(pkg, version);
    anyhow::ensure!(deb.exists(), "{} is missing", deb.display());
    let name = deb.file_name().context("deb file name")?.to_owned();
    // The share dir is bound read-only to /opt/fleet in every host.
    let shared = paths.share().join(&name);
    if !shared.exists() {
        std::fs::create_dir_all(paths.share())?;
        std::fs::copy(&deb, &shared)
            .with_context(|| format!("copy {} to {}", deb.display(), shared.display()))?;
    }
    let inside = format!("/opt/fleet/{}", name.to_string_lossy());
    let o = exec::output(
        n,
        &[
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "dpkg",
            "-i",
            &inside,
        ],
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() {
        bail!(
            "{}: dpkg -i {inside} failed ({}): {}",
            crate::host_name(n),
            o.status,
            text.trim()
        );
    }
    Ok(text)
}
