//! Why an API call failed, and how HTTP and network failures become a [`ClientError`].

use fsync_common::{ChunkId, ErrorBody, ErrorCode};
use reqwest::{Method, StatusCode};

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error status and body.
    #[error("server answered {status} {}: {}", code_name(.body.error.code), .body.error.message)]
    Api {
        /// HTTP status.
        status: u16,
        /// The decoded error body (synthesized when the server sent none).
        body: ErrorBody,
    },
    /// A commit was refused because these chunks must be uploaded first (409
    /// `missing_chunks`).
    #[error("{} chunks must be uploaded before this commit", .0.len())]
    MissingChunks(Vec<ChunkId>),
    /// The credentials were refused, even after renewing the session.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// The server kept answering 429; retry after this many seconds.
    #[error("rate limited by the server; retry in {retry_after} s")]
    RateLimited {
        /// Seconds to wait.
        retry_after: u64,
    },
    /// The server could not be reached or the connection failed (refused, timeout, TLS,
    /// reset). Retryable.
    #[error("network error: {0}")]
    Network(String),
    /// The server's certificate was refused (unknown CA, expired, another name, not the
    /// pinned one). Not retryable: it takes the user or the server's operator to fix.
    #[error("TLS certificate refused: {0}")]
    Certificate(String),
    /// The server's answer could not be decoded or breaks the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client's configuration is unusable (bad URL, https without a CA file, a CA
    /// file without certificates).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// Local I/O failed (reading the CA file, writing the refresh token file).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl ClientError {
    /// True when trying again later may succeed: network failures, 5xx (and 408)
    /// answers and rate limiting. A refusal for the account's quota (507) is not: it
    /// takes deleting files or the operator to change.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Network(_) | Self::RateLimited { .. } => true,
            Self::Api { body, .. } if body.error.code == ErrorCode::QuotaExceeded => false,
            Self::Api { status, .. } => *status >= 500 || *status == 408,
            _ => false,
        }
    }

    /// The server's message when this is a refusal for the account's quota.
    pub fn quota_refusal(&self) -> Option<&str> {
        match self {
            Self::Api { body, .. } if body.error.code == ErrorCode::QuotaExceeded => {
                Some(&body.error.message)
            }
            _ => None,
        }
    }

    /// The server's error code, for [`ClientError::Api`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { body, .. } => Some(body.error.code),
            _ => None,
        }
    }
}

/// The wire name of an error code (`not_found`, …).
pub(super) fn code_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{code:?}"),
    }
}
/// An error status and body as a [`ClientError`].
pub(super) fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) if b.error.code == ErrorCode::MissingChunks => {
            ClientError::MissingChunks(b.error.missing)
        }
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            body: b,
        },
        Err(_) => {
            let code = match status {
                StatusCode::NOT_FOUND => ErrorCode::NotFound,
                StatusCode::FORBIDDEN => ErrorCode::Forbidden,
                StatusCode::CONFLICT => ErrorCode::Conflict,
                StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
                StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
                StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::BAD_GATEWAY
                | StatusCode::GATEWAY_TIMEOUT => ErrorCode::Unavailable,
                s if s.is_server_error() => ErrorCode::Internal,
                _ => ErrorCode::BadRequest,
            };
            let text: String = String::from_utf8_lossy(body)
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            ClientError::Api {
                status: status.as_u16(),
                body: ErrorBody::new(code, format!("HTTP {status} without an error body: {text}")),
            }
        }
    }
}

/// The message of an error body, for `Unauthorized`.
pub(super) fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body).map_or_else(
        |_| "the server refused the credentials".to_owned(),
        |b| b.error.message,
    )
}

/// Describes a transport error with its causes (reqwest's own text is terse).
pub(super) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

pub(super) fn network_error(
    method: &Method,
    url: &str,
    e: &reqwest::Error,
    read_timeout: Option<std::time::Duration>,
) -> ClientError {
    let what = if e.is_timeout() && !e.is_connect() {
        // The server took the connection but went quiet (overloaded, stuck, or not an
        // fsync server at all), or a large transfer ran out of time: say which.
        return ClientError::Network(match read_timeout {
            Some(read) => format!(
                "{method} {url} timed out: the server accepted the connection but sent no \
                 answer for {} s (is it overloaded or stuck? --timeout sets how long to wait)",
                read.as_secs()
            ),
            None => format!(
                "{method} {url} timed out: the transfer took longer than {} s",
                super::REQUEST_TIMEOUT.as_secs()
            ),
        });
    } else if e.is_timeout() {
        "timed out connecting"
    } else if let Some(failure) = super::tls::tls_failure(e, url) {
        let what = format!("{method} {url}: {}", failure.message);
        return if failure.certificate {
            ClientError::Certificate(what)
        } else {
            ClientError::Network(what)
        };
    } else if e.is_connect() {
        // reqwest's chain ("error sending request: client error (Connect): tcp connect
        // error: …") says less than its last link: "Connection refused (os error 111)".
        let mut last: &dyn std::error::Error = e;
        while let Some(s) = last.source() {
            last = s;
        }
        return ClientError::Network(format!("{method} {url} cannot connect: {last}"));
    } else {
        "failed"
    };
    let text = reqwest_error_text(e);
    if text.contains("invalid HTTP version") && url.starts_with("http://") {
        return ClientError::Network(format!(
            "{method} {url}: the server did not answer in plain HTTP; if it serves HTTPS, \
             write https:// instead of http:// ({text})"
        ));
    }
    ClientError::Network(format!("{method} {url} {what}: {text}"))
}

/// A reqwest error's description with its causes, without the URL (reported
/// separately, without its query, so that queries never reach messages and logs).
pub(super) fn reqwest_error_text(e: &reqwest::Error) -> String {
    let mut text = describe(e);
    while let Some(i) = text.find(" for url (") {
        let end = text[i..].find(')').map_or(text.len(), |j| i + j + 1);
        text.replace_range(i..end, "");
    }
    text
}
