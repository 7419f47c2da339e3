//! Extractors that turn every malformed input into an [`ApiError`] with a JSON body.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use fsync_common::{DeviceId, NamespaceId, SyncPath, UserId};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::db::{Actor, DeviceStatus};
use crate::domain::accounts::ACCOUNT_DISABLED;
use crate::domain::roles::Role;
use crate::state::{now_secs, AppState};

/// JSON body with errors mapped to the API's error shape. A value that fails
/// [`SyncPath`] validation is refused as `invalid_path` with the field and the reason,
/// whatever the reason is (see [`path_error`]).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::BadRequest(
                "expected a request with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = match Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge(
                    "request body is too large".into(),
                ))
            }
            Err(e) => return Err(ApiError::BadRequest(e.body_text())),
        };
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(path_error::<T>(&bytes).map_or_else(
                || ApiError::BadRequest(e.body_text()),
                ApiError::InvalidPath,
            )),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// `application/json` or `application/*+json`, as axum's `Json` accepts.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

/// Largest body [`path_error`] re-parses to name the failing field exactly.
const PATH_WALK_MAX_BODY: usize = 256 << 10;

/// When `body` (well-formed JSON that does not deserialize as `T`) fails because a
/// value is not a valid [`SyncPath`], the message naming the field and the reason.
///
/// Structural, not by wording: serde's error locates the failing field, its value is
/// validated again with [`SyncPath::new`], and it is a path error only when that
/// validation fails with the very error serde reported. Inside an internally tagged
/// enum (a sync event) serde locates only the enum, so the strings under it are tried.
///
/// Only errors worded like a [`PathError`](fsync_common::PathError) (all start with
/// `path `) are looked into, and only in bodies up to [`PATH_WALK_MAX_BODY`]: the walk
/// parses the body into a `serde_json::Value`, many times its size for a long array,
/// and anyone may send a malformed body to the login routes. Larger bodies get serde's
/// location and message as they are.
fn path_error<T: DeserializeOwned>(body: &[u8]) -> Option<String> {
    let err =
        serde_path_to_error::deserialize::<_, T>(&mut serde_json::Deserializer::from_slice(body))
            .err()?;
    let message = err.inner().to_string();
    if !message.starts_with("path ") {
        return None;
    }
    if body.len() > PATH_WALK_MAX_BODY {
        let reason = message.split(" at line ").next().unwrap_or(&message);
        return Some(format!("{}: {reason}", err.path()));
    }
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut value = &doc;
    for segment in err.path() {
        value = match segment {
            serde_path_to_error::Segment::Seq { index } => value.get(*index)?,
            serde_path_to_error::Segment::Map { key } => value.get(key)?,
            serde_path_to_error::Segment::Enum { variant } => value.get(variant).unwrap_or(value),
            serde_path_to_error::Segment::Unknown => return None,
        };
    }
    invalid_path_under(value, &err.path().to_string(), &message)
}

/// The first string at or under `value` that [`SyncPath::new`] refuses with the error
/// `message` starts with (serde appends the position), as `"field: reason"`.
fn invalid_path_under(value: &serde_json::Value, at: &str, message: &str) -> Option<String> {
    let field = |name: &dyn std::fmt::Display| {
        if at == "." {
            name.to_string()
        } else {
            format!("{at}.{name}")
        }
    };
    match value {
        serde_json::Value::String(s) => {
            let reason = SyncPath::new(s).err()?.to_string();
            message
                .starts_with(&reason)
                .then(|| format!("{at}: {reason}"))
        }
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| invalid_path_under(v, &format!("{at}[{i}]"), message)),
        serde_json::Value::Object(fields) => fields
            .iter()
            .find_map(|(k, v)| invalid_path_under(v, &field(k), message)),
        _ => None,
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

    /// Checks the user's role in `ns` allows what the endpoint does (`allowed`, e.g.
    /// [`Role::can_write`]) and returns the role. Namespaces of other users, and
    /// memberships with a role this server does not know, are reported as not found,
    /// so their existence does not leak.
    pub async fn authorize(
        &self,
        state: &AppState,
        ns: NamespaceId,
        allowed: fn(Role) -> bool,
    ) -> Result<Role, ApiError> {
        match state.repo.role_in(self.user, ns).await? {
            None => Err(ApiError::NotFound("namespace not found".into())),
            Some(role) if !allowed(role) => {
                Err(ApiError::Forbidden("read-only access to this namespace"))
            }
            Some(role) => Ok(role),
        }
    }

    /// The namespace named in a request, or the user's first one.
    pub async fn namespace(
        &self,
        state: &AppState,
        ns: Option<NamespaceId>,
        allowed: fn(Role) -> bool,
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
        self.authorize(state, ns, allowed).await?;
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
    match state.repo.device_active(user, device, now_secs()).await? {
        DeviceStatus::Active => {}
        DeviceStatus::Revoked => {
            return Err(ApiError::Unauthorized(
                "this device was revoked or does not exist",
            ))
        }
        DeviceStatus::Disabled => return Err(ApiError::Forbidden(ACCOUNT_DISABLED)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        path: SyncPath,
        other: Vec<u64>,
    }

    #[test]
    fn path_errors_are_named_and_others_are_not() {
        let bad = br#"{"path": "../x", "other": [1, 2]}"#;
        let msg = path_error::<Body>(bad).unwrap();
        assert!(msg.starts_with("path: path has a '..' component"), "{msg}");
        assert_eq!(
            path_error::<Body>(br#"{"path": "ok", "other": ["x"]}"#),
            None
        );
        assert_eq!(path_error::<Body>(br#"{"other": []}"#), None);
    }

    /// A body far larger than the walk's cap, a bad path first and a long array
    /// after it, is classified from serde's own error without parsing it into a
    /// `Value` (which would take hundreds of MiB for 4 MiB of zeros).
    #[test]
    fn a_large_body_still_names_the_path_error() {
        let mut body = br#"{"path": "/etc/passwd", "other": ["#.to_vec();
        while body.len() < 4 << 20 {
            body.extend_from_slice(b"0,");
        }
        body.extend_from_slice(b"0]}");
        let msg = path_error::<Body>(&body).unwrap();
        assert!(msg.starts_with("path: path is absolute"), "{msg}");
        assert!(!msg.contains(" at line "), "{msg}");
    }
}
