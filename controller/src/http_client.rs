//! One HTTP/1.1 exchange on a fresh connection (hyper), for the controller's rare
//! outbound calls: webhook deliveries and PromQL gate queries. Both happen a few times a
//! minute at most, so no pool: each call connects, sends, reads a bounded answer and
//! closes. Callers bound the whole exchange in time.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("{addr}: reading the answer (at most {max} bytes): {reason}")]
    Body {
        addr: String,
        max: usize,
        reason: String,
    },
}

/// A status and a body of at most the caller's bound.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// Sends `req` to `addr` (`host:port`) and reads the answer, refusing a body over
/// `max_body` bytes.
pub async fn exchange(
    addr: &str,
    req: http::Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Answer, HttpError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HttpError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let http = |source| HttpError::Http {
        addr: addr.to_owned(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // Drives the connection; aborted once the answer is read.
    let driver = tokio::spawn(conn);
    let answer = async {
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| HttpError::Body {
                addr: addr.to_owned(),
                max: max_body,
                reason: e.to_string(),
            })?
            .to_bytes();
        Ok(Answer { status, body })
    }
    .await;
    drop(sender);
    driver.abort();
    answer
}
