//! `/api/v1/auth/*` and `/api/v1/devices`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use fsync_common::wire::{
    DeviceInfo, KdfParams, LoginRequest, LoginResponse, RefreshRequest, RegisterRequest,
    RegisterResponse, TokenResponse,
};
use fsync_common::{DeviceId, NamespaceId, UserId};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Auth, ClientIp};
use crate::auth::tokens::{
    hash_refresh_token, new_refresh_token, ACCESS_TTL_SECS, REFRESH_TTL_SECS,
};
use crate::db::{NewUser, TokenOwner};
use crate::state::{now_secs, AppState};

const BAD_LOGIN: &str = "invalid username or password";

/// Query of `GET /api/v1/auth/params`.
#[derive(Debug, Deserialize)]
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

fn check_hex_key(what: &str, v: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let ok = v.len() >= min * 2
        && v.len() <= max * 2
        && v.len().is_multiple_of(2)
        && v.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} must be {min} to {max} bytes of hex"
        )))
    }
}

fn check_username(u: &str) -> Result<(), ApiError> {
    let ok = (3..=64).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "username must be 3 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-'".into(),
        ))
    }
}

/// `GET /api/v1/auth/params?username=`: KDF parameters; stable fake ones for unknown
/// users, so that usernames cannot be enumerated.
pub async fn params(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiQuery(q): ApiQuery<ParamsQuery>,
) -> Result<Json<KdfParams>, ApiError> {
    limit_auth(&state, &ip, None)?;
    let found = state.repo.find_user(&q.username).await?;
    Ok(Json(match found {
        Some(u) => u.kdf,
        // Usernames are case-sensitive but `fake_kdf_params` folds case: feed it an
        // injective, case-free form, or "bob" and "BOB" would share a fake salt only
        // while "bob" does not exist, which tells whether it does.
        None => fsync_store::fake_kdf_params(&state.secret, &hex::encode(&q.username)),
    }))
}

/// `POST /api/v1/auth/register`.
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    limit_auth(&state, &ip, None)?;
    check_username(&req.username)?;
    if req.email.len() > 254 || !req.email.contains('@') {
        return Err(ApiError::BadRequest(
            "email must be an address like name@example.org".into(),
        ));
    }
    check_hex_key("password (the derived auth key)", &req.password, 32, 32)?;
    check_hex_key("wrapped_account_key", &req.wrapped_account_key, 40, 256)?;
    check_hex_key("wrapped_namespace_key", &req.wrapped_namespace_key, 40, 256)?;
    fsync_store::validate_kdf_params(&req.kdf).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let password = req.password.clone();
    let auth_hash = tokio::task::spawn_blocking(move || fsync_store::hash_auth_key(&password))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let user = NewUser {
        id: UserId::from_bytes(rand::random()),
        username: req.username,
        email: req.email,
        auth_hash,
        kdf: req.kdf,
        wrapped_account_key: req.wrapped_account_key,
        namespace: NamespaceId::from_bytes(rand::random()),
        wrapped_namespace_key: req.wrapped_namespace_key,
    };
    let (user_id, namespace_id) = (user.id, user.namespace);
    state.repo.create_user(user, now_secs()).await?;
    tracing::info!(user = %user_id, "registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            user_id,
            namespace_id,
        }),
    ))
}

async fn verify_password(key: String, hash: String) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || fsync_store::verify_auth_key(&key, &hash))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `POST /api/v1/auth/login`: unknown user and wrong password get the same answer,
/// after the same amount of work.
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    limit_auth(&state, &ip, Some(&req.username))?;
    let user = state.repo.find_user(&req.username).await?;
    let hash = user.as_ref().map_or_else(
        || state.dummy_hash.as_str().to_owned(),
        |u| u.auth_hash.clone(),
    );
    let ok = verify_password(req.password.clone(), hash).await?;
    let Some(user) = user.filter(|_| ok) else {
        return Err(ApiError::Unauthorized(BAD_LOGIN));
    };
    let now = now_secs();
    let name = req.device_name.as_deref().unwrap_or("device");
    let name: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
    let device = state
        .repo
        .register_device(
            user.id,
            req.device_id,
            DeviceId::from_bytes(rand::random()),
            &name,
            now,
        )
        .await?;
    let (refresh, refresh_hash) = new_refresh_token();
    state
        .repo
        .insert_refresh(
            &refresh_hash,
            TokenOwner {
                user: user.id,
                device,
            },
            now + REFRESH_TTL_SECS as i64,
            now,
        )
        .await?;
    let namespaces = state.repo.namespaces_of(user.id).await?;
    tracing::info!(user = %user.id, device = %device, "login");
    Ok(Json(LoginResponse {
        access_token: state.tokens.issue(user.id, device, now as u64),
        token_type: "bearer".into(),
        expires_in: ACCESS_TTL_SECS,
        refresh_token: refresh,
        device_id: device,
        user_id: user.id,
        wrapped_account_key: user.wrapped_account_key,
        namespaces,
    }))
}

/// `POST /api/v1/auth/refresh`: rotates the refresh token.
pub async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    limit_auth(&state, &ip, None)?;
    let now = now_secs();
    let (new, new_hash) = new_refresh_token();
    let owner = state
        .repo
        .rotate_refresh(
            &hash_refresh_token(&req.refresh_token),
            &new_hash,
            now + REFRESH_TTL_SECS as i64,
            now,
        )
        .await?
        .ok_or(ApiError::Unauthorized(
            "invalid, expired or revoked refresh token",
        ))?;
    Ok(Json(TokenResponse {
        access_token: state.tokens.issue(owner.user, owner.device, now as u64),
        token_type: "bearer".into(),
        expires_in: ACCESS_TTL_SECS,
        refresh_token: new,
    }))
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
    state
        .repo
        .delete_refresh(
            &hash_refresh_token(&req.refresh_token),
            TokenOwner {
                user: auth.user,
                device: auth.device,
            },
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/devices`.
pub async fn list_devices(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<DeviceInfo>>, ApiError> {
    Ok(Json(state.repo.list_devices(auth.user).await?))
}

/// `DELETE /api/v1/devices/{id}`: revokes a device; its tokens stop working at once and
/// its open WebSockets are closed.
pub async fn revoke_device(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let device = DeviceId::from_hex(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if state.repo.revoke_device(auth.user, device).await? {
        state.device_revoked(device);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("device not found".into()))
    }
}
