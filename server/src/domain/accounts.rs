//! Accounts: registration, login, token renewal, logout, devices. The server stores a
//! hash of the client's derived auth key, never the password (ARCHITECTURE §3).

use fsync_common::wire::{
    DeviceInfo, KdfParams, LoginRequest, LoginResponse, RegisterRequest, RegisterResponse,
    TokenResponse,
};
use fsync_common::{DeviceId, NamespaceId, UserId};

use crate::auth::tokens::{
    hash_refresh_token, new_refresh_token, ACCESS_TTL_SECS, REFRESH_TTL_SECS,
};
use crate::db::{DbError, NewUser, Rotation, TokenOwner};
use crate::state::{now_secs, AppState};

/// What a refused login is told (the same for an unknown user and a wrong password).
pub(crate) const BAD_LOGIN: &str = "invalid username or password";
/// What a disabled account's logins and requests are told (403 `forbidden`).
pub(crate) const ACCOUNT_DISABLED: &str =
    "this account is disabled by the server's operator; nothing stored was deleted";
/// What a refused token renewal is told.
pub(crate) const BAD_REFRESH: &str = "invalid, expired or revoked refresh token";
pub(crate) const REFRESH_REUSED: &str = "this refresh token was already exchanged for a new one, so a \
     copy of it is in other hands: every token of this login is revoked; log in again with the password";

/// Why an account operation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// Registration: the username breaks the rule (400).
    #[error("username must be 3 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-'")]
    Username,
    /// Registration: the email is not an address (400).
    #[error("email must be an address like name@example.org")]
    Email,
    /// Registration: a key is not hex of the allowed length (400).
    #[error("{what} must be {min} to {max} bytes of hex")]
    HexKey {
        /// The field.
        what: &'static str,
        /// Fewest bytes.
        min: usize,
        /// Most bytes.
        max: usize,
    },
    /// Registration: the KDF parameters are out of bounds (400).
    #[error("{0}")]
    Kdf(String),
    /// Login: unknown user or wrong password, told apart for nobody (401).
    #[error("{BAD_LOGIN}")]
    BadLogin,
    /// Renewal: the refresh token is unknown, used, expired or its device revoked (401).
    #[error("{BAD_REFRESH}")]
    BadRefresh,
    /// Renewal: a rotated-out refresh token was presented again, so one copy of it was
    /// stolen; every token of its login is revoked (401 `refresh_token_reused`).
    #[error("{REFRESH_REUSED}")]
    RefreshReused,
    /// The operator disabled the account (403).
    #[error("{ACCOUNT_DISABLED}")]
    Disabled,
    /// The device is not one of the user's (404).
    #[error("device not found")]
    NoSuchDevice,
    /// The repository failed or refused.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Hashing failed or its task died (500).
    #[error("{0}")]
    Internal(String),
}

fn check_hex_key(what: &'static str, v: &str, min: usize, max: usize) -> Result<(), AccountError> {
    let ok = v.len() >= min * 2
        && v.len() <= max * 2
        && v.len().is_multiple_of(2)
        && v.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(AccountError::HexKey { what, min, max })
    }
}

fn check_username(u: &str) -> Result<(), AccountError> {
    let ok = (3..=64).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AccountError::Username)
    }
}

/// Checks a registration before any work is spent on it.
fn check_registration(req: &RegisterRequest) -> Result<(), AccountError> {
    check_username(&req.username)?;
    if let Some(email) = req.email.as_deref().filter(|e| !e.is_empty()) {
        if email.len() > 254 || !email.contains('@') || email.chars().any(char::is_control) {
            return Err(AccountError::Email);
        }
    }
    check_hex_key("password (the derived auth key)", &req.password, 32, 32)?;
    check_hex_key("wrapped_account_key", &req.wrapped_account_key, 40, 256)?;
    check_hex_key("wrapped_namespace_key", &req.wrapped_namespace_key, 40, 256)?;
    fsync_store::validate_kdf_params(&req.kdf).map_err(|e| AccountError::Kdf(e.to_string()))
}

/// The KDF parameters of a user; stable fake ones for unknown users, so that usernames
/// cannot be enumerated.
pub(crate) async fn kdf_params(state: &AppState, username: &str) -> Result<KdfParams, DbError> {
    Ok(match state.repo.find_user(username).await? {
        Some(u) => u.kdf,
        // Usernames are case-sensitive but `fake_kdf_params` folds case: feed it an
        // injective, case-free form, or "bob" and "BOB" would share a fake salt only
        // while "bob" does not exist, which tells whether it does.
        None => fsync_store::fake_kdf_params(&state.secret, &hex::encode(username)),
    })
}

/// Creates a user with its first namespace.
pub(crate) async fn register(
    state: &AppState,
    req: RegisterRequest,
) -> Result<RegisterResponse, AccountError> {
    check_registration(&req)?;
    let password = req.password.clone();
    let auth_hash = tokio::task::spawn_blocking(move || fsync_store::hash_auth_key(&password))
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?
        .map_err(|e| AccountError::Internal(e.to_string()))?;
    let user = NewUser {
        id: UserId::from_bytes(rand::random()),
        username: req.username,
        email: req.email.filter(|e| !e.is_empty()),
        auth_hash,
        kdf: req.kdf,
        wrapped_account_key: req.wrapped_account_key,
        namespace: NamespaceId::from_bytes(rand::random()),
        wrapped_namespace_key: req.wrapped_namespace_key,
    };
    let (user_id, namespace_id) = (user.id, user.namespace);
    state.repo.create_user(user, now_secs()).await?;
    tracing::info!(user = %user_id, "registered");
    Ok(RegisterResponse {
        user_id,
        namespace_id,
    })
}

/// Logs a device in: unknown user and wrong password get the same answer, after the
/// same amount of work.
pub(crate) async fn login(
    state: &AppState,
    req: LoginRequest,
) -> Result<LoginResponse, AccountError> {
    let user = state.repo.find_user(&req.username).await?;
    let hash = user.as_ref().map_or_else(
        || state.dummy_hash.as_str().to_owned(),
        |u| u.auth_hash.clone(),
    );
    let key = req.password;
    let ok = tokio::task::spawn_blocking(move || fsync_store::verify_auth_key(&key, &hash))
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?;
    let Some(user) = user.filter(|_| ok) else {
        // The same line for an unknown user and a wrong password (the answer is the
        // same too); never the password.
        tracing::info!(username = ?req.username, "login refused: unknown user or wrong password");
        return Err(AccountError::BadLogin);
    };
    if user.disabled {
        tracing::info!(user = %user.id, "login refused: the account is disabled");
        return Err(AccountError::Disabled);
    }
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
    let owner = TokenOwner {
        user: user.id,
        device,
    };
    let expires = now + REFRESH_TTL_SECS as i64;
    state
        .repo
        .insert_refresh(&refresh_hash, owner, expires, now)
        .await?;
    let namespaces = state.repo.namespaces_of(user.id).await?;
    tracing::info!(user = %user.id, device = %device, "login");
    Ok(LoginResponse {
        access_token: state.tokens.issue(user.id, device, now as u64),
        token_type: "bearer".into(),
        expires_in: ACCESS_TTL_SECS,
        refresh_token: refresh,
        device_id: device,
        user_id: user.id,
        wrapped_account_key: user.wrapped_account_key,
        namespaces,
    })
}

/// Rotates a refresh token: the old one stops working, a new pair is issued.
pub(crate) async fn refresh(
    state: &AppState,
    refresh_token: &str,
) -> Result<TokenResponse, AccountError> {
    let now = now_secs();
    let (new, new_hash) = new_refresh_token();
    let expires = now + REFRESH_TTL_SECS as i64;
    let hash = hash_refresh_token(refresh_token);
    let grace = state.limits.refresh_retry_grace.as_secs() as i64;
    let rotation = state
        .repo
        .rotate_refresh(&hash, &new_hash, expires, now, grace)
        .await?;
    let owner = match rotation {
        Rotation::Rotated(owner) => owner,
        Rotation::Invalid => return Err(AccountError::BadRefresh),
        Rotation::Disabled(_) => return Err(AccountError::Disabled),
        Rotation::Reused(owner) => {
            state
                .metrics
                .refresh_reuse
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(user = %owner.user, device = %owner.device, "a rotated-out refresh token was presented again (stolen copy?): its login is revoked");
            return Err(AccountError::RefreshReused);
        }
    };
    Ok(TokenResponse {
        access_token: state.tokens.issue(owner.user, owner.device, now as u64),
        token_type: "bearer".into(),
        expires_in: ACCESS_TTL_SECS,
        refresh_token: new,
    })
}

/// Forgets a refresh token of `owner`'s user and device. Any other token (unknown,
/// already used, or another user's or device's) is left alone, and the answer is the
/// same, so that logout neither revokes nor tells anything about someone else's session.
pub(crate) async fn logout(
    state: &AppState,
    owner: TokenOwner,
    refresh_token: &str,
) -> Result<(), DbError> {
    state
        .repo
        .delete_refresh(&hash_refresh_token(refresh_token), owner)
        .await?;
    Ok(())
}

/// The user's devices.
pub(crate) async fn devices(state: &AppState, user: UserId) -> Result<Vec<DeviceInfo>, DbError> {
    state.repo.list_devices(user).await
}

/// Revokes a device: its tokens stop working at once and its open sockets close.
pub(crate) async fn revoke_device(
    state: &AppState,
    user: UserId,
    device: DeviceId,
) -> Result<(), AccountError> {
    if state.repo.revoke_device(user, device).await? {
        state.device_revoked(device);
        Ok(())
    } else {
        Err(AccountError::NoSuchDevice)
    }
}
