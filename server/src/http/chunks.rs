//! `/api/v1/chunks/*`: which chunks are missing, upload (single and batch), download
//! (single and batch). Blobs are opaque: the server checks the header and the size,
//! never the content.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fsync_common::limits::{MAX_BLOB_SIZE, MAX_IDS_PER_REQUEST};
use fsync_common::wire::{ChunkIdsRequest, MissingResponse, StoredResponse};
use fsync_common::{batch, ChunkId, NamespaceId};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Auth};
use crate::domain::roles::Role;
use crate::domain::{downloads, uploads};
use crate::state::{now_secs, AppState};

/// `?namespace=` of chunk routes (the user's first namespace when absent).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NsQuery {
    pub(super) namespace: Option<NamespaceId>,
}

fn chunk_id(raw: &str) -> Result<ChunkId, ApiError> {
    ChunkId::from_hex(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Refuses a request naming more than `MAX_IDS_PER_REQUEST` ids (chunks or pages).
pub(super) fn check_ids<T>(ids: &[T]) -> Result<(), ApiError> {
    if ids.len() > MAX_IDS_PER_REQUEST {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} ids in one request; the limit is {MAX_IDS_PER_REQUEST}",
            ids.len()
        )));
    }
    Ok(())
}

/// `POST /api/v1/chunks/missing`.
pub async fn missing(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<ChunkIdsRequest>,
) -> Result<Json<MissingResponse>, ApiError> {
    check_ids(&req.ids)?;
    auth.authorize(&state, req.namespace, Role::can_write)
        .await?;
    let missing = state
        .repo
        .missing_chunks(req.namespace, &req.ids, now_secs())
        .await?;
    state.metrics.dedup_hits.fetch_add(
        (req.ids.len() - missing.len()) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    Ok(Json(MissingResponse { missing }))
}

/// `PUT /api/v1/chunks/{id}?namespace=`: one blob, idempotent.
pub async fn put(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<NsQuery>,
    body: Body,
) -> Result<(StatusCode, Json<StoredResponse>), ApiError> {
    let id = chunk_id(&id)?;
    let ns = auth.namespace(&state, q.namespace, Role::can_write).await?;
    let blob = read_body(body, MAX_BLOB_SIZE).await?;
    let existed = uploads::accept_one(&state, ns, id, blob.to_vec()).await?;
    let (status, r) = if existed {
        (
            StatusCode::OK,
            StoredResponse {
                stored: 0,
                existing: 1,
            },
        )
    } else {
        (
            StatusCode::CREATED,
            StoredResponse {
                stored: 1,
                existing: 0,
            },
        )
    };
    Ok((status, Json(r)))
}

/// `POST /api/v1/chunks/batch?namespace=`: many blobs in one body (see `fsync_common::batch`).
pub async fn put_batch(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<NsQuery>,
    body: Body,
) -> Result<Json<StoredResponse>, ApiError> {
    let ns = auth.namespace(&state, q.namespace, Role::can_write).await?;
    let body = read_body(body, fsync_common::limits::MAX_BATCH_BODY).await?;
    let entries =
        batch::decode(&body, MAX_BLOB_SIZE).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if entries.len() > MAX_IDS_PER_REQUEST {
        return Err(ApiError::PayloadTooLarge(
            "too many blobs in one batch".into(),
        ));
    }
    let blobs = entries
        .into_iter()
        .map(|(id, b)| (id, b.to_vec()))
        .collect();
    Ok(Json(uploads::accept(&state, ns, blobs).await?))
}

/// `GET /api/v1/chunks/{id}?namespace=`.
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<NsQuery>,
) -> Result<Response, ApiError> {
    let id = chunk_id(&id)?;
    let ns = auth.namespace(&state, q.namespace, Role::can_read).await?;
    let blob = downloads::read_one(&state, ns, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("chunk {id} not found")))?;
    count_out(&state, blob.len());
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], blob).into_response())
}

/// `POST /api/v1/chunks/fetch`: many blobs in one response (batch framing); ids the
/// namespace does not hold are left out, so the client sees exactly what is missing.
pub async fn fetch_batch(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<ChunkIdsRequest>,
) -> Result<Response, ApiError> {
    check_ids(&req.ids)?;
    auth.authorize(&state, req.namespace, Role::can_read)
        .await?;
    // Each entry costs its id and length besides the blob (fsync_common::batch).
    let framing = ChunkId::LEN + 4;
    let blobs = downloads::read_many(
        &state,
        req.namespace,
        &req.ids,
        fsync_common::limits::MAX_BATCH_BODY - 5,
        framing,
    )
    .await?;
    let mut out =
        Vec::with_capacity(blobs.iter().map(|(_, b)| b.len() + framing).sum::<usize>() + 5);
    batch::encode_header(&mut out);
    for (id, blob) in &blobs {
        batch::encode_entry(&mut out, id, blob);
    }
    count_out(&state, out.len());
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], out).into_response())
}

/// Blob bytes sent (`fsync_blob_bytes_out_total`; every response's bytes are counted
/// in `fsync_bytes_out_total` by the metrics middleware).
fn count_out(state: &AppState, n: usize) {
    state
        .metrics
        .blob_bytes_out
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Reads a body up to `limit` bytes; 413 past it.
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(format!("body exceeds {limit} bytes")))
}
