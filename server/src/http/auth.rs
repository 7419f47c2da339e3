//! `/api/v1/auth/*` and `/api/v1/devices`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use fsync_common::wire::{
    DeviceInfo, KdfParams, LoginRequest, LoginResponse, RefreshRequest, RegisterRequest,
    RegisterResponse, TokenResponse, UsageResponse,
};
use fsync_common::DeviceId;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Auth, ClientIp};
use crate::db::TokenOwner;
use crate::domain::accounts;
use crate::state::AppState;

/// Query of `GET /api/v1/auth/params`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ParamsQuery {
    username: String,
}

fn limit_auth(state: &AppState, ip: &str, username: Option<&str>) -> Result<(), ApiError> {
    state
        .limiter
        .hit(&format!("auth-ip:{ip}"), state.limits.auth_per_ip)
        .map_err(ApiError::RateLimited)?;
    if let Some(u) = username {
        state
            .limiter
            .hit(
                &format!("auth-user:{}", u.to_lowercase()),
                state.limits.auth_per_user,
            )
            .map_err(ApiError::RateLimited)?;
    }
    Ok(())
}

/// `GET /api/v1/auth/params?username=`: KDF parameters; stable fake ones for unknown
/// users, so that usernames cannot be enumerated.
pub async fn params(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiQuery(q): ApiQuery<ParamsQuery>,
) -> Result<Json<KdfParams>, ApiError> {
    limit_auth(&state, &ip, None)?;
    Ok(Json(accounts::kdf_params(&state, &q.username).await?))
}

/// `POST /api/v1/auth/register`.
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    limit_auth(&state, &ip, None)?;
    let r = accounts::register(&state, req).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// `POST /api/v1/auth/login`: unknown user and wrong password get the same answer,
/// after the same amount of work.
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    limit_auth(&state, &ip, Some(&req.username))?;
    Ok(Json(accounts::login(&state, req).await?))
}

/// `POST /api/v1/auth/refresh`: rotates the refresh token.
pub async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    limit_auth(&state, &ip, None)?;
    Ok(Json(accounts::refresh(&state, &req.refresh_token).await?))
}

/// `POST /api/v1/auth/logout`: forgets the caller's refresh token. Only a token of the
/// caller's own user and device is deleted; any other token (unknown, already used, or
/// another user's or device's) is left alone and answered the same way, 204, so that
/// logout neither revokes nor tells anything about someone else's session.
pub async fn logout(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    let owner = TokenOwner {
        user: auth.user,
        device: auth.device,
    };
    accounts::logout(&state, owner, &req.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/devices`.
pub async fn list_devices(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<DeviceInfo>>, ApiError> {
    Ok(Json(accounts::devices(&state, auth.user).await?))
}

/// `GET /api/v1/usage`: the stored bytes of the user's namespaces and the quota.
pub async fn usage(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<UsageResponse>, ApiError> {
    let u = state.repo.usage_of(auth.user).await?;
    Ok(Json(UsageResponse {
        used_bytes: u.used_bytes,
        quota_bytes: u.quota_bytes,
    }))
}

/// `DELETE /api/v1/devices/{id}`: revokes a device; its tokens stop working at once and
/// its open WebSockets are closed.
pub async fn revoke_device(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let device = DeviceId::from_hex(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    accounts::revoke_device(&state, auth.user, device).await?;
    Ok(StatusCode::NO_CONTENT)
}
