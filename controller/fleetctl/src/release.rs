//! `fleetctl release upload|list|remove`.

use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use fleet_proto::spec::AppName;
use fleet_proto::v1::{ListReleasesRequest, RemoveReleaseRequest, UploadReleaseChunk};
use serde_json::json;

use crate::client::Conn;
use crate::output::{self, Format};

const CHUNK: usize = 256 * 1024;

#[derive(Subcommand)]
pub enum ReleaseCmd {
    /// Upload a release tarball (its root is the app directory).
    Upload {
        app: AppName,
        file: PathBuf,
        #[arg(long)]
        version: String,
    },
    /// The app's releases on the controller: size, sha256, who uploaded it when, and
    /// which hosts run it.
    List { app: AppName },
    /// Delete a release from the controller; refused while a host runs it, is meant to
    /// run it, or a rollout of the app is running.
    Remove { app: AppName, version: String },
}

pub async fn run(conn: &Conn, cmd: ReleaseCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        ReleaseCmd::Upload { app, file, version } => upload(conn, app, file, version, format).await,
        ReleaseCmd::List { app } => {
            let resp = conn
                .admin()
                .await?
                .list_releases(ListReleasesRequest {
                    app: app.to_string(),
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(&json!(resp
                    .releases
                    .iter()
                    .map(|r| json!({
                        "version": r.version,
                        "sha256": r.sha256,
                        "size": r.size,
                        "uploaded_at": output::time(r.uploaded_at),
                        "uploaded_by": (!r.uploaded_by.is_empty()).then_some(&r.uploaded_by),
                        "running_hosts": r.running_hosts,
                        "running_sample": r.running_sample,
                        "desired_hosts": r.desired_hosts,
                    }))
                    .collect::<Vec<_>>())),
                Format::Table => {
                    let rows: Vec<Vec<String>> = resp
                        .releases
                        .iter()
                        .map(|r| {
                            let sample = r.running_sample.join(",");
                            let more = r.running_hosts as usize - r.running_sample.len();
                            vec![
                                r.version.clone(),
                                r.size.to_string(),
                                r.sha256.get(..12).unwrap_or(&r.sha256).to_owned(),
                                output::time_or_dash(r.uploaded_at),
                                if r.uploaded_by.is_empty() {
                                    "-".into()
                                } else {
                                    r.uploaded_by.clone()
                                },
                                match (r.running_hosts, more) {
                                    (0, _) => "-".into(),
                                    (n, 0) => format!("{n}: {sample}"),
                                    (n, m) => format!("{n}: {sample},… ({m} more)"),
                                },
                            ]
                        })
                        .collect();
                    output::table(
                        &["VERSION", "BYTES", "SHA256", "UPLOADED", "BY", "RUNNING ON"],
                        &rows,
                    );
                    if resp.retention > 0 {
                        println!("(the controller keeps {} releases per app; older unused ones are pruned after an upload)", resp.retention);
                    }
                }
            }
            Ok(())
        }
        ReleaseCmd::Remove { app, version } => {
            let resp = conn
                .admin()
                .await?
                .remove_release(RemoveReleaseRequest {
                    app: app.to_string(),
                    version: version.clone(),
                })
                .await
                .map_err(|s| conn.status(s))?
                .into_inner();
            match format {
                Format::Json => output::json(
                    &json!({"app": app.as_str(), "version": version, "freed_bytes": resp.freed_bytes}),
                ),
                Format::Table => println!(
                    "release {version} of {app} removed ({} bytes freed)",
                    resp.freed_bytes
                ),
            }
            Ok(())
        }
    }
}

async fn upload(
    conn: &Conn,
    app: AppName,
    file: PathBuf,
    version: String,
    format: Format,
) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(&file)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?;
    let size = f.metadata()?.len();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header = UploadReleaseChunk {
        app: app.to_string(),
        version: version.clone(),
        size,
        data: vec![],
    };
    // Reads on a blocking thread so a large file streams without being held in memory.
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
            if tx
                .blocking_send(UploadReleaseChunk {
                    data: buf,
                    ..Default::default()
                })
                .is_err()
            {
                return Ok(());
            }
        }
    });
    let resp = conn
        .admin()
        .await?
        .upload_release(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| conn.status(s))?
        .into_inner();
    reader.await??;
    match format {
        Format::Json => output::json(
            &json!({"app": app.as_str(), "version": version, "sha256": resp.sha256, "size": resp.size, "created": resp.created}),
        ),
        Format::Table => println!(
            "{} {app} {version}: {} bytes, sha256 {}",
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
