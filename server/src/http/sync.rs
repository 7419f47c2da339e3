//! `/api/v1/sync/*`: batches of events, and the change journal.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use fsync_common::limits::{DEFAULT_PAGE, MAX_EVENTS_PER_BATCH, MAX_PAGE};
use fsync_common::wire::{
    ChangesQuery, ChangesResponse, SyncEvent, SyncEventBatch, SyncEventResponse, SyncEventResult,
};
use fsync_common::{ErrorBody, NamespaceId, Seq};

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Auth};
use crate::db::{BatchAnswer, BatchOp};
use crate::domain::files;
use crate::domain::roles::Role;
use crate::state::AppState;

/// `POST /api/v1/sync/event`: applies events in order; one result per event, a failed
/// event does not stop the others. Consecutive events on one namespace are applied in
/// one database transaction ([`files::apply_batch`]); the WebSocket push follows its
/// commit.
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
    // Authorize each namespace once; refused events are answered here.
    let mut access: HashMap<NamespaceId, Option<ErrorBody>> = HashMap::new();
    let mut results: Vec<Option<SyncEventResult>> = Vec::with_capacity(batch.events.len());
    let mut ops = Vec::with_capacity(batch.events.len());
    for ev in &batch.events {
        let op = match ev {
            SyncEvent::Create(c) | SyncEvent::Modify(c) => BatchOp::Commit(c),
            SyncEvent::Delete(d) => BatchOp::Delete(d),
            SyncEvent::Rename(r) => BatchOp::Rename(r),
        };
        let ns = op.namespace();
        let refused = if let Some(r) = access.get(&ns) {
            r.clone()
        } else {
            let r = auth
                .authorize(&state, ns, Role::can_write)
                .await
                .err()
                .map(|e| failed(&e));
            access.insert(ns, r.clone());
            r
        };
        if let Some(body) = refused {
            results.push(Some(SyncEventResult::Failed(body)));
        } else {
            results.push(None);
            ops.push(op);
        }
    }
    let mut answers = files::apply_batch(&state, auth.actor(), &ops)
        .await
        .into_iter();
    for slot in results.iter_mut().filter(|r| r.is_none()) {
        let answer = answers.next().expect("one answer per op");
        *slot = Some(match answer {
            Ok(BatchAnswer::Committed(r)) => SyncEventResult::Committed(r),
            Ok(BatchAnswer::Applied(r)) => SyncEventResult::Applied(r),
            Err(e) => SyncEventResult::Failed(failed(&e.into())),
        });
    }
    Ok(Json(SyncEventResponse {
        results: results.into_iter().flatten().collect(),
    }))
}

/// The body of a failed event; server-side failures are logged.
fn failed(e: &ApiError) -> ErrorBody {
    if let ApiError::Internal(d) | ApiError::Unavailable(d) | ApiError::StorageFull(d) = e {
        tracing::error!(detail = %d, "sync event failed");
    }
    e.body()
}

/// `GET /api/v1/sync/changes?since=&limit=`.
pub async fn changes(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> Result<Json<ChangesResponse>, ApiError> {
    let ns = auth.namespace(&state, q.namespace, Role::can_read).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    Ok(Json(
        state
            .repo
            .changes(ns, Seq(q.since.unwrap_or(0)), limit)
            .await?,
    ))
}
