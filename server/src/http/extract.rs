//! Extractors that turn every malformed input into an [`ApiError`] with a JSON body.

use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use fsync_common::{DeviceId, NamespaceId, UserId};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::db::Actor;
use crate::state::{now_secs, AppState};

/// JSON body with errors mapped to the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::PayloadTooLarge(
                    "request body is too large".into(),
                ))
            }
            Err(JsonRejection::JsonDataError(e)) => {
                let msg = e.body_text();
                if msg.contains("path")
                    && (msg.contains("component")
                        || msg.contains("absolute")
                        || msg.contains("backslash")
                        || msg.contains("NUL")
                        || msg.contains("control")
                        || msg.contains("drive"))
                {
                    Err(ApiError::InvalidPath(msg))
                } else {
                    Err(ApiError::BadRequest(msg))
                }
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// Query string with errors mapped to the API's error shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}

/// The client's address (or "unknown" when served without connect info, as in tests).
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0)
                .or_else(|| {
                    parts
                        .extensions
                        .get::<ConnectInfo<crate::tls::PeerAddr>>()
                        .map(|c| c.0 .0)
                })
                .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string()),
        ))
    }
}

/// An authenticated request: a valid access token of a device that is not revoked,
/// within the user's API rate limit.
#[derive(Debug, Clone, Copy)]
pub struct Auth {
    /// User.
    pub user: UserId,
    /// Device.
    pub device: DeviceId,
}

impl Auth {
    /// As a repository actor.
    pub fn actor(&self) -> Actor {
        Actor {
            user: self.user,
            device: self.device,
        }
    }

    /// Checks the user may access `ns` (`write`: as owner or editor). Namespaces of
    /// other users are reported as not found, so their existence does not leak.
    pub async fn authorize(
        &self,
        state: &AppState,
        ns: NamespaceId,
        write: bool,
    ) -> Result<(), ApiError> {
        match state.repo.role_in(self.user, ns).await?.as_deref() {
            None => Err(ApiError::NotFound("namespace not found".into())),
            Some("viewer") if write => {
                Err(ApiError::Forbidden("read-only access to this namespace"))
            }
            Some(_) => Ok(()),
        }
    }

    /// The namespace named in a request, or the user's first one.
    pub async fn namespace(
        &self,
        state: &AppState,
        ns: Option<NamespaceId>,
        write: bool,
    ) -> Result<NamespaceId, ApiError> {
        let ns = match ns {
            Some(ns) => ns,
            None => state
                .repo
                .namespaces_of(self.user)
                .await?
                .first()
                .map(|g| g.id)
                .ok_or_else(|| ApiError::NotFound("the account has no namespace".into()))?,
        };
        self.authorize(state, ns, write).await?;
        Ok(ns)
    }
}

/// Extracts the bearer token of a request.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Verifies a token and the device behind it.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Auth, ApiError> {
    let (user, device, _) = state
        .tokens
        .verify(token)
        .map_err(|_| ApiError::Unauthorized("invalid or expired access token"))?;
    if !state.repo.device_active(user, device, now_secs()).await? {
        return Err(ApiError::Unauthorized(
            "this device was revoked or does not exist",
        ));
    }
    state
        .limiter
        .hit(&format!("api:{user}"), state.limits.api_per_user)
        .map_err(ApiError::RateLimited)?;
    Ok(Auth { user, device })
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized("missing bearer token"))?;
        authenticate(state, token).await
    }
}
