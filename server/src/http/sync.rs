//! `/api/v1/sync/*`: batches of events, and the change journal.

use axum::extract::State;
use axum::Json;
use fsync_common::limits::{DEFAULT_PAGE, MAX_EVENTS_PER_BATCH, MAX_PAGE};
use fsync_common::wire::{
    ChangesQuery, ChangesResponse, SyncEvent, SyncEventBatch, SyncEventResponse, SyncEventResult,
};
use fsync_common::Seq;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Auth};
use super::files::{do_commit, do_delete, do_rename};
use crate::state::AppState;

/// `POST /api/v1/sync/event`: applies events in order; one result per event, a failed
/// event does not stop the others.
pub async fn event(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(batch): ApiJson<SyncEventBatch>,
) -> Result<Json<SyncEventResponse>, ApiError> {
    if batch.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} events in one batch; the limit is {MAX_EVENTS_PER_BATCH}",
            batch.events.len()
        )));
    }
    let mut results = Vec::with_capacity(batch.events.len());
    for ev in &batch.events {
        let r = match ev {
            SyncEvent::Create(c) | SyncEvent::Modify(c) => do_commit(&state, &auth, c)
                .await
                .map(|r| SyncEventResult::Committed(Box::new(r))),
            SyncEvent::Delete(d) => do_delete(&state, &auth, d)
                .await
                .map(SyncEventResult::Applied),
            SyncEvent::Rename(r) => do_rename(&state, &auth, r)
                .await
                .map(SyncEventResult::Applied),
        };
        results.push(r.unwrap_or_else(|e| {
            if let ApiError::Internal(d) | ApiError::Unavailable(d) | ApiError::StorageFull(d) = &e
            {
                tracing::error!(detail = %d, "sync event failed");
            }
            SyncEventResult::Failed(e.body())
        }));
    }
    Ok(Json(SyncEventResponse { results }))
}

/// `GET /api/v1/sync/changes?since=&limit=`.
pub async fn changes(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> Result<Json<ChangesResponse>, ApiError> {
    let ns = auth.namespace(&state, q.namespace, false).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    Ok(Json(
        state
            .repo
            .changes(ns, Seq(q.since.unwrap_or(0)), limit)
            .await?,
    ))
}
