//! `fleetctl agent upload|list|upgrade`: fleet-agent packages held by the controller and
//! fleet-wide agent upgrades.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use fleet_proto::package::PackageVersion;
use fleet_proto::v1::{ListAgentPackagesRequest, UpgradeAgentsRequest, UploadAgentPackageChunk};
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

const CHUNK: usize = 256 * 1024;

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Store a fleet-agent .deb on the controller, for `fleetctl agent upgrade`.
    Upload {
        file: PathBuf,
        /// The package's version (default: read from its control file with dpkg-deb).
        #[arg(long)]
        version: Option<PackageVersion>,
    },
    /// The fleet-agent packages the controller holds.
    List,
    /// Install a held fleet-agent package on every host (or --hosts), in batches; a host
    /// not back with the new version within --deadline halts the upgrade. Apps keep
    /// running. Exit code 0 when every targeted host runs the version.
    Upgrade {
        #[arg(long)]
        version: PackageVersion,
        /// Hosts upgraded at once.
        #[arg(long, default_value_t = 1)]
        max_parallel: u32,
        /// How long each host has to come back with the new version, e.g. 2m.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        deadline: Duration,
        /// Comma-separated host names (default: every enrolled host).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
    },
}

/// Package and Version from the .deb's control file.
fn control_fields(file: &Path) -> anyhow::Result<(String, String)> {
    let out = std::process::Command::new("dpkg-deb")
        .arg("--field")
        .arg(file)
        .args(["Package", "Version"])
        .output()
        .context("cannot run dpkg-deb to read the package's version; pass --version")?;
    if !out.status.success() {
        bail!(
            "{} is not a readable .deb: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    Ok((field("Package"), field("Version")))
}

pub async fn run(conn: &Conn, cmd: AgentCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        AgentCmd::Upload { file, version } => upload(conn, &file, version, format).await,
        AgentCmd::List => list(conn, format).await,
        AgentCmd::Upgrade {
            version,
            max_parallel,
            deadline,
            hosts,
        } => upgrade(conn, version, max_parallel, deadline, hosts, format).await,
    }
}

async fn upload(
    conn: &Conn,
    file: &Path,
    version: Option<PackageVersion>,
    format: Format,
) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(file)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?;
    let version = match version {
        Some(v) => v,
        None => {
            let (package, version) = control_fields(file)?;
            if package != "fleet-agent" {
                bail!("{} is package {package:?}, not fleet-agent", file.display());
            }
            version
                .parse()
                .with_context(|| format!("{}: control file", file.display()))?
        }
    };
    let size = f.metadata()?.len();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header = UploadAgentPackageChunk {
        version: version.to_string(),
        size,
        data: vec![],
    };
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if tx.blocking_send(header).is_err() {
            return Ok(());
        }
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            let chunk = UploadAgentPackageChunk {
                data: buf,
                ..Default::default()
            };
            if tx.blocking_send(chunk).is_err() {
                return Ok(());
            }
        }
    });
    let resp = conn
        .admin()
        .await?
        .upload_agent_package(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    reader.await??;
    match format {
        Format::Json => output::json(
            &json!({"version": version.as_str(), "sha256": resp.sha256, "size": resp.size, "created": resp.created}),
        ),
        Format::Table => println!(
            "{} fleet-agent {version}: {} bytes, sha256 {}",
            if resp.created {
                "uploaded"
            } else {
                "already present:"
            },
            resp.size,
            resp.sha256
        ),
    }
    Ok(())
}

async fn list(conn: &Conn, format: Format) -> anyhow::Result<()> {
    let packages = conn
        .admin()
        .await?
        .list_agent_packages(ListAgentPackagesRequest {})
        .await
        .map_err(|s| conn.status(s))?
        .into_inner()
        .packages;
    match format {
        Format::Json => output::json(&json!(packages
            .iter()
            .map(|p| json!({"version": p.version, "sha256": p.sha256, "size": p.size, "uploaded_at": output::time(p.uploaded_at)}))
            .collect::<Vec<_>>())),
        Format::Table => output::table(
            &["VERSION", "SHA256", "SIZE", "UPLOADED"],
            &packages
                .iter()
                .map(|p| {
                    vec![
                        p.version.clone(),
                        p.sha256[..12.min(p.sha256.len())].to_owned(),
                        p.size.to_string(),
                        output::time_or_dash(p.uploaded_at),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

async fn upgrade(
    conn: &Conn,
    version: PackageVersion,
    max_parallel: u32,
    deadline: Duration,
    hosts: Vec<String>,
    format: Format,
) -> anyhow::Result<()> {
    let mut stream = conn
        .admin()
        .await?
        .upgrade_agents(UpgradeAgentsRequest {
            version: version.to_string(),
            max_parallel,
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            hosts,
        })
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    let mut events = Vec::new();
    let mut outcome = None;
    while let Some(ev) = stream.message().await.map_err(|s| conn.status(s))? {
        if format == Format::Table {
            let who = if ev.host.is_empty() {
                String::new()
            } else {
                format!("{} ", ev.host)
            };
            match ev.kind.as_str() {
                "batch" => println!("batch {}: {}", ev.batch + 1, ev.message),
                kind => println!("{who}{kind}: {}", ev.message),
            }
        }
        if matches!(ev.kind.as_str(), "finished" | "halted") {
            outcome = Some((ev.kind.clone(), ev.message.clone()));
        }
        events.push(ev);
    }
    if format == Format::Json {
        output::json(&json!(events
            .iter()
            .map(|e| json!({"time_ms": e.time_ms, "kind": e.kind, "host": e.host, "batch": e.batch, "message": e.message}))
            .collect::<Vec<_>>()));
    }
    match outcome {
        Some((kind, _)) if kind == "finished" => Ok(()),
        Some((_, msg)) => bail!("agent upgrade to {version} {msg}"),
        None => bail!("the controller ended the upgrade stream before the upgrade finished; see `fleetctl audit` and `fleetctl hosts`"),
    }
}
