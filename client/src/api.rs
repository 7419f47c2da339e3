//! Typed client of the fsync server's HTTP and WebSocket API.
//!
//! [`ApiClient`] wraps every endpoint of `/api/v1` in one method taking and returning
//! the types of [`fsync_common::wire`]. It is cheap to clone (an `Arc` inside) and all
//! clones share one session, so the engine can use it from many tasks.
//!
//! - **Authentication.** [`ApiClient::login`] (or [`ApiClient::resume`] with a stored
//!   refresh token) opens a session. Every authenticated call that gets a 401 renews the
//!   session once — with the refresh token (which rotates; the new one is written to the
//!   token file, see [`ApiClient::with_token_file`]), else by logging in again with the
//!   remembered credentials — and is then retried once. Concurrent 401s renew only once.
//! - **Rate limits.** A 429 is retried after its `Retry-After` (each wait capped at
//!   [`MAX_RETRY_WAIT`]) up to [`MAX_RATE_LIMIT_RETRIES`] times, then it is
//!   [`ClientError::RateLimited`].
//! - **Other failures** (network, 5xx) are not retried here: the caller decides, helped
//!   by [`ClientError::is_retryable`].
//! - **Limits.** Requests are split to stay within [`fsync_common::limits`]; responses
//!   are read up to a bound per endpoint, so a broken server cannot exhaust memory.
//! - **TLS** (rustls, ring). An `https://` server needs a CA file
//!   (`ca_cert`): its certificates are the only roots trusted. This build carries no
//!   built-in roots; for a server with a public certificate pass the system bundle
//!   (e.g. `/etc/ssl/certs/ca-certificates.crt`).
//! - **Logging.** Requests are logged at debug level as method, path (no query) and
//!   status. Tokens, passwords and auth keys are never logged.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fsync_common::limits::{
    DEFAULT_PAGE, MAX_BATCH_BODY, MAX_BLOB_SIZE, MAX_EVENTS_PER_BATCH, MAX_IDS_PER_REQUEST,
    MAX_PAGE,
};
use fsync_common::wire::{
    ChangesResponse, ChunkIdsRequest, CommitRequest, CommitResponse, DeleteRequest, DeviceInfo,
    FileMeta, KdfParams, ListResponse, LoginRequest, LoginResponse, Manifest, MissingResponse,
    OpResponse, PushMessage, RefreshRequest, RegisterRequest, RegisterResponse, RenameRequest,
    RestoreRequest, StoredResponse, SyncEvent, SyncEventBatch, SyncEventResponse, SyncEventResult,
    TokenResponse, VersionInfo,
};
use fsync_common::{
    batch, ChunkId, DeviceId, ErrorBody, ErrorCode, FileId, NamespaceId, Seq, VersionNo,
};
use futures_util::StreamExt as _;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite;

/// Time allowed to open a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one whole request, body transfer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How many times a 429 answer is retried before [`ClientError::RateLimited`].
pub const MAX_RATE_LIMIT_RETRIES: u32 = 3;
/// Longest single wait for a `Retry-After`.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// The push socket is closed (ending the stream) after this long without any message;
/// the server sends a heartbeat every 20 s.
pub const PUSH_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest JSON answer accepted (a list or changes page, a manifest, a history).
const MAX_JSON_RESPONSE: usize = 64 * 1024 * 1024;
/// Largest batch download accepted: the server stops adding entries at
/// `MAX_BATCH_BODY` (counting blobs, not their 36-byte entry headers).
const MAX_FETCH_RESPONSE: usize = MAX_BATCH_BODY + 1024 * 1024;
/// Largest push message accepted.
const MAX_PUSH_MESSAGE: usize = 64 * 1024;
/// Size of the batch header (`"FSBT"` + version).
const BATCH_HEADER_LEN: usize = 5;
/// Size of a batch entry header (chunk id + length).
const BATCH_ENTRY_HEADER_LEN: usize = 36;

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
    /// answers and rate limiting.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Network(_) | Self::RateLimited { .. } => true,
            Self::Api { status, .. } => *status >= 500 || *status == 408,
            _ => false,
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
fn code_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{code:?}"),
    }
}

/// Traffic counters of an [`ApiClient`] (shared by its clones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiStats {
    /// HTTP requests sent (retries included) and WebSocket handshakes.
    pub requests: u64,
    /// Bytes of request bodies sent.
    pub bytes_up: u64,
    /// Bytes of response bodies and push messages received.
    pub bytes_down: u64,
}

/// What is needed to log in again when the refresh token is refused.
#[derive(Clone)]
struct Credentials {
    username: String,
    auth_key_hex: String,
    device_name: String,
    device_id: Option<DeviceId>,
}

/// The tokens of the session; guarded by one async mutex so that renewals are serial.
#[derive(Default)]
struct Session {
    access: Option<String>,
    refresh: Option<String>,
    credentials: Option<Credentials>,
}

struct Inner {
    http: reqwest::Client,
    /// `scheme://host[:port][/prefix]`, no trailing slash.
    base: String,
    /// `ws[s]://host[:port][/prefix]/api/v1/ws`.
    ws_url: String,
    /// TLS configuration for `wss://` (the same roots as HTTPS).
    tls: Option<Arc<rustls::ClientConfig>>,
    session: Mutex<Session>,
    token_file: std::sync::Mutex<Option<PathBuf>>,
    page_size: AtomicU32,
    requests: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// Typed client of the server API; clones share the session and the counters.
#[derive(Clone)]
pub struct ApiClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No tokens or credentials.
        f.debug_struct("ApiClient")
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

/// One request to send (and possibly resend).
struct Call {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<(Vec<u8>, &'static str)>,
    /// Send the access token, and renew the session on 401.
    auth: bool,
    /// Renew and retry on 401 (false: a 401 is returned as `Unauthorized` at once).
    renew: bool,
    max_response: usize,
}

impl Call {
    fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            body: None,
            auth: true,
            renew: true,
            max_response: MAX_JSON_RESPONSE,
        }
    }

    fn get(path: String) -> Self {
        Self::new(Method::GET, path)
    }

    fn post(path: String) -> Self {
        Self::new(Method::POST, path)
    }

    fn query(mut self, key: &'static str, value: &impl ToString) -> Self {
        self.query.push((key, value.to_string()));
        self
    }

    fn json(mut self, body: &impl Serialize) -> Result<Self, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| {
            ClientError::Protocol(format!("cannot encode the body of {}: {e}", self.path))
        })?;
        self.body = Some((bytes, "application/json"));
        Ok(self)
    }

    fn bytes(mut self, body: Vec<u8>) -> Self {
        self.body = Some((body, "application/octet-stream"));
        self
    }

    fn anonymous(mut self) -> Self {
        self.auth = false;
        self.renew = false;
        self
    }

    fn max_response(mut self, max: usize) -> Self {
        self.max_response = max;
        self
    }
}

/// Path of an API endpoint.
fn api(rest: &str) -> String {
    format!("/api/v1/{rest}")
}

fn decode_json<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body)
        .map_err(|e| ClientError::Protocol(format!("unexpected answer from {path}: {e}")))
}

/// An error status and body as a [`ClientError`].
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
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
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body).map_or_else(
        |_| "the server refused the credentials".to_owned(),
        |b| b.error.message,
    )
}

/// Describes a transport error with its causes (reqwest's own text is terse).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
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

fn network_error(method: &Method, url: &str, e: &reqwest::Error) -> ClientError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    ClientError::Network(format!("{method} {url} {what}: {}", reqwest_error_text(e)))
}

/// A reqwest error's description with its causes, without the URL (reported
/// separately, without its query, so that queries never reach messages and logs).
fn reqwest_error_text(e: &reqwest::Error) -> String {
    let mut text = describe(e);
    while let Some(i) = text.find(" for url (") {
        let end = text[i..].find(')').map_or(text.len(), |j| i + j + 1);
        text.replace_range(i..end, "");
    }
    text
}

/// Reads a response body up to `max` bytes.
async fn read_body(
    mut resp: reqwest::Response,
    max: usize,
    method: &Method,
    url: &str,
) -> Result<Vec<u8>, ClientError> {
    let too_big = || {
        ClientError::Protocol(format!(
            "the answer to {method} {url} exceeds the {max}-byte limit"
        ))
    };
    let declared = resp.content_length().unwrap_or(0);
    if declared > max as u64 {
        return Err(too_big());
    }
    let mut out = Vec::with_capacity(declared as usize);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| network_error(method, url, &e))?
    {
        if out.len() + chunk.len() > max {
            return Err(too_big());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Loads every certificate of a PEM file into a root store.
fn load_roots(path: &Path) -> Result<rustls::RootCertStore, ClientError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;

    let pem = std::fs::read(path).map_err(|source| ClientError::Io {
        what: format!("reading the CA file {}", path.display()),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| ClientError::Config(format!("CA file {}: {e}", path.display())))?;
        roots.add(cert).map_err(|e| {
            ClientError::Config(format!(
                "CA file {}: unusable certificate: {e}",
                path.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(ClientError::Config(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(roots)
}

fn tls_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, ClientError> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Config(format!("TLS set-up: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Writes `contents` to `path` atomically and durably, readable by the owner only.
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    fsync_common::durable::write_atomic(path, contents, Some(0o600))
}

impl ApiClient {
    /// A client of the server at `server_url` (`http://host:port` or `https://…`, an
    /// optional path prefix allowed). `ca_cert` is a PEM file whose certificates are the
    /// only TLS roots trusted; it is required for `https://` (this build has no
    /// built-in roots: pass the system bundle for a public certificate) and unused for
    /// `http://`. Timeouts: [`CONNECT_TIMEOUT`], [`REQUEST_TIMEOUT`].
    pub fn new(server_url: &str, ca_cert: Option<&Path>) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(server_url.trim())
            .map_err(|e| ClientError::Config(format!("server URL {server_url:?}: {e}")))?;
        let ws_scheme = match url.scheme() {
            "http" => "ws",
            "https" => "wss",
            other => {
                return Err(ClientError::Config(format!(
                    "server URL {server_url:?}: scheme {other:?} is not http or https"
                )))
            }
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ClientError::Config(format!(
                "server URL {server_url:?} has no host"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(ClientError::Config(format!(
                "server URL {server_url:?} must not have a query, fragment or user name"
            )));
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        let ws_url = format!("{ws_scheme}{}/api/v1/ws", &base[url.scheme().len()..]);

        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("fsync-client/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none());
        let tls = if url.scheme() == "https" {
            let Some(ca) = ca_cert else {
                return Err(ClientError::Config(format!(
                    "{server_url} is https but no CA file was given: pass --ca-cert with the \
                     server's CA (or the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt)"
                )));
            };
            let config = Arc::new(tls_config(load_roots(ca)?)?);
            builder = builder.use_preconfigured_tls((*config).clone());
            Some(config)
        } else {
            None
        };
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client set-up: {}", describe(&e))))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                ws_url,
                tls,
                session: Mutex::new(Session::default()),
                token_file: std::sync::Mutex::new(None),
                page_size: AtomicU32::new(DEFAULT_PAGE),
                requests: AtomicU64::new(0),
                bytes_up: AtomicU64::new(0),
                bytes_down: AtomicU64::new(0),
            }),
        })
    }

    /// Where the refresh token is kept, if anywhere.
    fn token_path(&self) -> Option<PathBuf> {
        self.inner
            .token_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Persists the refresh token to `path` whenever it changes (written atomically,
    /// mode 0600); [`ApiClient::logout`] deletes the file. Applies to all clones.
    #[must_use]
    pub fn with_token_file(self, path: PathBuf) -> Self {
        *self
            .inner
            .token_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(path);
        self
    }

    /// Page size [`ApiClient::list_all`] asks for (clamped to `1..=MAX_PAGE`; default
    /// `DEFAULT_PAGE`). Applies to all clones.
    #[must_use]
    pub fn with_page_size(self, page: u32) -> Self {
        self.inner
            .page_size
            .store(page.clamp(1, MAX_PAGE), Ordering::Relaxed);
        self
    }

    /// Reads a refresh token written by [`ApiClient::with_token_file`]; `None` when the
    /// file does not exist or is empty.
    pub fn read_token_file(path: &Path) -> Result<Option<String>, ClientError> {
        match std::fs::read_to_string(path) {
            Ok(s) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ClientError::Io {
                what: format!("reading the token file {}", path.display()),
                source,
            }),
        }
    }

    /// Traffic counters since the client was made.
    pub fn stats(&self) -> ApiStats {
        ApiStats {
            requests: self.inner.requests.load(Ordering::Relaxed),
            bytes_up: self.inner.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.inner.bytes_down.load(Ordering::Relaxed),
        }
    }

    /// True when the client holds an access token or a way to get one.
    pub async fn has_session(&self) -> bool {
        let s = self.inner.session.lock().await;
        s.access.is_some() || s.refresh.is_some() || s.credentials.is_some()
    }

    /// Replaces the access token (tests use it to simulate an expired token).
    #[doc(hidden)]
    pub async fn set_access_token_for_test(&self, token: &str) {
        self.inner.session.lock().await.access = Some(token.to_owned());
    }

    /// Replaces the refresh token in memory only (tests use it to simulate a revoked one).
    #[doc(hidden)]
    pub async fn set_refresh_token_for_test(&self, token: &str) {
        self.inner.session.lock().await.refresh = Some(token.to_owned());
    }

    // ------------------------------------------------------------------ transport

    /// Sends one request once and reads the answer.
    async fn execute(
        &self,
        req: reqwest::Request,
        max_response: usize,
    ) -> Result<(StatusCode, Option<u64>, Vec<u8>), ClientError> {
        let method = req.method().clone();
        // Scheme, host and path only: queries stay out of messages and logs.
        let mut where_ = req.url().clone();
        where_.set_query(None);
        let up = req
            .body()
            .and_then(reqwest::Body::as_bytes)
            .map_or(0, <[u8]>::len);
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.bytes_up.fetch_add(up as u64, Ordering::Relaxed);
        let resp = self
            .inner
            .http
            .execute(req)
            .await
            .map_err(|e| network_error(&method, where_.as_str(), &e))?;
        let status = resp.status();
        tracing::debug!(%method, path = where_.path(), status = status.as_u16(), "api request");
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = read_body(resp, max_response, &method, where_.as_str()).await?;
        self.inner
            .bytes_down
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok((status, retry_after, body))
    }

    /// Builds the request of a call (without credentials).
    fn build(&self, call: Call) -> Result<(reqwest::Request, usize), ClientError> {
        let url = format!("{}{}", self.inner.base, call.path);
        let mut builder = self.inner.http.request(call.method.clone(), &url);
        if !call.query.is_empty() {
            builder = builder.query(&call.query);
        }
        if let Some((body, content_type)) = call.body {
            builder = builder.header(CONTENT_TYPE, content_type).body(body);
        }
        let req = builder.build().map_err(|e| {
            ClientError::Config(format!("cannot build {} {}: {e}", call.method, call.path))
        })?;
        Ok((req, call.max_response))
    }

    /// Sends a request with `token`, waiting out 429s. `Ok(Err(..))` is an error answer.
    async fn attempt(
        &self,
        template: &reqwest::Request,
        token: Option<&str>,
        max_response: usize,
    ) -> Result<Result<Vec<u8>, (StatusCode, Vec<u8>)>, ClientError> {
        let mut waits = 0;
        loop {
            let mut req = template
                .try_clone()
                .expect("request bodies are held in memory");
            if let Some(token) = token {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        ClientError::Protocol("the access token is not a valid header value".into())
                    })?;
                value.set_sensitive(true);
                req.headers_mut().insert(AUTHORIZATION, value);
            }
            let (status, retry_after, body) = self.execute(req, max_response).await?;
            if status.is_success() {
                return Ok(Ok(body));
            }
            if status != StatusCode::TOO_MANY_REQUESTS {
                return Ok(Err((status, body)));
            }
            let secs = retry_after.unwrap_or(1);
            if waits == MAX_RATE_LIMIT_RETRIES {
                return Err(ClientError::RateLimited { retry_after: secs });
            }
            waits += 1;
            let wait = Duration::from_secs(secs).min(MAX_RETRY_WAIT);
            tracing::debug!(
                path = template.url().path(),
                wait_s = wait.as_secs(),
                "rate limited; waiting"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends a call without credentials.
    async fn send_anonymous(&self, call: Call) -> Result<Vec<u8>, ClientError> {
        let (template, max) = self.build(call)?;
        match self.attempt(&template, None, max).await? {
            Ok(body) => Ok(body),
            Err((StatusCode::UNAUTHORIZED, body)) => {
                Err(ClientError::Unauthorized(error_message(&body)))
            }
            Err((status, body)) => Err(api_error(status, &body)),
        }
    }

    /// Sends a call with the session's access token; on 401 renews the session once
    /// (unless the call says not to) and retries. Returns the body of the answer.
    async fn send(&self, call: Call) -> Result<Vec<u8>, ClientError> {
        if !call.auth {
            return self.send_anonymous(call).await;
        }
        let renew = call.renew;
        let (template, max) = self.build(call)?;
        let mut renewed = false;
        loop {
            let token = self.access_token().await?;
            match self.attempt(&template, Some(&token), max).await? {
                Ok(body) => return Ok(body),
                Err((StatusCode::UNAUTHORIZED, _)) if renew && !renewed => {
                    renewed = true;
                    self.renew(Some(&token)).await?;
                }
                Err((StatusCode::UNAUTHORIZED, body)) => {
                    return Err(ClientError::Unauthorized(error_message(&body)))
                }
                Err((status, body)) => return Err(api_error(status, &body)),
            }
        }
    }

    async fn send_json<T: DeserializeOwned>(&self, call: Call) -> Result<T, ClientError> {
        let path = call.path.clone();
        let body = self.send(call).await?;
        decode_json(&path, &body)
    }

    async fn send_anonymous_json<T: DeserializeOwned>(&self, call: Call) -> Result<T, ClientError> {
        let path = call.path.clone();
        let body = self.send_anonymous(call).await?;
        decode_json(&path, &body)
    }

    // ------------------------------------------------------------------ session

    /// The current access token, renewing the session when there is none.
    async fn access_token(&self) -> Result<String, ClientError> {
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
    async fn renew(&self, failed: Option<&str>) -> Result<(), ClientError> {
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
                Err(ClientError::Unauthorized(_)) => {
                    tracing::debug!("refresh token refused");
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
    async fn store_tokens(
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
    async fn persist_refresh(&self, token: Option<String>) -> Result<(), ClientError> {
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

    async fn refresh_raw(&self, refresh_token: &str) -> Result<TokenResponse, ClientError> {
        let call = Call::post(api("auth/refresh"))
            .anonymous()
            .json(&RefreshRequest {
                refresh_token: refresh_token.to_owned(),
            })?;
        self.send_anonymous_json(call).await
    }

    async fn login_raw(&self, c: &Credentials) -> Result<LoginResponse, ClientError> {
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

    // ------------------------------------------------------------------ auth

    /// Key-derivation parameters of `username` (stable fake ones for unknown users).
    pub async fn auth_params(&self, username: &str) -> Result<KdfParams, ClientError> {
        self.send_json(
            Call::get(api("auth/params"))
                .anonymous()
                .query("username", &username),
        )
        .await
    }

    /// Creates an account (does not log in).
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.send_json(Call::post(api("auth/register")).anonymous().json(req)?)
            .await
    }

    /// Logs in with the derived auth key (hex) — never the password. Keeps the tokens,
    /// persists the refresh token, and remembers the credentials (with the device id
    /// the server assigned) to log in again when the refresh token is refused.
    pub async fn login(
        &self,
        username: &str,
        auth_key_hex: &str,
        device_name: &str,
        device_id: Option<DeviceId>,
    ) -> Result<LoginResponse, ClientError> {
        let mut creds = Credentials {
            username: username.to_owned(),
            auth_key_hex: auth_key_hex.to_owned(),
            device_name: device_name.to_owned(),
            device_id,
        };
        let mut s = self.inner.session.lock().await;
        let r = self.login_raw(&creds).await?;
        creds.device_id = Some(r.device_id);
        s.credentials = Some(creds);
        self.store_tokens(&mut s, r.access_token.clone(), r.refresh_token.clone())
            .await?;
        Ok(r)
    }

    /// Opens a session from a stored refresh token (e.g. read with
    /// [`ApiClient::read_token_file`]), without the password. The token rotates.
    pub async fn resume(&self, refresh_token: &str) -> Result<(), ClientError> {
        let mut s = self.inner.session.lock().await;
        let t = self.refresh_raw(refresh_token).await?;
        self.store_tokens(&mut s, t.access_token, t.refresh_token)
            .await
    }

    /// Opens a session from the refresh token in the token file (see
    /// [`ApiClient::with_token_file`]) and remembers the credentials to log in again if
    /// the session is refused later. `Ok(false)`: there is no stored token, or the
    /// server refused it (expired, revoked) — log in instead.
    pub async fn resume_stored(
        &self,
        username: &str,
        auth_key_hex: &str,
        device_name: &str,
        device_id: DeviceId,
    ) -> Result<bool, ClientError> {
        let path = self.token_path();
        let Some(token) = path
            .map(|p| Self::read_token_file(&p))
            .transpose()?
            .flatten()
        else {
            return Ok(false);
        };
        let mut s = self.inner.session.lock().await;
        match self.refresh_raw(&token).await {
            Ok(t) => {
                s.credentials = Some(Credentials {
                    username: username.to_owned(),
                    auth_key_hex: auth_key_hex.to_owned(),
                    device_name: device_name.to_owned(),
                    device_id: Some(device_id),
                });
                self.store_tokens(&mut s, t.access_token, t.refresh_token)
                    .await?;
                Ok(true)
            }
            Err(ClientError::Unauthorized(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ends the session on the server (its refresh token stops working), forgets the
    /// tokens and credentials and deletes the token file.
    pub async fn logout(&self) -> Result<(), ClientError> {
        // The body carries the refresh token, which a renewal rotates: renew by hand,
        // then rebuild the body.
        for attempt in 0..2 {
            let refresh = self.inner.session.lock().await.refresh.clone();
            let Some(refresh) = refresh else { break };
            let token = self.access_token().await?;
            let mut call = Call::post(api("auth/logout")).json(&RefreshRequest {
                refresh_token: refresh,
            })?;
            call.renew = false;
            match self.send(call).await {
                Ok(_) => break,
                Err(ClientError::Unauthorized(_)) if attempt == 0 => {
                    self.renew(Some(&token)).await?;
                }
                Err(e) => return Err(e),
            }
        }
        let mut s = self.inner.session.lock().await;
        *s = Session::default();
        self.persist_refresh(None).await
    }

    /// The user's devices.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        self.send_json(Call::get(api("devices"))).await
    }

    // ------------------------------------------------------------------ chunks

    /// The subset of `ids` the server does not hold in `ns` (split into requests of at
    /// most `MAX_IDS_PER_REQUEST` ids).
    pub async fn missing(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>, ClientError> {
        let mut out = Vec::new();
        for part in ids.chunks(MAX_IDS_PER_REQUEST) {
            let call = Call::post(api("chunks/missing")).json(&ChunkIdsRequest {
                namespace: ns,
                ids: part.to_vec(),
            })?;
            let r: MissingResponse = self.send_json(call).await?;
            let asked: HashSet<&ChunkId> = part.iter().collect();
            if let Some(bad) = r.missing.iter().find(|id| !asked.contains(id)) {
                return Err(ClientError::Protocol(format!(
                    "chunks/missing answered chunk {bad}, which was not asked"
                )));
            }
            out.extend(r.missing);
        }
        Ok(out)
    }

    /// Uploads one blob (idempotent).
    pub async fn put_chunk(
        &self,
        ns: NamespaceId,
        id: ChunkId,
        blob: Vec<u8>,
    ) -> Result<(), ClientError> {
        let call = Call::new(Method::PUT, api(&format!("chunks/{id}")))
            .query("namespace", &ns)
            .bytes(blob);
        self.send(call).await.map(drop)
    }

    /// Uploads many blobs in as few batch requests as the limits allow
    /// (`MAX_BATCH_BODY` bytes and `MAX_IDS_PER_REQUEST` blobs per request).
    pub async fn put_batch(
        &self,
        ns: NamespaceId,
        blobs: &[(ChunkId, Vec<u8>)],
    ) -> Result<(), ClientError> {
        let mut rest = blobs;
        while !rest.is_empty() {
            let mut size = BATCH_HEADER_LEN;
            let mut n = 0;
            for (_, blob) in rest {
                let entry = BATCH_ENTRY_HEADER_LEN + blob.len();
                // Always at least one entry: an oversized one gets its own request, and
                // the server's refusal.
                if n > 0 && (size + entry > MAX_BATCH_BODY || n == MAX_IDS_PER_REQUEST) {
                    break;
                }
                size += entry;
                n += 1;
            }
            let (part, tail) = rest.split_at(n);
            let mut body = Vec::with_capacity(size);
            batch::encode_header(&mut body);
            for (id, blob) in part {
                batch::encode_entry(&mut body, id, blob);
            }
            let call = Call::post(api("chunks/batch"))
                .query("namespace", &ns)
                .bytes(body);
            let r: StoredResponse = self.send_json(call).await?;
            if (r.stored + r.existing) as usize != part.len() {
                return Err(ClientError::Protocol(format!(
                    "chunks/batch accounted for {} of {} blobs",
                    r.stored + r.existing,
                    part.len()
                )));
            }
            rest = tail;
        }
        Ok(())
    }

    /// Downloads one blob.
    pub async fn get_chunk(&self, ns: NamespaceId, id: ChunkId) -> Result<Vec<u8>, ClientError> {
        let call = Call::get(api(&format!("chunks/{id}")))
            .query("namespace", &ns)
            .max_response(MAX_BLOB_SIZE);
        self.send(call).await
    }

    /// Downloads the blobs of `ids` that the server holds, in the order of `ids`
    /// (duplicates asked once); absent ids are left out. Requests again until every
    /// present blob arrived, as the server cuts an answer at `MAX_BATCH_BODY`. An entry
    /// that was not asked for, comes twice, or exceeds `MAX_BLOB_SIZE` is a
    /// [`ClientError::Protocol`].
    pub async fn fetch_batch(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<(ChunkId, Vec<u8>)>, ClientError> {
        let mut seen = HashSet::with_capacity(ids.len());
        let wanted: Vec<ChunkId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        let mut got: HashMap<ChunkId, Vec<u8>> = HashMap::with_capacity(wanted.len());
        for group in wanted.chunks(MAX_IDS_PER_REQUEST) {
            let mut pending: Vec<ChunkId> = group.to_vec();
            while !pending.is_empty() {
                let call = Call::post(api("chunks/fetch"))
                    .json(&ChunkIdsRequest {
                        namespace: ns,
                        ids: pending.clone(),
                    })?
                    .max_response(MAX_FETCH_RESPONSE);
                let body = self.send(call).await?;
                let entries = batch::decode(&body, MAX_BLOB_SIZE).map_err(|e| {
                    ClientError::Protocol(format!("chunks/fetch answered a bad batch: {e}"))
                })?;
                if entries.is_empty() {
                    // Whatever is still pending is absent.
                    break;
                }
                let asked: HashSet<ChunkId> = pending.iter().copied().collect();
                for (id, blob) in entries {
                    if !asked.contains(&id) || got.contains_key(&id) {
                        return Err(ClientError::Protocol(format!(
                            "chunks/fetch answered chunk {id}, which was not asked or came twice"
                        )));
                    }
                    got.insert(id, blob.to_vec());
                }
                pending.retain(|id| !got.contains_key(id));
            }
        }
        Ok(wanted
            .into_iter()
            .filter_map(|id| got.remove(&id).map(|b| (id, b)))
            .collect())
    }

    // ------------------------------------------------------------------ files

    /// Commits a manifest whose chunks are stored. A 409 `missing_chunks` becomes
    /// [`ClientError::MissingChunks`] with the ids to upload first.
    pub async fn commit(&self, req: &CommitRequest) -> Result<CommitResponse, ClientError> {
        self.send_json(Call::post(api("files/upload")).json(req)?)
            .await
    }

    /// Tombstones a path (applies only to the version the client saw).
    pub async fn delete(&self, req: &DeleteRequest) -> Result<OpResponse, ClientError> {
        self.send_json(Call::post(api("files/delete")).json(req)?)
            .await
    }

    /// Renames a file or a folder (no data moves).
    pub async fn rename(&self, req: &RenameRequest) -> Result<OpResponse, ClientError> {
        self.send_json(Call::post(api("files/rename")).json(req)?)
            .await
    }

    /// One page of the files of `ns` in path order, after `after`.
    pub async fn list_page(
        &self,
        ns: NamespaceId,
        prefix: Option<&str>,
        include_deleted: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ListResponse, ClientError> {
        let mut call = Call::get(api("files/list"))
            .query("namespace", &ns)
            .query("include_deleted", &include_deleted)
            .query("limit", &limit);
        if let Some(p) = prefix {
            call = call.query("prefix", &p);
        }
        if let Some(a) = after {
            call = call.query("after", &a);
        }
        self.send_json(call).await
    }

    /// Every file of `ns` (below `prefix`), following the pages.
    pub async fn list_all(
        &self,
        ns: NamespaceId,
        prefix: Option<&str>,
        include_deleted: bool,
    ) -> Result<Vec<FileMeta>, ClientError> {
        let limit = self.inner.page_size.load(Ordering::Relaxed);
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .list_page(ns, prefix, include_deleted, after.as_deref(), limit)
                .await?;
            out.extend(page.files);
            match page.next {
                Some(next) if after.as_deref().is_none_or(|a| a < next.as_str()) => {
                    after = Some(next);
                }
                Some(next) => {
                    return Err(ClientError::Protocol(format!(
                        "files/list does not advance: next {next:?} after {after:?}"
                    )))
                }
                None => return Ok(out),
            }
        }
    }

    /// The manifest of a file's head, or of `version`.
    pub async fn manifest(
        &self,
        file: FileId,
        version: Option<VersionNo>,
    ) -> Result<Manifest, ClientError> {
        let mut call = Call::get(api(&format!("files/download/{file}")));
        if let Some(v) = version {
            call = call.query("version", &v.0);
        }
        self.send_json(call).await
    }

    /// The manifests of many file versions, in order (requests of at most
    /// `MAX_EVENTS_PER_BATCH` files each).
    pub async fn manifests(
        &self,
        ns: NamespaceId,
        files: &[(FileId, VersionNo)],
    ) -> Result<Vec<Manifest>, ClientError> {
        let mut out = Vec::with_capacity(files.len());
        for part in files.chunks(MAX_EVENTS_PER_BATCH) {
            let call =
                Call::post(api("files/manifests")).json(&fsync_common::wire::ManifestsRequest {
                    namespace: ns,
                    files: part.to_vec(),
                })?;
            let got: Vec<Manifest> = self.send_json(call).await?;
            if got.len() != part.len()
                || got
                    .iter()
                    .zip(part)
                    .any(|(m, (f, v))| m.meta.file_id != *f || m.meta.version != *v)
            {
                return Err(ClientError::Protocol(
                    "files/manifests answered other files than asked".into(),
                ));
            }
            out.extend(got);
        }
        Ok(out)
    }

    /// A file's history.
    pub async fn versions(&self, file: FileId) -> Result<Vec<VersionInfo>, ClientError> {
        self.send_json(Call::get(api(&format!("files/{file}/versions"))))
            .await
    }

    /// Makes `version` the head again, as a new version.
    pub async fn restore(
        &self,
        file: FileId,
        version: VersionNo,
    ) -> Result<CommitResponse, ClientError> {
        let call =
            Call::post(api(&format!("files/{file}/restore"))).json(&RestoreRequest { version })?;
        self.send_json(call).await
    }

    // ------------------------------------------------------------------ sync

    /// Applies events in order (in batches of at most `MAX_EVENTS_PER_BATCH`); one
    /// result per event, in order. A failed event does not stop the others. When a
    /// later batch fails, earlier ones were applied: resending them is safe, as every
    /// event carries an idempotency key.
    pub async fn events(
        &self,
        events: Vec<SyncEvent>,
    ) -> Result<Vec<SyncEventResult>, ClientError> {
        let mut out = Vec::with_capacity(events.len());
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let part: Vec<SyncEvent> = events.by_ref().take(MAX_EVENTS_PER_BATCH).collect();
            let n = part.len();
            let call = Call::post(api("sync/event")).json(&SyncEventBatch { events: part })?;
            let r: SyncEventResponse = self.send_json(call).await?;
            if r.results.len() != n {
                return Err(ClientError::Protocol(format!(
                    "sync/event answered {} results for {n} events",
                    r.results.len()
                )));
            }
            out.extend(r.results);
        }
        Ok(out)
    }

    /// Journal entries of `ns` after `since` (at most `limit`, which the server clamps).
    pub async fn changes(
        &self,
        ns: NamespaceId,
        since: Seq,
        limit: u32,
    ) -> Result<ChangesResponse, ClientError> {
        self.send_json(
            Call::get(api("sync/changes"))
                .query("namespace", &ns)
                .query("since", &since.0)
                .query("limit", &limit),
        )
        .await
    }

    // ------------------------------------------------------------------ push

    /// Opens the push socket (`ws://` or `wss://` from the server URL, same TLS roots),
    /// authenticated by the access token (renewed once on 401). The receiver yields the
    /// server's messages — first the current position of each namespace, then a
    /// `changed` after every commit, and heartbeats. It ends when the connection is
    /// lost, closed by the server (as when the token expires), or silent for
    /// [`PUSH_IDLE_TIMEOUT`]; the caller reconnects. Dropping the receiver closes the
    /// socket.
    pub async fn subscribe(&self) -> Result<mpsc::Receiver<PushMessage>, ClientError> {
        let mut renewed = false;
        loop {
            let token = self.access_token().await?;
            self.inner.requests.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(CONNECT_TIMEOUT * 2, self.connect_push(&token)).await {
                Err(_) => {
                    return Err(ClientError::Network(format!(
                        "WebSocket {} timed out",
                        self.inner.ws_url
                    )))
                }
                Ok(Ok(rx)) => return Ok(rx),
                Ok(Err(ClientError::Unauthorized(_))) if !renewed => {
                    renewed = true;
                    self.renew(Some(&token)).await?;
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    async fn connect_push(&self, token: &str) -> Result<mpsc::Receiver<PushMessage>, ClientError> {
        use tungstenite::client::IntoClientRequest as _;

        let url = &self.inner.ws_url;
        let net = |what: &str, e: &dyn fmt::Display| {
            ClientError::Network(format!("WebSocket {url}: {what}: {e}"))
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Config(format!("WebSocket URL {url}: {e}")))?;
        let mut value = tungstenite::http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| {
                ClientError::Protocol("the access token is not a valid header value".into())
            })?;
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(tungstenite::http::header::AUTHORIZATION, value);
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ClientError::Config(format!("WebSocket URL {url}: {e}")))?;
        let host = parsed
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| net("cannot connect", &"timed out"))?
        .map_err(|e| net("cannot connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_PUSH_MESSAGE))
            .max_frame_size(Some(MAX_PUSH_MESSAGE));
        let (tx, rx) = mpsc::channel(64);
        if let Some(tls) = &self.inner.tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| ClientError::Config(format!("server name {host:?}: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| net("TLS handshake failed", &describe(&e)))?;
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                    .await
                    .map_err(|e| handshake_error(url, e))?;
            tokio::spawn(pump(ws, tx, self.inner.clone()));
        } else {
            let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
                .await
                .map_err(|e| handshake_error(url, e))?;
            tokio::spawn(pump(ws, tx, self.inner.clone()));
        }
        tracing::debug!(url = %url, "push socket open");
        Ok(rx)
    }
}

/// A failed WebSocket handshake as a [`ClientError`].
fn handshake_error(url: &str, e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = StatusCode::from_u16(resp.status().as_u16())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = resp.body().clone().unwrap_or_default();
            match status {
                StatusCode::UNAUTHORIZED => ClientError::Unauthorized(error_message(&body)),
                StatusCode::TOO_MANY_REQUESTS => ClientError::RateLimited {
                    retry_after: resp
                        .headers()
                        .get(tungstenite::http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(1),
                },
                _ => api_error(status, &body),
            }
        }
        tungstenite::Error::Io(e) => ClientError::Network(format!("WebSocket {url}: {e}")),
        tungstenite::Error::Tls(e) => {
            ClientError::Network(format!("WebSocket {url}: TLS: {}", describe(&e)))
        }
        other => ClientError::Protocol(format!("WebSocket {url}: handshake failed: {other}")),
    }
}

/// Forwards push messages to `tx` until the socket ends, goes silent, or `tx` closes.
async fn pump<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    tx: mpsc::Sender<PushMessage>,
    inner: Arc<Inner>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let next = tokio::select! {
            () = tx.closed() => {
                let _ = ws.close(None).await;
                return;
            }
            next = tokio::time::timeout(PUSH_IDLE_TIMEOUT, ws.next()) => next,
        };
        match next {
            Err(_) => {
                tracing::debug!("push socket silent too long; closing");
                let _ = ws.close(None).await;
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "push socket failed");
                return;
            }
            Ok(Some(Ok(tungstenite::Message::Text(text)))) => {
                inner
                    .bytes_down
                    .fetch_add(text.len() as u64, Ordering::Relaxed);
                match serde_json::from_str::<PushMessage>(text.as_str()) {
                    Ok(m) => {
                        if tx.send(m).await.is_err() {
                            let _ = ws.close(None).await;
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "ignoring an unknown push message"),
                }
            }
            Ok(Some(Ok(tungstenite::Message::Close(frame)))) => {
                tracing::debug!(reason = ?frame.map(|f| f.reason.to_string()), "push socket closed by the server");
                return;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}
