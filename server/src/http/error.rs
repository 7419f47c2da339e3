//! The one place where domain errors become HTTP status codes and JSON bodies.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fsync_common::{ChunkId, ErrorBody, ErrorCode, PageId};

use crate::db::DbError;
use crate::domain::accounts::{AccountError, BAD_LOGIN, BAD_REFRESH, REFRESH_REUSED};
use crate::domain::downloads::DownloadError;
use crate::domain::uploads::UploadError;
use crate::domain::WriteError;

/// An API error. 5xx details are logged here and never sent.
#[derive(Debug)]
pub enum ApiError {
    /// 400.
    BadRequest(String),
    /// 400, a path failed validation.
    InvalidPath(String),
    /// 401.
    Unauthorized(&'static str),
    /// 401 `refresh_token_reused`: the login was revoked.
    RefreshReused(&'static str),
    /// 403.
    Forbidden(&'static str),
    /// 404.
    NotFound(String),
    /// 405: the endpoint exists but not with this method (the router adds `Allow`).
    /// `common`'s error codes have none for it, so the code is `bad_request`.
    MethodNotAllowed(String),
    /// 409.
    Conflict(String),
    /// 409 with the ids to upload first.
    MissingChunks(Vec<ChunkId>),
    /// 409 with the manifest pages to upload first.
    MissingPages(Vec<PageId>),
    /// 413.
    PayloadTooLarge(String),
    /// 429, with the seconds to wait.
    RateLimited(u64),
    /// 422, a blob that is not one.
    InvalidBlob(String),
    /// 507 `quota_exceeded`: the upload would pass the account's quota.
    QuotaExceeded(String),
    /// 503.
    Unavailable(String),
    /// 503, the blob store is out of space (the detail goes to the log only).
    StorageFull(String),
    /// 500; the detail goes to the log only.
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, ErrorCode, String) {
        match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest, m.clone()),
            Self::InvalidPath(m) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidPath, m.clone()),
            Self::Unauthorized(m) => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                (*m).to_owned(),
            ),
            Self::RefreshReused(m) => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::RefreshTokenReused,
                (*m).to_owned(),
            ),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden, (*m).to_owned()),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, ErrorCode::NotFound, m.clone()),
            Self::MethodNotAllowed(m) => (
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadRequest,
                m.clone(),
            ),
            Self::Conflict(m) => (StatusCode::CONFLICT, ErrorCode::Conflict, m.clone()),
            Self::MissingChunks(ids) => (
                StatusCode::CONFLICT,
                ErrorCode::MissingChunks,
                format!("{} chunks must be uploaded before this commit", ids.len()),
            ),
            Self::MissingPages(ids) => (
                StatusCode::CONFLICT,
                ErrorCode::MissingPages,
                format!(
                    "{} manifest pages must be uploaded before this commit",
                    ids.len()
                ),
            ),
            Self::PayloadTooLarge(m) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                m.clone(),
            ),
            Self::RateLimited(s) => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("too many requests; retry in {s} s"),
            ),
            Self::InvalidBlob(m) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::InvalidBlob,
                m.clone(),
            ),
            Self::QuotaExceeded(m) => (
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::QuotaExceeded,
                m.clone(),
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "a storage service is unavailable; try again later".to_owned(),
            ),
            Self::StorageFull(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "the server's storage is full; try again later".to_owned(),
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error; the server log has the details".to_owned(),
            ),
        }
    }

    /// The JSON body this error is sent as (also used per event in `sync/event`).
    pub fn body(&self) -> ErrorBody {
        let (_, code, message) = self.parts();
        let mut body = ErrorBody::new(code, message);
        match self {
            Self::MissingChunks(ids) => body.error.missing.clone_from(ids),
            Self::MissingPages(ids) => body.error.missing_pages.clone_from(ids),
            _ => {}
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        match &self {
            Self::Internal(detail) | Self::Unavailable(detail) | Self::StorageFull(detail) => {
                tracing::error!(%status, detail = %detail, "request failed");
            }
            _ => tracing::debug!(%status, error = ?self, "request refused"),
        }
        let mut resp = (status, Json(self.body())).into_response();
        if let Self::RateLimited(s) = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        Self::of_db(&e)
    }
}

impl From<fsync_store::StoreError> for ApiError {
    fn from(e: fsync_store::StoreError) -> Self {
        Self::of_store(&e)
    }
}

impl ApiError {
    fn of_db(e: &DbError) -> Self {
        match e {
            DbError::UsernameTaken | DbError::PathExists(_) | DbError::PathInUse(_) => {
                Self::Conflict(e.to_string())
            }
            DbError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            DbError::MissingChunks(ids) => Self::MissingChunks(ids.clone()),
            DbError::MissingPages(ids) => Self::MissingPages(ids.clone()),
            DbError::Invalid(r) => Self::BadRequest(r.to_string()),
            DbError::UnsupportedUrl(m) => Self::BadRequest(m.clone()),
            DbError::Backend(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed,
            ) => Self::Unavailable(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }

    fn of_store(e: &fsync_store::StoreError) -> Self {
        match e {
            fsync_store::StoreError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                Self::StorageFull(format!("blob store: {e}"))
            }
            _ => Self::Unavailable(format!("blob store: {e}")),
        }
    }

    fn of_upload(e: &UploadError) -> Self {
        match e {
            UploadError::InvalidBlob { .. } => Self::InvalidBlob(e.to_string()),
            UploadError::Db(DbError::Blob(e)) | UploadError::Store(e) => Self::of_store(e),
            UploadError::Db(e) => Self::of_db(e),
            UploadError::Group(e) => Self::of_upload(e),
            UploadError::Quota { .. } => Self::QuotaExceeded(e.to_string()),
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Username
            | AccountError::Email
            | AccountError::HexKey { .. }
            | AccountError::Kdf(_) => Self::BadRequest(e.to_string()),
            AccountError::BadLogin => Self::Unauthorized(BAD_LOGIN),
            AccountError::BadRefresh => Self::Unauthorized(BAD_REFRESH),
            AccountError::RefreshReused => Self::RefreshReused(REFRESH_REUSED),
            AccountError::Disabled => Self::Forbidden(crate::domain::accounts::ACCOUNT_DISABLED),
            AccountError::NoSuchDevice => Self::NotFound(e.to_string()),
            AccountError::Db(e) => e.into(),
            AccountError::Internal(d) => Self::Internal(d),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        Self::of_upload(&e)
    }
}

impl From<DownloadError> for ApiError {
    fn from(e: DownloadError) -> Self {
        match e {
            DownloadError::Db(e) => e.into(),
            DownloadError::Store(e) => e.into(),
            DownloadError::BlobMissing(_) => Self::Internal(e.to_string()),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Db(e) => e.into(),
            WriteError::Fault(d) => Self::Internal(d),
        }
    }
}
