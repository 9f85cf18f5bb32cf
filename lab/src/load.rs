//! A small load generator for lab tests: many concurrent clients, one new TCP connection
//! per request (the harsh case for restarts: every request must get through the listen
//! socket while the app restarts), counting every failure and every latency.
//!
//! Targets are lab hosts (198.18.0.0/24) or loopback only; runs are bounded in time and in
//! requests so a test can never leave it running.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[error("load target {0} is neither loopback nor a lab host (198.18.0.0/24)")]
pub struct ForbiddenTarget(SocketAddr);

fn allowed(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => a.ip().is_loopback() || a.ip().octets()[..3] == [198, 18, 0],
        SocketAddr::V6(a) => a.ip().is_loopback(),
    }
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub targets: Vec<SocketAddr>,
    pub path: String,
    /// Concurrent clients per target.
    pub clients_per_target: usize,
    pub max_duration: Duration,
    pub max_requests: u64,
    pub request_timeout: Duration,
}

/// What one request ended as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with this body.
    Ok(String),
    Failed(String),
}

#[derive(Debug, Default)]
pub struct Report {
    pub sent: u64,
    pub failed: u64,
    /// Microseconds, sorted.
    latencies_us: Vec<u64>,
    /// Failure reasons and how often.
    pub failures: BTreeMap<String, u64>,
    /// When each failed request started, from the start of the run, sorted: which
    /// restart or reload a failure belongs to.
    pub failed_at: Vec<Duration>,
    /// Per target: `release=...` values seen, in order of first appearance, with counts.
    pub releases: BTreeMap<SocketAddr, Vec<(String, u64)>>,
}

impl Report {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        Duration::from_micros(self.latencies_us[idx])
    }

    pub fn summary(&self) -> String {
        format!(
            "{} requests, {} failed, p50 {:.1} ms, p99 {:.1} ms{}",
            self.sent,
            self.failed,
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            if self.failures.is_empty() {
                String::new()
            } else {
                format!(" ({:?})", self.failures)
            }
        )
    }
}

/// One HTTP/1.1 GET on a fresh connection.
pub fn request(addr: SocketAddr, path: &str, timeout: Duration) -> Outcome {
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("connect: {:?}", e.kind())),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()) {
        return Outcome::Failed(format!("write: {:?}", e.kind()));
    }
    let mut buf = Vec::with_capacity(512);
    if let Err(e) = s.take(64 * 1024).read_to_end(&mut buf) {
        return Outcome::Failed(format!("read: {:?}", e.kind()));
    }
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Failed(if buf.is_empty() {
            "empty response".into()
        } else {
            "truncated response".into()
        });
    };
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Outcome::Failed(format!("status {status}"));
    }
    Outcome::Ok(body.trim().to_owned())
}

/// The `release=X` token of a sample app's body.
pub fn release_of(body: &str) -> Option<&str> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("release="))
}

/// Runs load until `max_duration`, `max_requests`, or `stop` is set, whichever first.
pub fn run(spec: &LoadSpec, stop: Arc<AtomicBool>) -> Result<Report, ForbiddenTarget> {
    if let Some(bad) = spec.targets.iter().find(|t| !allowed(t)) {
        return Err(ForbiddenTarget(*bad));
    }
    let report = Arc::new(Mutex::new(Report::default()));
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + spec.max_duration;
    let mut workers = Vec::new();
    for &target in &spec.targets {
        for _ in 0..spec.clients_per_target.max(1) {
            let (report, issued, stop, path) = (
                report.clone(),
                issued.clone(),
                stop.clone(),
                spec.path.clone(),
            );
            let (max, timeout) = (spec.max_requests, spec.request_timeout);
            workers.push(thread::spawn(move || {
                let mut lat = Vec::new();
                let mut local: Vec<(Outcome, Duration)> = Vec::new();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if issued.fetch_add(1, Ordering::Relaxed) >= max {
                        break;
                    }
                    let t0 = Instant::now();
                    let out = request(target, &path, timeout);
                    lat.push(t0.elapsed().as_micros() as u64);
                    local.push((out, t0 - start));
                }
                let mut r = report.lock().unwrap();
                r.latencies_us.extend(lat);
                for (out, at) in local {
                    r.sent += 1;
                    match out {
                        Outcome::Ok(body) => {
                            let rel = release_of(&body).unwrap_or("?").to_owned();
                            let seen = r.releases.entry(target).or_default();
                            match seen.iter_mut().find(|(v, _)| *v == rel) {
                                Some((_, n)) => *n += 1,
                                None => seen.push((rel, 1)),
                            }
                        }
                        Outcome::Failed(why) => {
                            r.failed += 1;
                            *r.failures.entry(why).or_default() += 1;
                            r.failed_at.push(at);
                        }
                    }
                }
            }));
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let mut r = Arc::try_unwrap(report)
        .expect("workers joined")
        .into_inner()
        .unwrap();
    r.latencies_us.sort_unstable();
    r.failed_at.sort_unstable();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn refuses_targets_outside_the_lab() {
        let spec = LoadSpec {
            targets: vec!["10.0.0.1:80".parse().unwrap()],
            path: "/".into(),
            clients_per_target: 1,
            max_duration: Duration::from_millis(10),
            max_requests: 1,
            request_timeout: Duration::from_millis(10),
        };
        assert!(run(&spec, Arc::new(AtomicBool::new(false))).is_err());
    }

    #[test]
    fn counts_successes_failures_and_releases() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let mut c = conn.unwrap();
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let resp = if i % 4 == 3 {
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_owned()
                } else {
                    let body = format!("release={} pid=1\n", if i < 4 { "a" } else { "b" });
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = c.write_all(resp.as_bytes());
            }
        });
        let spec = LoadSpec {
            targets: vec![addr],
            path: "/".into(),
            clients_per_target: 1,
            max_duration: Duration::from_secs(10),
            max_requests: 8,
            request_timeout: Duration::from_secs(2),
        };
        let r = run(&spec, Arc::new(AtomicBool::new(false))).unwrap();
        assert_eq!(r.sent, 8);
        assert_eq!(r.failed, 2);
        assert_eq!(r.failures["status 503"], 2);
        assert_eq!(r.failed_at.len(), 2);
        assert!(r.failed_at[0] <= r.failed_at[1]);
        assert_eq!(
            r.releases[&addr],
            vec![("a".to_owned(), 3), ("b".to_owned(), 3)]
        );
        assert!(r.percentile(0.99) >= r.percentile(0.5));
    }
}
