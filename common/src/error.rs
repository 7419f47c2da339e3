//! The JSON error body every API error uses: `{"error":{"code","message"}}`.

use serde::{Deserialize, Serialize};

use crate::ids::{ChunkId, PageId};

/// Machine-readable error codes. Clients branch on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request body or a parameter is malformed.
    BadRequest,
    /// A path failed validation; the message names the reason.
    InvalidPath,
    /// Missing, expired or invalid credentials.
    Unauthorized,
    /// A refresh token that was already exchanged was presented again: every token of
    /// its login is revoked, and the device must log in with the password (401).
    RefreshTokenReused,
    /// Authenticated, but not allowed to touch this resource.
    Forbidden,
    /// The resource does not exist (or is not visible to the caller).
    NotFound,
    /// The username or email is taken, or a similar uniqueness clash.
    Conflict,
    /// A commit references chunks the server does not hold; `missing` lists them.
    MissingChunks,
    /// A commit names manifest pages the server does not hold; `missing_pages` lists
    /// them (upload them with `pages/batch`, or send the plain chunk list).
    MissingPages,
    /// The body is larger than the endpoint accepts.
    PayloadTooLarge,
    /// Too many requests; retry after the `Retry-After` header.
    RateLimited,
    /// The blob failed validation (size, header).
    InvalidBlob,
    /// Something failed on the server; details are in its log.
    Internal,
    /// A dependency (database, blob store) is unavailable.
    Unavailable,
    /// The upload would take the account past its storage quota (507); nothing was
    /// stored, and what was stored before is kept.
    QuotaExceeded,
}

/// Inner part of an error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message a user can act on.
    pub message: String,
    /// For [`ErrorCode::MissingChunks`]: the chunk ids to upload first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<ChunkId>,
    /// For [`ErrorCode::MissingPages`]: the page ids to upload first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_pages: Vec<PageId>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

impl ErrorBody {
    /// An error body with no extra fields.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
                missing: Vec::new(),
                missing_pages: Vec::new(),
            },
        }
    }
}

/// An error and its causes on one line, each cause said once: error types that print
/// their source in their own message (`database error: {0}` over a `#[source]`) would
/// otherwise repeat it at every level of the chain.
///
/// ```
/// let io = std::io::Error::other("disk full");
/// let outer = std::io::Error::other(format!("writing x: {io}"));
/// assert_eq!(fsync_common::one_line(&outer), "writing x: disk full");
/// ```
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}
