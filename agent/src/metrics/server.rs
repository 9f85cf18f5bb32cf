//! The `/metrics` HTTP listener. Plain HTTP/1 on its own port by default, like
//! node_exporter, so any Prometheus scrapes it without fleet-specific setup (TLS: `tls.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::{Format, Metrics};

/// A scrape slower than this (a hung network filesystem in statvfs) is answered 503
/// rather than left hanging; Prometheus' own default scrape timeout is 10 s.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(9);

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for /metrics: is another process using it? \
             Change metrics_listen (or --metrics-listen), or set it to \"off\""
        )
    })
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    if let Err(e) = axum::serve(listener, router(metrics)).await {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

async fn scrape(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
    // Reading /proc and statvfs is blocking I/O: keep it off the async workers that carry
    // the controller stream.
    let job = tokio::task::spawn_blocking(move || metrics.render(format));
    match tokio::time::timeout(SCRAPE_TIMEOUT, job).await {
        Ok(Ok(body)) => ([(CONTENT_TYPE, format.content_type())], body).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "metrics scrape failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("scrape failed: {e}\n"),
            )
                .into_response()
        }
        Err(_) => {
            tracing::warn!("metrics scrape took longer than {SCRAPE_TIMEOUT:?}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "scrape timed out reading the node's figures (a hung filesystem?)\n",
            )
                .into_response()
        }
    }
}
