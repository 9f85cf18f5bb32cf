//! Rollout notifications: one JSON POST per configured URL, with a Slack-compatible `text`
//! field. Each delivery runs in its own task with retries and backoff, so a slow or dead
//! receiver never holds up a rollout. Plain http only: a receiver behind TLS sits behind a
//! local relay (the controller carries no TLS client roots for one POST).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use fleet_proto::v1::RolloutInfo;
use http_body_util::Full;
use hyper::body::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::http_client::{self, HttpError};
use crate::shared::Shared;
use crate::timefmt::now_ms;

const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A receiver's `http://host[:port][/path]`, parsed once where it enters (the config file)
/// into the address to connect to and the path to post to; every send uses those.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct WebhookUrl {
    url: String,
    /// `host:port`, port 80 when the URL names none.
    addr: String,
    path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidWebhookUrl {
    #[error(
        "webhook {0:?}: only http:// URLs are supported (put a local relay in front of an \
         https receiver)"
    )]
    NotHttp(String),
    #[error("webhook {0:?} is not a valid http URL: write it as http://host[:port][/path]")]
    Malformed(String),
}

impl WebhookUrl {
    /// The address to connect to, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The request path, at least `/`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl FromStr for WebhookUrl {
    type Err = InvalidWebhookUrl;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| InvalidWebhookUrl::NotHttp(url.to_owned()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains(['@', ' '])
            || path.contains([' ', '\r', '\n'])
        {
            return Err(InvalidWebhookUrl::Malformed(url.to_owned()));
        }
        let addr = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(WebhookUrl {
            url: url.to_owned(),
            addr,
            path: path.to_owned(),
        })
    }
}

impl TryFrom<String> for WebhookUrl {
    type Error = InvalidWebhookUrl;

    fn try_from(url: String) -> Result<Self, Self::Error> {
        url.parse()
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Why one delivery attempt failed (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("bad request for {0}: {1}")]
    Request(String, http::Error),
    #[error("answered HTTP {0}")]
    Status(u16),
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

/// A receiver's answer is only read for its status.
const MAX_ANSWER: usize = 64 * 1024;

async fn post(url: &WebhookUrl, body: &str) -> Result<(), PostError> {
    let req = http::Request::post(url.path())
        .header(http::header::HOST, url.addr())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "fleet-controller")
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| PostError::Request(url.to_string(), e))?;
    let answer = http_client::exchange(url.addr(), req, MAX_ANSWER).await?;
    if (200..300).contains(&answer.status) {
        Ok(())
    } else {
        Err(PostError::Status(answer.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn parts(url: &str) -> (String, String) {
        let u: WebhookUrl = url.parse().unwrap();
        assert_eq!(u.to_string(), url);
        (u.addr().to_owned(), u.path().to_owned())
    }

    #[test]
    fn urls() {
        assert_eq!(
            parts("http://198.18.0.1:9000/hook"),
            ("198.18.0.1:9000".into(), "/hook".into())
        );
        assert_eq!(
            parts("http://example.com"),
            ("example.com:80".into(), "/".into())
        );
        let err = "https://x/".parse::<WebhookUrl>().unwrap_err();
        assert!(err.to_string().contains("only http://"), "{err}");
        let err = "http:///x".parse::<WebhookUrl>().unwrap_err();
        assert!(
            err.to_string().contains("http://host[:port][/path]"),
            "{err}"
        );
        assert!("http://a/b c".parse::<WebhookUrl>().is_err());
    }

    #[test]
    fn config_files_parse_urls_once_and_name_the_bad_one() {
        #[derive(Deserialize)]
        struct File {
            webhooks: Vec<WebhookUrl>,
        }
        let f: File = toml::from_str("webhooks = [\"http://h:81/x\"]").unwrap();
        assert_eq!(f.webhooks[0].addr(), "h:81");
        let err = toml::from_str::<File>("webhooks = [\"ftp://h/\"]")
            .err()
            .unwrap();
        assert!(err.to_string().contains("\"ftp://h/\""), "{err}");
    }

    #[tokio::test]
    async fn posts_json_and_accepts_2xx() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: WebhookUrl = format!("http://{}/h", l.local_addr().unwrap())
            .parse()
            .unwrap();
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
