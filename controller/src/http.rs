//! The controller's plain HTTP listener (`--http-listen`): health, Prometheus `/metrics`,
//! and Prometheus service discovery for the agents' `/metrics` (`/v1/sd/prometheus`).
//! With `http_token_file` set, everything but `/healthz` needs `Authorization: Bearer`
//! with that token (Prometheus: `authorization: { credentials_file: ... }`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use sha2::{Digest, Sha256};

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleet_proto::exposition::Format;
use serde_json::json;
use tokio::net::TcpListener;

use crate::metrics::HostCounts;
use crate::shared::Shared;
use crate::store::HostRecord;

/// Reads the bearer token file: one line, at least 16 characters, nothing but visible
/// ASCII (it goes into an HTTP header).
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("http_token_file: cannot read {}", path.display()))?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "http_token_file {}: the token must be one line of at least 16 visible ASCII characters",
            path.display()
        );
    }
    Ok(token.to_owned())
}

/// Hashes compared, not the tokens, so the comparison takes the same time wherever they
/// differ.
async fn require_token(
    State(expected): State<Arc<[u8; 32]>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    if given != *expected {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer")],
            "a bearer token is required (see http_token_file in the controller's config)\n",
        )
            .into_response();
    }
    next.run(req).await
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/sd/prometheus", get(service_discovery))
        .with_state(shared.clone());
    if let Some(path) = &shared.settings.http_token_file {
        match read_token(path) {
            Ok(token) => {
                let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                protected = protected.layer(middleware::from_fn_with_state(
                    Arc::new(hash),
                    require_token,
                ));
            }
            Err(e) => {
                // validate() read it at start; refusing everything beats serving openly.
                tracing::error!(error = %format!("{e:#}"), "HTTP listener not started");
                return;
            }
        }
    }
    let app = Router::new()
        .route("/healthz", get(health))
        .with_state(shared)
        .merge(protected);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP listener failed");
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "sessions": shared.sessions.count() }))
}

/// The store is read on a blocking thread: redb reads are file I/O.
async fn hosts(shared: &Arc<Shared>) -> Result<Vec<HostRecord>, Response> {
    let shared = shared.clone();
    let read = tokio::task::spawn_blocking(move || shared.store.hosts()).await;
    let error = |e: String| {
        tracing::error!(error = %e, "cannot read hosts for an HTTP request");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read hosts: {e}\n"),
        )
            .into_response()
    };
    match read {
        Ok(Ok(hosts)) => Ok(hosts),
        Ok(Err(e)) => Err(error(e.to_string())),
        Err(e) => Err(error(e.to_string())),
    }
}

fn internal_error(e: String) -> Response {
    tracing::error!(error = %e, "cannot count hosts for a metrics scrape");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot read hosts: {e}\n"),
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
    // Counts only: decoding every host record per scrape would cost O(hosts) reads.
    let s = shared.clone();
    let enrolled = match tokio::task::spawn_blocking(move || s.store.host_count()).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return internal_error(e.to_string()),
        Err(e) => return internal_error(e.to_string()),
    };
    let up = shared.sessions.count_up();
    let counts = HostCounts {
        connected: shared.sessions.count(),
        up,
        down: enrolled.saturating_sub(up),
        store_commits: shared.store.commits(),
    };
    let body = shared.metrics.render(counts, format);
    ([(CONTENT_TYPE, format.content_type())], body).into_response()
}

async fn service_discovery(State(shared): State<Arc<Shared>>) -> Response {
    match hosts(&shared).await {
        Ok(hosts) => Json(crate::sd::targets(&hosts, &shared.app_states.by_host())).into_response(),
        Err(resp) => resp,
    }
}
