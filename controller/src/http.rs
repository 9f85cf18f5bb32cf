//! The controller's plain HTTP listener (`--http-listen`): health, Prometheus `/metrics`,
//! and Prometheus service discovery for the agents' `/metrics` (`/v1/sd/prometheus`).

use std::sync::Arc;

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

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/sd/prometheus", get(service_discovery))
        .with_state(shared);
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

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
    let hosts = match hosts(&shared).await {
        Ok(h) => h,
        Err(resp) => return resp,
    };
    let up = hosts
        .iter()
        .filter(|h| shared.sessions.up(&h.name).is_some())
        .count();
    let counts = HostCounts {
        connected: shared.sessions.count(),
        up,
        down: hosts.len() - up,
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
