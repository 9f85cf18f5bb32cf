//! Release blobs: the operator's upload (streamed to the content-addressed blob store,
//! bounded, releases immutable once recorded) and the agents' fetch of them over their
//! stream, resumable from any offset.

use std::sync::Arc;

use fleet_proto::spec::Version;
use fleet_proto::v1::*;
use tonic::{Status, Streaming};

use crate::apps::{app_name, load_app};
use crate::shared::{internal, Shared};
use crate::store::ReleaseRecord;
use crate::timefmt::now_secs;

pub async fn upload(
    shared: &Shared,
    actor: &str,
    mut chunks: Streaming<UploadReleaseChunk>,
) -> Result<UploadReleaseResponse, Status> {
    let first = chunks
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty upload"))?;
    let app = app_name(&first.app)?;
    let version: Version = first
        .version
        .parse()
        .map_err(|e: fleet_proto::spec::SpecError| Status::invalid_argument(e.to_string()))?;
    load_app(shared, app.as_str())?;
    let (sha256, size) = crate::blobs::receive(
        &shared.blobs,
        "release",
        (first.size, &first.data),
        &mut chunks,
        |c: &UploadReleaseChunk| &c.data,
        shared.settings.max_release_bytes,
        crate::blobs::Format::Tarball,
    )
    .await?;
    let rec = ReleaseRecord {
        app: app.to_string(),
        version: version.to_string(),
        sha256: sha256.clone(),
        size,
        uploaded_at: now_secs(),
        uploaded_by: actor.to_owned(),
    };
    match shared.store.put_release_if_absent(&rec).map_err(internal)? {
        None => {
            shared
                .audit(
                    actor,
                    "release.upload",
                    &format!("{app}@{version}"),
                    &format!("sha256 {sha256}, {size} bytes"),
                )
                .map_err(internal)?;
            crate::catalog::prune(shared, app.as_str());
            Ok(UploadReleaseResponse {
                sha256,
                size,
                created: true,
            })
        }
        Some(existing) if existing.sha256 == sha256 => Ok(UploadReleaseResponse {
            sha256,
            size,
            created: false,
        }),
        Some(existing) => {
            if !shared.store.blob_in_use(&sha256).map_err(internal)? {
                shared.blobs.remove(&sha256);
            }
            Err(Status::already_exists(format!(
                "{app} {version} already exists with other content (sha256 {}): releases are immutable, upload this one under a new version",
                existing.sha256
            )))
        }
    }
}

/// Serves release bytes to an agent over its stream, in order, from `offset`.
/// Answers a fetch with an error and no data.
pub async fn refuse_fetch(req: &FetchRelease, tx: &crate::sessions::Outbound, error: &str) {
    let _ = tx
        .send(Ok(Box::new(ControllerMessage {
            body: Some(controller_message::Body::ReleaseData(ReleaseData {
                request_id: req.request_id.clone(),
                offset: req.offset,
                data: vec![],
                last: true,
                error: error.to_owned(),
            })),
        })))
        .await;
}

/// Streams a release blob to an agent; `_permit` is the session's fetch slot, held until
/// the download ends.
pub async fn serve_fetch(
    shared: Arc<Shared>,
    req: FetchRelease,
    tx: crate::sessions::Outbound,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let reply = |offset: u64, data: Vec<u8>, last: bool, error: String| {
        Box::new(ControllerMessage {
            body: Some(controller_message::Body::ReleaseData(ReleaseData {
                request_id: req.request_id.clone(),
                offset,
                data,
                last,
                error,
            })),
        })
    };
    let file = match shared.blobs.serving_now(&req.sha256) {
        Some(f) => Ok(f),
        None => {
            let known = shared.store.blob_in_use(&req.sha256).unwrap_or(false);
            if !known || shared.blobs.path(&req.sha256).is_none() {
                let _ = tx
                    .send(Ok(reply(
                        req.offset,
                        vec![],
                        true,
                        format!(
                            "no release with sha256 {}",
                            crate::ratelimit::clip(&req.sha256, crate::auth::MAX_QUOTED)
                        ),
                    )))
                    .await;
                return;
            }
            // Off the async workers: on a shared store the first fetch of a blob this
            // controller did not receive copies it in from the database.
            let (s, sha) = (shared.clone(), req.sha256.clone());
            tokio::task::spawn_blocking(move || s.blobs.open_shared(&sha))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        }
    };
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            let _ = tx
                .send(Ok(reply(
                    req.offset,
                    vec![],
                    true,
                    format!("release blob unreadable: {e}"),
                )))
                .await;
            return;
        }
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if req.offset > size {
        let _ = tx
            .send(Ok(reply(
                req.offset,
                vec![],
                true,
                format!("offset {} beyond size {size}", req.offset),
            )))
            .await;
        return;
    }
    let mut offset = req.offset;
    loop {
        let (f, at) = (file.clone(), offset);
        let read = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; crate::blobs::CHUNK];
            f.read_at(&mut buf, at).map(|n| {
                buf.truncate(n);
                buf
            })
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let buf = match read {
            Ok(b) => b,
            Err(e) => {
                let _ = tx
                    .send(Ok(reply(offset, vec![], true, format!("read failed: {e}"))))
                    .await;
                return;
            }
        };
        if buf.is_empty() && offset < size {
            let _ = tx
                .send(Ok(reply(
                    offset,
                    vec![],
                    true,
                    format!("release blob is truncated at {offset} of {size} bytes"),
                )))
                .await;
            return;
        }
        let n = buf.len();
        let last = offset + n as u64 >= size;
        if tx
            .send(Ok(reply(offset, buf, last, String::new())))
            .await
            .is_err()
        {
            return;
        }
        offset += n as u64;
        if last {
            return;
        }
    }
}
