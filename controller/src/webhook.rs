//! Rollout notifications: one JSON POST per configured URL, with a Slack-compatible `text`
//! field. Each delivery runs in its own task with retries and backoff, so a slow or dead
//! receiver never holds up a rollout. Plain http only: a receiver behind TLS sits behind a
//! local relay (the controller carries no HTTP client stack for one POST).

use std::time::Duration;

use fleet_proto::v1::RolloutInfo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::shared::Shared;
use crate::timefmt::now_ms;

const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// `http://host[:port][/path]` -> (host:port, path).
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(['@', ' ']) || path.contains([' ', '\r', '\n']) {
        return Err(format!("{url:?} is not a valid http URL"));
    }
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, path.to_owned()))
}

/// The JSON body: Slack's `text` plus the rollout for machines.
pub fn body(event: &str, text: &str, info: &RolloutInfo) -> String {
    json!({
        "text": text,
        "event": event,
        "time_ms": now_ms(),
        "rollout": {
            "id": info.id,
            "app": info.app,
            "version": info.version,
            "state": info.state,
            "message": info.message,
            "hosts": info.hosts.iter().map(|h| json!({"host": h.host, "phase": h.phase, "previous": h.previous})).collect::<Vec<_>>(),
        },
    })
    .to_string()
}

pub fn notify(shared: &Shared, event: &str, text: &str, info: &RolloutInfo) {
    for url in &shared.settings.webhooks {
        let (url, body) = (url.clone(), body(event, text, info));
        tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            for attempt in 1..=ATTEMPTS {
                match tokio::time::timeout(ATTEMPT_TIMEOUT, post(&url, &body)).await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => tracing::warn!(%url, attempt, error = %e, "webhook failed"),
                    Err(_) => tracing::warn!(%url, attempt, "webhook timed out"),
                }
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            tracing::error!(%url, "webhook gave up after {ATTEMPTS} attempts");
        });
    }
}

async fn post(url: &str, body: &str) -> Result<(), String> {
    let (addr, path) = parse_url(url)?;
    let mut s = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: fleet-controller\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code = line.split_whitespace().nth(1).unwrap_or("");
    if code.starts_with('2') {
        Ok(())
    } else {
        Err(format!("answered {:?}", line.lines().next().unwrap_or("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://198.18.0.1:9000/hook").unwrap(),
            ("198.18.0.1:9000".into(), "/hook".into())
        );
        assert_eq!(
            parse_url("http://example.com").unwrap(),
            ("example.com:80".into(), "/".into())
        );
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http:///x").is_err());
        assert!(parse_url("http://a/b c").is_err());
    }

    #[tokio::test]
    async fn posts_json_and_accepts_2xx() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/h", l.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\"text\"") {
                let n = c.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let info = RolloutInfo {
            app: "shop".into(),
            ..Default::default()
        };
        post(&url, &body("started", "fleet: hi", &info))
            .await
            .unwrap();
        let req = server.await.unwrap();
        assert!(req.starts_with("POST /h HTTP/1.1\r\n"), "{req}");
        let json: serde_json::Value =
            serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(json["text"], "fleet: hi");
        assert_eq!(json["rollout"]["app"], "shop");
    }
}
