//! The session's tokens: the access token, renewal by refresh token (rotated and
//! persisted) or by logging in again with the remembered credentials.

use std::path::Path;

use fsync_common::wire::{LoginRequest, LoginResponse, RefreshRequest, TokenResponse};

use super::transport::{api, Call};
use super::{ApiClient, ClientError, Credentials, Session};

/// Writes `contents` to `path` atomically and durably, readable by the owner only.
pub(super) fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    fsync_common::durable::write_atomic(path, contents, Some(0o600))
}

impl ApiClient {
    // ------------------------------------------------------------------ session

    /// The current access token, renewing the session when there is none.
    pub(super) async fn access_token(&self) -> Result<String, ClientError> {
        if let Some(t) = self.inner.session.lock().await.access.clone() {
            return Ok(t);
        }
        self.renew(None).await?;
        self.inner
            .session
            .lock()
            .await
            .access
            .clone()
            .ok_or_else(|| ClientError::Unauthorized("not logged in".into()))
    }

    /// Gets a new access token after `failed` was refused: by refresh token, else by
    /// logging in again. Does nothing when another task already replaced `failed`.
    pub(super) async fn renew(&self, failed: Option<&str>) -> Result<(), ClientError> {
        let mut s = self.inner.session.lock().await;
        if s.access.is_some() && s.access.as_deref() != failed {
            return Ok(());
        }
        s.access = None;
        if let Some(refresh) = s.refresh.take() {
            match self.refresh_raw(&refresh).await {
                Ok(t) => {
                    tracing::debug!("access token renewed by refresh token");
                    return self
                        .store_tokens(&mut s, t.access_token, t.refresh_token)
                        .await;
                }
                Err(ClientError::Unauthorized(why)) => {
                    // A reuse revokes the login (the server says so): the password,
                    // remembered for this session, makes a new one.
                    tracing::warn!(reason = %why, "the server refused the refresh token; logging in again");
                }
                Err(e) => {
                    // Not refused, just not answered: keep it for the next attempt.
                    s.refresh = Some(refresh);
                    return Err(e);
                }
            }
        }
        let Some(creds) = s.credentials.clone() else {
            return Err(ClientError::Unauthorized(
                "the session expired and no credentials are remembered to log in again".into(),
            ));
        };
        let r = self.login_raw(&creds).await?;
        tracing::debug!("logged in again with the remembered credentials");
        if let Some(c) = s.credentials.as_mut() {
            c.device_id = Some(r.device_id);
        }
        self.store_tokens(&mut s, r.access_token, r.refresh_token)
            .await
    }

    /// Keeps new tokens and persists the refresh token.
    pub(super) async fn store_tokens(
        &self,
        s: &mut Session,
        access: String,
        refresh: String,
    ) -> Result<(), ClientError> {
        s.access = Some(access);
        s.refresh = Some(refresh.clone());
        self.persist_refresh(Some(refresh)).await
    }

    /// Writes (or with `None`, deletes) the token file, if one is configured.
    pub(super) async fn persist_refresh(&self, token: Option<String>) -> Result<(), ClientError> {
        let path = self.token_path();
        let Some(path) = path else { return Ok(()) };
        let p = path.clone();
        let result = tokio::task::spawn_blocking(move || match token {
            Some(t) => write_private_file(&p, format!("{t}\n").as_bytes()),
            None => match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        })
        .await
        .map_err(|e| ClientError::Io {
            what: format!("writing the token file {}", path.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
        result.map_err(|source| ClientError::Io {
            what: format!("writing the token file {}", path.display()),
            source,
        })
    }

    pub(super) async fn refresh_raw(
        &self,
        refresh_token: &str,
    ) -> Result<TokenResponse, ClientError> {
        let call = Call::post(api("auth/refresh"))
            .anonymous()
            .json(&RefreshRequest {
                refresh_token: refresh_token.to_owned(),
            })?;
        self.send_anonymous_json(call).await
    }

    pub(super) async fn login_raw(&self, c: &Credentials) -> Result<LoginResponse, ClientError> {
        let call = Call::post(api("auth/login"))
            .anonymous()
            .json(&LoginRequest {
                username: c.username.clone(),
                password: c.auth_key_hex.clone(),
                device_name: Some(c.device_name.clone()),
                device_id: c.device_id,
            })?;
        self.send_anonymous_json(call).await
    }
}
