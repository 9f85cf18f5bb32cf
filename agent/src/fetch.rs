//! Release bytes from the controller, carried over the agent's one session stream.
//!
//! There is no second connection and no inbound port: the agent sends
//! `FetchRelease{request_id, sha256, offset}` through the live session's outbox and the
//! controller answers with `ReleaseData` chunks (in order, `last` on the final one, `error`
//! set when it cannot serve the release). Sessions come and go; the [`Fetcher`] outlives
//! them (it is made once in `run`), so a transfer cut by a reconnect resumes from the bytes
//! already on disk instead of starting over.
//!
//! The session loop only registers its outbox ([`Fetcher::attach`]) and hands every
//! `ReleaseData` to [`Fetcher::deliver`]. Consequently [`Fetcher::fetch`] must run in a task
//! of its own, never inline in the session loop: the loop is what feeds it.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::v1::{agent_message, AgentMessage, FetchRelease, ReleaseData};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout};

/// Chunks buffered between the session loop and the task writing them (the controller
/// sends at most 256 KiB per chunk, so a few MiB at most).
const CHUNKS_BUFFERED: usize = 8;
/// How long `deliver` waits for a slow writer before giving the transfer up (it resumes
/// later). It blocks the session loop meanwhile, so it stays well under the heartbeat
/// budget.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct FetchSettings {
    /// Consecutive attempts that add no byte before the fetch gives up. An attempt that made
    /// progress resets the count; progress is bounded by the expected size, so the total
    /// number of attempts is bounded too.
    pub attempts: u32,
    /// How long an attempt waits for a connected session. Above the agent's largest
    /// reconnect backoff, so one reconnect never fails a fetch.
    pub session_wait: Duration,
    /// How long the controller may stay silent in the middle of a transfer.
    pub idle_timeout: Duration,
    /// Pause before retrying, so a controller that fails at once is not hammered.
    pub retry_delay: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            attempts: 5,
            session_wait: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(60),
            retry_delay: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("controller refused to send release {sha256}: {reason}")]
    Refused { sha256: String, reason: String },
    #[error("controller sent more than the expected {expected} bytes of release {sha256}")]
    TooLong { sha256: String, expected: u64 },
    #[error("controller ended release {sha256} at {got} bytes, expected {expected}")]
    Short {
        sha256: String,
        got: u64,
        expected: u64,
    },
    #[error(
        "gave up fetching release {sha256} after {attempts} attempts without progress \
         ({got} of {expected} bytes received): {last}"
    )]
    GaveUp {
        sha256: String,
        attempts: u32,
        got: u64,
        expected: u64,
        last: String,
    },
    #[error("cannot write {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Cheap to clone; every clone talks through the same session.
#[derive(Clone, Default)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    settings: FetchSettings,
    /// The live session's outbox, or None between sessions. A watch so a waiting fetch
    /// wakes up the moment the agent reconnects.
    outbox: watch::Sender<Option<Outbox>>,
    sessions: AtomicU64,
    /// Transfers in flight by request id, each tagged with the session that carries it.
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Clone)]
struct Outbox {
    session: u64,
    tx: mpsc::Sender<AgentMessage>,
}

struct Pending {
    session: u64,
    tx: mpsc::Sender<ReleaseData>,
}

/// Keeps a session's outbox registered; dropping it (the session ended) detaches it and
/// cuts the transfers that session carried, which then resume on the next one.
#[must_use = "the outbox is detached when this is dropped"]
pub struct Attached {
    inner: Arc<Inner>,
    session: u64,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let session = self.session;
        self.inner.outbox.send_if_modified(|o| match o {
            Some(cur) if cur.session == session => {
                *o = None;
                true
            }
            _ => false,
        });
        // Dropping their senders is what tells the fetching tasks the session is gone.
        lock(&self.inner.pending).retain(|_, p| p.session != session);
    }
}

/// Removes a request from the pending map however the attempt ends.
struct Registration<'a> {
    inner: &'a Inner,
    request_id: String,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        lock(&self.inner.pending).remove(&self.request_id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map holds no invariant a panicking holder could break halfway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How one attempt ended, when it did not finish the file.
enum Attempt {
    Retry(String),
    Fatal(FetchError),
}

impl Fetcher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_settings(settings: FetchSettings) -> Self {
        Fetcher {
            inner: Arc::new(Inner {
                settings,
                ..Inner::default()
            }),
        }
    }

    /// Called by each session when its stream is open; keep the guard for its lifetime.
    pub fn attach(&self, tx: mpsc::Sender<AgentMessage>) -> Attached {
        let session = self.inner.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.outbox.send_replace(Some(Outbox { session, tx }));
        Attached {
            inner: self.inner.clone(),
            session,
        }
    }

    /// Hands one `ReleaseData` from the controller to the transfer waiting for it. Chunks of
    /// transfers that were given up (late answers to an earlier attempt) are dropped.
    /// Awaiting here pushes back on the stream when the disk is slower than the network.
    pub async fn deliver(&self, data: ReleaseData) {
        let request_id = data.request_id.clone();
        let tx = lock(&self.inner.pending)
            .get(&request_id)
            .map(|p| p.tx.clone());
        let Some(tx) = tx else {
            tracing::debug!(%request_id, "ignoring release data nobody waits for");
            return;
        };
        match timeout(DELIVER_TIMEOUT, tx.send(data)).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(%request_id, "release download stalled; it will resume");
                lock(&self.inner.pending).remove(&request_id);
            }
        }
    }

    /// Makes `dest` hold exactly `expected_size` bytes of the release `sha256`, continuing
    /// from whatever `dest` already holds. The caller verifies the digest: a file of the
    /// right length is taken as complete without asking the controller.
    pub async fn fetch(
        &self,
        sha256: &str,
        expected_size: u64,
        dest: &Path,
    ) -> Result<(), FetchError> {
        let settings = &self.inner.settings;
        let mut failures = 0;
        loop {
            let mut have = file_len(dest).await?;
            if have > expected_size {
                // Not a prefix of this release: nothing in it can be trusted.
                tracing::warn!(path = %dest.display(), have, expected_size, "discarding an oversized partial download");
                remove(dest).await?;
                have = 0;
            }
            if have == expected_size {
                return Ok(());
            }
            let reason = match self.attempt(sha256, expected_size, dest, have).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(reason)) => reason,
            };
            let now = file_len(dest).await?;
            failures = if now > have { 0 } else { failures + 1 };
            if failures >= settings.attempts.max(1) {
                return Err(FetchError::GaveUp {
                    sha256: sha256.to_owned(),
                    attempts: failures,
                    got: now,
                    expected: expected_size,
                    last: reason,
                });
            }
            tracing::warn!(
                sha256,
                got = now,
                expected = expected_size,
                "release download interrupted: {reason}; resuming"
            );
            sleep(settings.retry_delay).await;
        }
    }

    async fn attempt(
        &self,
        sha256: &str,
        expected: u64,
        dest: &Path,
        have: u64,
    ) -> Result<(), Attempt> {
        let settings = &self.inner.settings;
        let mut sessions = self.inner.outbox.subscribe();
        let outbox = match timeout(settings.session_wait, sessions.wait_for(Option::is_some)).await
        {
            Ok(Ok(o)) => o.clone(),
            Ok(Err(_)) | Err(_) => None,
        };
        let Some(outbox) = outbox else {
            return Err(Attempt::Retry(format!(
                "not connected to the controller for {}",
                humantime::format_duration(settings.session_wait)
            )));
        };

        // A fresh id per attempt, so a late chunk of an earlier attempt cannot land in this one.
        let request_id = hex::encode(rand::random::<[u8; 16]>());
        let (tx, mut rx) = mpsc::channel(CHUNKS_BUFFERED);
        lock(&self.inner.pending).insert(
            request_id.clone(),
            Pending {
                session: outbox.session,
                tx,
            },
        );
        let _registration = Registration {
            inner: &self.inner,
            request_id: request_id.clone(),
        };
        let ask = AgentMessage {
            body: Some(agent_message::Body::Fetch(FetchRelease {
                request_id,
                sha256: sha256.to_owned(),
                offset: have,
            })),
        };
        // Opened before asking, so a local failure never leaves the controller streaming
        // to nobody.
        let io_err = |source| {
            Attempt::Fatal(FetchError::Io {
                path: dest.to_owned(),
                source,
            })
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(dest)
            .await
            .map_err(io_err)?;
        file.seek(io::SeekFrom::Start(have)).await.map_err(io_err)?;
        if outbox.tx.send(ask).await.is_err() {
            return Err(Attempt::Retry("connection to the controller lost".into()));
        }
        let result = receive(
            &mut rx,
            &mut file,
            sha256,
            expected,
            have,
            settings.idle_timeout,
        )
        .await;
        // Whatever happened, what was written must be on disk before the next attempt
        // measures the file to resume from it.
        file.flush().await.map_err(io_err)?;
        match result {
            Ok(()) => file.sync_all().await.map_err(io_err),
            Err(Attempt::Fatal(e)) => {
                if matches!(e, FetchError::TooLong { .. } | FetchError::Short { .. }) {
                    // The controller's bytes do not match the size we were told: the next
                    // stage must start from scratch, not resume this.
                    drop(file);
                    let _ = tokio::fs::remove_file(dest).await;
                }
                Err(Attempt::Fatal(e))
            }
            Err(retry) => Err(retry),
        }
    }
}

async fn receive(
    rx: &mut mpsc::Receiver<ReleaseData>,
    file: &mut tokio::fs::File,
    sha256: &str,
    expected: u64,
    mut pos: u64,
    idle: Duration,
) -> Result<(), Attempt> {
    loop {
        let chunk = match timeout(idle, rx.recv()).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(Attempt::Retry("connection to the controller lost".into())),
            Err(_) => {
                return Err(Attempt::Retry(format!(
                    "no data from the controller for {}",
                    humantime::format_duration(idle)
                )))
            }
        };
        if !chunk.error.is_empty() {
            return Err(Attempt::Fatal(FetchError::Refused {
                sha256: sha256.to_owned(),
                reason: chunk.error,
            }));
        }
        if chunk.offset != pos {
            return Err(Attempt::Retry(format!(
                "controller sent bytes at offset {} where {pos} was expected",
                chunk.offset
            )));
        }
        let len = chunk.data.len() as u64;
        if len == 0 && !chunk.last {
            // Would keep the transfer "alive" forever without moving it forward.
            return Err(Attempt::Retry(format!(
                "controller sent an empty chunk at offset {pos}"
            )));
        }
        if pos.saturating_add(len) > expected {
            return Err(Attempt::Fatal(FetchError::TooLong {
                sha256: sha256.to_owned(),
                expected,
            }));
        }
        file.write_all(&chunk.data)
            .await
            .map_err(|e| Attempt::Retry(format!("cannot write the download: {e}")))?;
        pos += len;
        if chunk.last {
            if pos != expected {
                return Err(Attempt::Fatal(FetchError::Short {
                    sha256: sha256.to_owned(),
                    got: pos,
                    expected,
                }));
            }
            return Ok(());
        }
    }
}

async fn file_len(path: &Path) -> Result<u64, FetchError> {
    match tokio::fs::metadata(path).await {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(FetchError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

async fn remove(path: &Path) -> Result<(), FetchError> {
    tokio::fs::remove_file(path)
        .await
        .map_err(|source| FetchError::Io {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
