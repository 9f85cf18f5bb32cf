//! HTTP health probe of an app, and the state machine that turns probes into "healthy".
//!
//! The unit's state alone lies: a Gunicorn whose workers die at import keeps the unit
//! `active` with NRestarts=0 while every request hangs (measured: 259 worker boots in 12 s).
//! Only an HTTP answer from the app says it serves.
//!
//! The probe is a minimal HTTP/1.1 GET over a plain TCP connection with one deadline for
//! the whole exchange; only the status line is read (bounded), never the body.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes read at most while looking for the status line.
const MAX_STATUS_LINE: usize = 4096;
/// Consecutive good probes before an unhealthy app counts as healthy again: one lucky
/// answer from a worker that is about to die is not enough.
const RISE: u32 = 2;

/// Why a probe did not count as good; its text becomes the app's health detail, which
/// the operator reads in `fleetctl status` and in a failed deploy's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("GET {path}: no answer within {within}")]
    Timeout { path: String, within: String },
    #[error("connect {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error("GET {path}: {detail}")]
    Io { path: String, detail: String },
    #[error("GET {path}: status line longer than {MAX_STATUS_LINE} bytes")]
    LongStatusLine { path: String },
    #[error("GET {path}: connection closed without an answer")]
    Closed { path: String },
    #[error("GET {path}: not an HTTP answer: {start:?}")]
    NotHttp { path: String, start: String },
    #[error("GET {path}: HTTP {status}")]
    Status { path: String, status: u16 },
    /// Not probed: the unit is not running.
    #[error("unit is {state}")]
    UnitDown { state: String },
    #[error("unit state not known yet")]
    UnitUnknown,
}

/// Where to probe an app listening on `listen`: wildcard addresses are probed on loopback.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// One GET of `path`; Ok(status) for 2xx, Err(why) otherwise. `path` is validated by the
/// spec (printable ASCII, no spaces), so it cannot split the request line.
pub async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, ProbeError> {
    match tokio::time::timeout(timeout, exchange(addr, path)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout {
            path: path.to_owned(),
            within: humantime::format_duration(timeout).to_string(),
        }),
    }
}

async fn exchange(addr: SocketAddr, path: &str) -> Result<u16, ProbeError> {
    let io = |e: std::io::Error| ProbeError::Io {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect {
            addr,
            detail: e.to_string(),
        })?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fleet-agent\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            buf.truncate(end);
            break;
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err(ProbeError::LongStatusLine {
                path: path.to_owned(),
            });
        }
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(ProbeError::Closed {
                path: path.to_owned(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = parse_status(&buf).ok_or_else(|| ProbeError::NotHttp {
        path: path.to_owned(),
        start: String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned(),
    })?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(ProbeError::Status {
            path: path.to_owned(),
            status,
        })
    }
}

/// `HTTP/1.x NNN reason` -> NNN.
pub fn parse_status(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

/// Healthy after `RISE` consecutive good probes (1 when the spec tolerates a single
/// failure), unhealthy after `failures` consecutive bad ones; starts unhealthy ("not
/// probed yet") so nothing is reported healthy before the app answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    failures: u32,
    ok_run: u32,
    fail_run: u32,
    pub healthy: bool,
    pub detail: String,
}

impl Health {
    pub fn new(failures: u32) -> Self {
        Health {
            failures: failures.max(1),
            ok_run: 0,
            fail_run: 0,
            healthy: false,
            detail: "not probed yet".into(),
        }
    }

    /// Forgets every probe (a new process or release is starting): unhealthy until it
    /// answers itself.
    pub fn reset(&mut self, failures: u32, why: &str) {
        *self = Health::new(failures);
        self.detail = why.to_owned();
    }

    /// Records one probe; returns whether `healthy` flipped.
    pub fn record(&mut self, outcome: Result<u16, ProbeError>) -> bool {
        let before = self.healthy;
        match outcome {
            Ok(status) => {
                self.ok_run += 1;
                self.fail_run = 0;
                if self.ok_run >= RISE.min(self.failures) {
                    self.healthy = true;
                }
                self.detail = format!("HTTP {status}");
            }
            Err(why) => {
                self.fail_run += 1;
                self.ok_run = 0;
                if self.fail_run >= self.failures {
                    self.healthy = false;
                }
                self.detail = if self.healthy {
                    format!("{why} ({} of {} failures)", self.fail_run, self.failures)
                } else {
                    why.to_string()
                };
            }
        }
        before != self.healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 204"), Some(204));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2000 x"), None);
        assert_eq!(parse_status(b"HTTP/2 200"), None);
    }

    #[test]
    fn wildcards_are_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:8000".parse().unwrap()),
            "127.0.0.1:8000".parse().unwrap()
        );
        assert_eq!(
            probe_addr("[::]:8000".parse().unwrap()),
            "[::1]:8000".parse().unwrap()
        );
        assert_eq!(
            probe_addr("10.0.0.5:80".parse().unwrap()),
            "10.0.0.5:80".parse().unwrap()
        );
    }

    #[test]
    fn healthy_needs_two_good_probes_and_unhealthy_needs_n_bad() {
        let mut h = Health::new(3);
        assert!(!h.healthy);
        assert!(!h.record(Ok(200)));
        assert!(h.record(Ok(200)));
        assert!(h.healthy);
        assert!(!h.record(Err(ProbeError::UnitUnknown)));
        assert!(!h.record(Err(ProbeError::UnitUnknown)));
        assert!(h.healthy, "two failures of three tolerated");
        assert!(h.detail.contains("2 of 3"));
        assert!(h.record(Err(status(500))));
        assert!(!h.healthy);
        assert_eq!(h.detail, "GET /health: HTTP 500");
        // A flapping app (ok, bad, ok, bad) never becomes healthy again.
        for _ in 0..5 {
            h.record(Ok(200));
            h.record(Err(status(503)));
        }
        assert!(!h.healthy);
        h.reset(3, "restarting");
        assert_eq!(h.detail, "restarting");
        let mut one = Health::new(1);
        assert!(one.record(Ok(200)), "failures=1: one good probe suffices");
        assert!(one.record(Err(status(503))));
    }

    fn status(status: u16) -> ProbeError {
        ProbeError::Status {
            path: "/health".into(),
            status,
        }
    }

    async fn one_shot_server(answer: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer).await;
            // Keep the connection open: the probe must not wait for EOF or a body.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        addr
    }

    #[tokio::test]
    async fn probe_reads_only_the_status_line() {
        let addr = one_shot_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n").await;
        assert_eq!(
            probe(addr, "/health", Duration::from_secs(2)).await,
            Ok(200)
        );
        let addr = one_shot_server(b"HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
        let e = probe(addr, "/health", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "GET /health: HTTP 500");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        // Accepted by the kernel backlog, never read: what a worker boot loop looks like.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let e = probe(addr, "/health", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "GET /health: no answer within 300ms");
        drop(l);
        let e = probe(addr, "/health", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("connect {addr}: ")),
            "{e}"
        );
    }
}
