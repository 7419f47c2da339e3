//! `/health` and `/metrics`, and the middleware that counts and logs every request.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fsync_common::wire::HealthResponse;
use tracing::Instrument;

use crate::metrics::{self, Counted, Direction};
use crate::state::AppState;

/// How long each `/health` check may take before its part counts as down (a database
/// that does not answer must not hold the probe for the pool's whole acquire timeout).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether one health check answered in time and well; the cause is logged otherwise.
fn answered<E: std::fmt::Display>(
    part: &str,
    check: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> bool {
    match check {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "health: {part} unavailable");
            false
        }
        Err(_) => {
            tracing::error!(timeout = ?HEALTH_TIMEOUT, "health: {part} did not answer");
            false
        }
    }
}

/// `GET /health`: 200 when the database and the blob store answer, 503 naming the part
/// that does not (`"database": "unavailable"` / `"blob_store": "unavailable"`). The
/// cause is logged, never sent.
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let (db, packs, blobs) = tokio::join!(
        tokio::time::timeout(HEALTH_TIMEOUT, state.repo.ping()),
        tokio::time::timeout(HEALTH_TIMEOUT, state.packs.check()),
        tokio::time::timeout(HEALTH_TIMEOUT, state.blobs.check()),
    );
    let db_ok = answered("database", db);
    // Both halves of the blob store: the packs uploads go to, the loose blobs of an
    // older store that downloads may still read.
    let blobs_ok = answered("pack store", packs) & answered("blob store", blobs);
    let state_of = |ok: bool| if ok { "ok" } else { "unavailable" }.to_owned();
    let ok = db_ok && blobs_ok;
    let body = HealthResponse {
        status: if ok { "ok" } else { "degraded" }.into(),
        database: state_of(db_ok),
        blob_store: state_of(blobs_ok),
        version: env!("CARGO_PKG_VERSION").into(),
        tls_fingerprint: state.tls_fingerprint.as_deref().map(str::to_owned),
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
        state.metrics.render()
            + &format!(
                "# TYPE fsync_pack_store_durable_writes_total counter\n\
                 fsync_pack_store_durable_writes_total {}\n",
                state.packs.durable_writes()
            ),
    )
}

/// Gives every request an id (`x-request-id`), a log span, and its lines in the
/// metrics: count and latency by method and route, and the body bytes actually read
/// and sent. Query strings and headers are not logged: they can hold tokens.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = metrics::method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let req = req.map(|b| Counted::body(b, state.metrics.clone(), Direction::In));
    let id = hex::encode(rand::random::<[u8; 8]>());
    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    let resp = next.run(req).instrument(span.clone()).await;
    let secs = start.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    state.metrics.record(method, &route, status, secs);
    span.in_scope(|| tracing::debug!(status, ms = secs * 1e3, "done"));
    let mut resp = resp.map(|b| Counted::body(b, state.metrics.clone(), Direction::Out));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}
