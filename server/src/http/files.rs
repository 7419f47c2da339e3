//! `/api/v1/files/*`: commit manifests, list, download manifests, history, restore,
//! delete, rename.

use axum::extract::{Path, State};
use axum::Json;
use fsync_common::limits::{DEFAULT_PAGE, MAX_PAGE};
use fsync_common::wire::{
    CommitRequest, CommitResponse, DeleteRequest, ListQuery, ListResponse, Manifest,
    ManifestsRequest, OpResponse, RenameInfo, RenameRequest, RestoreRequest, VersionInfo,
};
use fsync_common::{FileId, SyncPath, VersionNo};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Auth};
use crate::domain::files;
use crate::domain::roles::Role;
use crate::state::AppState;

/// `POST /api/v1/files/upload`: commit a manifest whose chunks are stored.
pub async fn upload(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<CommitRequest>,
) -> Result<Json<CommitResponse>, ApiError> {
    auth.authorize(&state, req.namespace, Role::can_write)
        .await?;
    Ok(Json(files::commit(&state, auth.actor(), &req).await?))
}

/// `GET /api/v1/files/list`.
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListResponse>, ApiError> {
    let ns = auth.namespace(&state, q.namespace, Role::can_read).await?;
    let prefix = match q.prefix.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => Some(SyncPath::new(p).map_err(|e| ApiError::InvalidPath(e.to_string()))?),
        None => None,
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    Ok(Json(
        state
            .repo
            .list_files(
                ns,
                prefix.as_ref().map(SyncPath::as_str),
                q.include_deleted,
                q.after.as_deref(),
                limit,
            )
            .await?,
    ))
}

async fn file_of(
    state: &AppState,
    auth: &Auth,
    raw: &str,
    allowed: fn(Role) -> bool,
) -> Result<FileId, ApiError> {
    let id = FileId::from_hex(raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let ns = state
        .repo
        .file_namespace(id)
        .await?
        .ok_or_else(|| ApiError::NotFound("file not found".into()))?;
    auth.authorize(state, ns, allowed)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(_) => ApiError::NotFound("file not found".into()),
            other => other,
        })?;
    Ok(id)
}

/// `?version=` of the download route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    version: Option<u64>,
}

/// `GET /api/v1/files/download/{file_id}[?version=N]`: the manifest; the client fetches
/// and decrypts the chunks.
pub async fn download(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> Result<Json<Manifest>, ApiError> {
    let id = file_of(&state, &auth, &id, Role::can_read).await?;
    Ok(Json(
        state.repo.manifest(id, q.version.map(VersionNo)).await?,
    ))
}

/// `POST /api/v1/files/manifests`: the manifests of many file versions at once.
pub async fn manifests(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<ManifestsRequest>,
) -> Result<Json<Vec<Manifest>>, ApiError> {
    if req.files.len() > fsync_common::limits::MAX_EVENTS_PER_BATCH {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} files in one request; the limit is {}",
            req.files.len(),
            fsync_common::limits::MAX_EVENTS_PER_BATCH
        )));
    }
    auth.authorize(&state, req.namespace, Role::can_read)
        .await?;
    // A file of another namespace is reported like a missing one.
    let out = state
        .repo
        .manifests(req.namespace, &req.files, req.pages)
        .await?;
    Ok(Json(out))
}

/// `GET /api/v1/files/{file_id}/versions`.
pub async fn versions(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<VersionInfo>>, ApiError> {
    let id = file_of(&state, &auth, &id, Role::can_read).await?;
    Ok(Json(state.repo.versions(id).await?))
}

/// `GET /api/v1/files/{file_id}/renames`.
pub async fn renames(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<RenameInfo>>, ApiError> {
    let id = file_of(&state, &auth, &id, Role::can_read).await?;
    Ok(Json(state.repo.renames(id).await?))
}

/// `POST /api/v1/files/{file_id}/restore`.
pub async fn restore(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> Result<Json<CommitResponse>, ApiError> {
    let id = file_of(&state, &auth, &id, Role::can_write).await?;
    Ok(Json(
        files::restore(&state, auth.actor(), id, req.version).await?,
    ))
}

/// `POST /api/v1/files/delete`.
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<DeleteRequest>,
) -> Result<Json<OpResponse>, ApiError> {
    auth.authorize(&state, req.namespace, Role::can_write)
        .await?;
    Ok(Json(files::delete(&state, auth.actor(), &req).await?))
}

/// `POST /api/v1/files/rename`.
pub async fn rename(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<RenameRequest>,
) -> Result<Json<OpResponse>, ApiError> {
    auth.authorize(&state, req.namespace, Role::can_write)
        .await?;
    Ok(Json(files::rename(&state, auth.actor(), &req).await?))
}
