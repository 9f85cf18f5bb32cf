//! Request metrics from the apps' access logs, with no change to the apps: every app's
//! Gunicorn writes fleet's access line (`parse::format`, set by units.rs for sync and ASGI
//! apps alike) into `/var/log/fleet/<app>/access.log`; one reader thread follows each of
//! those files (`tail`) and counts requests per release (`registry`), which the agent
//! exports on /metrics (`export`) and answers `QueryRequests` with (the controller's
//! canary analysis).
//!
//! The file, in both log modes (docs/host.md): not the journal, because journald's default
//! per-unit rate limit (10,000 lines per 30 s) would drop access lines above ~333 requests/s
//! and every line would cost journald far more than an append. In `logs.mode = "files"` it
//! is the operator's access log, rotated by logrotate.rs (rename + create + signal; the
//! reader follows the rename). In journal mode nobody else reads it, so this module keeps
//! it bounded itself: once it holds more than [`JOURNAL_MODE_MAX`] bytes and all were read,
//! it is truncated in place (Gunicorn appends with O_APPEND, so its next line starts the
//! file again).
//!
//! Counts are cumulative since [`Requests`] was made (agent start); `epoch` tells the
//! controller when they started over.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_proto::spec::{AppName, AppSpec, LogMode};
use fleet_proto::v1::RequestStats;

mod export;
pub mod parse;
pub mod registry;
pub mod tail;

use registry::AppCounts;
use tail::Tail;

/// How often every access log is read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Size at which a journal-mode access log (read by fleet only) is emptied.
pub const JOURNAL_MODE_MAX: u64 = 16 << 20;

struct Watched {
    counts: AppCounts,
    tail: Tail,
    /// `Some` when fleet alone reads the file and bounds it (journal mode).
    truncate_over: Option<u64>,
}

struct Inner {
    epoch: u64,
    apps: Mutex<BTreeMap<AppName, Arc<Mutex<Watched>>>>,
    reader_started: AtomicBool,
}

/// Cheap to clone; every clone counts into the same registry.
#[derive(Clone)]
pub struct Requests {
    inner: Arc<Inner>,
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            inner: Arc::new(Inner {
                epoch: rand::random(),
                apps: Mutex::default(),
                reader_started: AtomicBool::new(false),
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Requests {
    /// Starts (or updates, on a new deploy) counting `spec`'s app from its access log at
    /// `path`. Lines already in the file are not counted: the offset is taken now, before
    /// the caller starts the app, so none of the new master's requests are missed.
    pub fn watch(&self, spec: &AppSpec, path: PathBuf) {
        let truncate_over = (spec.logs.mode == LogMode::Journal).then_some(JOURNAL_MODE_MAX);
        {
            let mut apps = lock(&self.inner.apps);
            match apps.get(&spec.name) {
                Some(w) => {
                    let mut w = lock(w);
                    w.counts.set_health_path(&spec.health.path);
                    w.truncate_over = truncate_over;
                }
                None => {
                    let mut tail = Tail::new(path, true);
                    if let Err(e) = tail.poll(&mut |_| {}) {
                        tracing::warn!(app = %spec.name, file = %tail.path().display(), "cannot open the access log yet: {e}");
                    }
                    apps.insert(
                        spec.name.clone(),
                        Arc::new(Mutex::new(Watched {
                            counts: AppCounts::new(&spec.health.path),
                            tail,
                            truncate_over,
                        })),
                    );
                }
            }
        }
        self.start_reader();
    }

    /// Stops counting `app` (it is removed from this host).
    pub fn forget(&self, app: &AppName) {
        lock(&self.inner.apps).remove(app);
    }

    /// The answer to `QueryRequests`, or `None` for an app this agent does not count.
    pub fn stats(&self, app: &AppName) -> Option<RequestStats> {
        let w = lock(&self.inner.apps).get(app).cloned()?;
        let w = lock(&w);
        Some(RequestStats {
            epoch: self.inner.epoch,
            releases: w.counts.releases().iter().map(|r| r.to_proto()).collect(),
            unparsed: w.counts.unparsed,
        })
    }

    /// Adds the request families to `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(export::Collector(self.clone())));
    }

    fn start_reader(&self) {
        if self.inner.reader_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("fleet-requests".into())
            .spawn(move || me.read_forever());
        if let Err(e) = spawned {
            tracing::error!("cannot start the access-log reader: {e}; no request metrics");
            self.inner.reader_started.store(false, Ordering::SeqCst);
        }
    }

    /// A plain thread rather than a task: the reads are blocking file I/O, small, once a
    /// second for every app.
    fn read_forever(self) {
        let mut failing: BTreeMap<AppName, String> = BTreeMap::new();
        loop {
            let started = Instant::now();
            let apps: Vec<(AppName, Arc<Mutex<Watched>>)> = lock(&self.inner.apps)
                .iter()
                .map(|(n, w)| (n.clone(), w.clone()))
                .collect();
            for (name, w) in apps {
                let result = read_once(&mut lock(&w));
                // Logged when it starts failing and when it recovers, not once a second.
                match result {
                    Ok(()) => {
                        if failing.remove(&name).is_some() {
                            tracing::info!(app = %name, "reading the access log again");
                        }
                    }
                    Err(e) => {
                        let e = e.to_string();
                        if failing.get(&name) != Some(&e) {
                            tracing::warn!(app = %name, "cannot read the access log: {e}");
                            failing.insert(name, e);
                        }
                    }
                }
            }
            std::thread::sleep(POLL_INTERVAL.saturating_sub(started.elapsed()));
        }
    }
}

fn read_once(w: &mut Watched) -> std::io::Result<()> {
    let Watched {
        counts,
        tail,
        truncate_over,
    } = w;
    tail.poll(&mut |line| {
        counts.record(line);
    })?;
    if let Some(limit) = *truncate_over {
        tail.truncate_over(limit, &mut |line| {
            counts.record(line);
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_watched_app_counts_only_what_is_written_after_it_was_watched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let write = |text: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap()
        };
        write("fleet1 r0 200 10 \"GET / HTTP/1.1\" - 0 [t]\n");
        let r = Requests::default();
        let spec = crate::units::tests::spec("");
        r.watch(&spec, path.clone());
        write("fleet1 r1 500 10 \"GET / HTTP/1.1\" - 0 [t]\nfleet1 r1 200 10 \"GET /health HTTP/1.1\" - 0 [t]\njunk\n");
        read_once(&mut lock(&lock(&r.inner.apps)[&spec.name])).unwrap();
        let s = r.stats(&spec.name).unwrap();
        assert_eq!(s.epoch, r.inner.epoch);
        assert_eq!(s.unparsed, 1);
        assert_eq!(s.releases.len(), 1, "r0's line predates the watch");
        assert_eq!(
            (s.releases[0].release.as_str(), s.releases[0].status_5xx),
            ("r1", 1)
        );
        assert_eq!(s.releases[0].total(), 1, "the health probe is not counted");
        assert!(r.stats(&"other".parse().unwrap()).is_none());
        // A second epoch is another agent start.
        assert_ne!(Requests::default().inner.epoch, r.inner.epoch);
    }
}
