//! fleet-agent packages held by the controller: uploaded by an operator like a release,
//! stored as a content-addressed blob, served to agents over their stream by sha256
//! (`releases::serve_fetch`, through `Store::blob_in_use`). Versions are immutable.

use fleet_proto::package::PackageVersion;
use fleet_proto::v1::{
    AgentPackage, ListAgentPackagesResponse, UploadAgentPackageChunk, UploadAgentPackageResponse,
};
use tonic::{Status, Streaming};

use crate::shared::{internal, Shared};
use crate::store::AgentPackageRecord;
use crate::timefmt::now_secs;

pub fn version(v: &str) -> Result<PackageVersion, Status> {
    v.parse()
        .map_err(|e: fleet_proto::package::InvalidVersion| Status::invalid_argument(e.to_string()))
}

pub async fn upload(
    shared: &Shared,
    actor: &str,
    mut chunks: Streaming<UploadAgentPackageChunk>,
) -> Result<UploadAgentPackageResponse, Status> {
    let first = chunks
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty upload"))?;
    let version = version(&first.version)?;
    let (sha256, size) = crate::blobs::receive(
        &shared.blobs,
        "package",
        (first.size, &first.data),
        &mut chunks,
        |c: &UploadAgentPackageChunk| &c.data,
        shared.settings.max_release_bytes,
        crate::blobs::Format::Deb,
    )
    .await?;
    let rec = AgentPackageRecord {
        version: version.to_string(),
        sha256: sha256.clone(),
        size,
        uploaded_at: now_secs(),
    };
    match shared
        .store
        .put_agent_package_if_absent(&rec)
        .map_err(internal)?
    {
        None => {
            shared
                .audit(
                    actor,
                    "agent.upload",
                    &format!("fleet-agent@{version}"),
                    &format!("sha256 {sha256}, {size} bytes"),
                )
                .map_err(internal)?;
            Ok(UploadAgentPackageResponse {
                sha256,
                size,
                created: true,
            })
        }
        Some(existing) if existing.sha256 == sha256 => Ok(UploadAgentPackageResponse {
            sha256,
            size,
            created: false,
        }),
        Some(existing) => {
            if !shared.store.blob_in_use(&sha256).map_err(internal)? {
                shared.blobs.remove(&sha256);
            }
            Err(Status::already_exists(format!(
                "fleet-agent {version} already exists with other content (sha256 {}): packages are immutable, build this one with a new version",
                existing.sha256
            )))
        }
    }
}

pub fn list(shared: &Shared) -> Result<ListAgentPackagesResponse, Status> {
    let mut packages: Vec<AgentPackage> = shared
        .store
        .agent_packages()
        .map_err(internal)?
        .into_iter()
        .map(|p| AgentPackage {
            version: p.version,
            sha256: p.sha256,
            size: p.size,
            uploaded_at: p.uploaded_at,
        })
        .collect();
    packages.sort_by_key(|p| p.uploaded_at);
    Ok(ListAgentPackagesResponse { packages })
}
