//! `/health` and `/metrics`, and the middleware that counts and logs every request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fsync_common::wire::HealthResponse;
use tracing::Instrument;

use crate::state::AppState;

/// `GET /health`: 200 when the database and the blob store answer, 503 with the reason
/// otherwise.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let db = state.repo.ping().await;
    let blobs = state.blobs.check().await;
    if let Err(e) = &db {
        tracing::error!(error = %e, "health: database unavailable");
    }
    if let Err(e) = &blobs {
        tracing::error!(error = %e, "health: blob store unavailable");
    }
    let ok = db.is_ok() && blobs.is_ok();
    let body = HealthResponse {
        status: if ok { "ok" } else { "degraded" }.into(),
        database: if db.is_ok() { "ok" } else { "unavailable" }.into(),
        blob_store: if blobs.is_ok() { "ok" } else { "unavailable" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Gives every request an id (`x-request-id`), a log span, and a line in the metrics.
/// Query strings and headers are not logged: they can hold tokens.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        state
            .metrics
            .bytes_in
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    }
    let id = hex::encode(rand::random::<[u8; 8]>());
    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let secs = start.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    state.metrics.record(&method, &route, status, secs);
    span.in_scope(|| tracing::debug!(status, ms = secs * 1e3, "done"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}
