//! `/api/v1/pages/*`: manifest pages (`fsync_common::pages`). Which ones the server
//! lacks, uploading many in one body (the batch framing of `chunks/batch`, each entry a
//! page id and its encoding), and fetching many. The server checks every page against
//! its id and decodes it; a page is stored once per namespace.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fsync_common::limits::MAX_PAGES_PER_REQUEST;
use fsync_common::pages::{Page, MAX_PAGE_BYTES};
use fsync_common::wire::{MissingPagesResponse, PageIdsRequest, StoredResponse};
use fsync_common::{batch, ChunkId, PageId};

use super::chunks::{check_ids, read_body, NsQuery};
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Auth};
use crate::domain::roles::Role;
use crate::state::{now_secs, AppState};

/// The batch framing carries 32-byte ids typed as chunk ids.
fn as_batch_id(id: PageId) -> ChunkId {
    ChunkId::from_bytes(*id.as_bytes())
}

/// `POST /api/v1/pages/missing`.
pub async fn missing(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<PageIdsRequest>,
) -> Result<Json<MissingPagesResponse>, ApiError> {
    check_ids(&req.ids)?;
    auth.authorize(&state, req.namespace, Role::can_write)
        .await?;
    let missing = state
        .repo
        .missing_pages(req.namespace, &req.ids, now_secs())
        .await?;
    Ok(Json(MissingPagesResponse { missing }))
}

/// `POST /api/v1/pages/batch?namespace=`: pages in the batch framing. Every chunk they
/// list must be stored first (409 `missing_chunks` names those that are not, and
/// nothing is stored).
pub async fn put_batch(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<NsQuery>,
    body: Body,
) -> Result<Json<StoredResponse>, ApiError> {
    let ns = auth.namespace(&state, q.namespace, Role::can_write).await?;
    let limit = 5 + MAX_PAGES_PER_REQUEST * (MAX_PAGE_BYTES + 36);
    let body = read_body(body, limit).await?;
    let entries =
        batch::decode(&body, MAX_PAGE_BYTES).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if entries.len() > MAX_PAGES_PER_REQUEST {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} pages in one batch; the limit is {MAX_PAGES_PER_REQUEST}",
            entries.len()
        )));
    }
    let pages = entries
        .into_iter()
        .map(|(id, b)| {
            Page::from_body(PageId::from_bytes(*id.as_bytes()), b)
                .map_err(|e| ApiError::BadRequest(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stored = state.repo.store_pages(ns, &pages, now_secs()).await?;
    state
        .metrics
        .pages_stored
        .fetch_add(stored as u64, Ordering::Relaxed);
    Ok(Json(StoredResponse {
        stored: stored as u32,
        existing: (pages.len() - stored) as u32,
    }))
}

/// `POST /api/v1/pages/fetch`: the asked pages the namespace holds, in the batch
/// framing; absent ones are left out.
pub async fn fetch(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<PageIdsRequest>,
) -> Result<Response, ApiError> {
    if req.ids.len() > MAX_PAGES_PER_REQUEST {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} pages in one request; the limit is {MAX_PAGES_PER_REQUEST}",
            req.ids.len()
        )));
    }
    auth.authorize(&state, req.namespace, Role::can_read)
        .await?;
    let found = state.repo.page_bodies(req.namespace, &req.ids).await?;
    state
        .metrics
        .pages_sent
        .fetch_add(found.len() as u64, Ordering::Relaxed);
    let mut out = Vec::with_capacity(5 + found.iter().map(|(_, b)| b.len() + 36).sum::<usize>());
    batch::encode_header(&mut out);
    for (id, body) in &found {
        batch::encode_entry(&mut out, &as_batch_id(*id), body);
    }
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], out).into_response())
}
