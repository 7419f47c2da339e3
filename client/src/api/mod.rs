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
//! - **TLS** (rustls, ring): the system's roots plus `--ca-cert`, or a pinned server
//!   certificate (`--server-fingerprint`); refusals say what to do (see `tls.rs`).
//! - **Logging.** Requests are logged at debug level as method, path (no query) and
//!   status. Tokens, passwords and auth keys are never logged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fsync_common::limits::{DEFAULT_PAGE, MAX_BATCH_BODY, MAX_PAGE};
use fsync_common::DeviceId;
use tokio::sync::Mutex;

/// Time allowed to open a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one whole request, body transfer included (a batch of up to
/// `MAX_BATCH_BODY` bytes on a slow link).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Default longest silence of the server within a request: a server that accepts the
/// connection but does not answer is given up on after this long, with a message.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a 429 answer is retried before [`ClientError::RateLimited`].
pub const MAX_RATE_LIMIT_RETRIES: u32 = 3;
/// Request bodies larger than this are sent without the read timeout (see `Inner::bulk`).
const BULK_BODY: usize = 256 * 1024;
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
const BATCH_HEADER_LEN: usize = fsync_common::batch::HEADER_LEN;
/// Size of a batch entry header (chunk id + length).
const BATCH_ENTRY_HEADER_LEN: usize = fsync_common::batch::ENTRY_HEADER_LEN;

mod endpoints;
mod error;
mod push;
mod tls;
mod tokens;
mod transport;

use error::describe;
pub use error::ClientError;
use tls::tls_config;
pub use tls::{Fingerprint, TlsOptions};

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
    /// For requests with a small body: a server silent for `read_timeout` is given up on.
    http: reqwest::Client,
    /// For requests with a large body (over [`BULK_BODY`]): the whole-request timeout only.
    bulk: reqwest::Client,
    /// `scheme://host[:port][/prefix]`, no trailing slash.
    base: String,
    /// `ws[s]://host[:port][/prefix]/api/v1/ws`.
    ws_url: String,
    /// TLS configuration for `wss://` (the same roots as HTTPS).
    tls: Option<Arc<rustls::ClientConfig>>,
    session: Mutex<Session>,
    /// Longest silence of the server within a request.
    read_timeout: Duration,
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

impl ApiClient {
    /// A client of the server at `server_url` (`http://host:port` or `https://…`, an
    /// optional path prefix allowed). For `https://` the system's roots are trusted,
    /// and the certificates of `ca_cert` (a PEM file) besides. Timeouts:
    /// [`CONNECT_TIMEOUT`], [`READ_TIMEOUT`], [`REQUEST_TIMEOUT`].
    pub fn new(server_url: &str, ca_cert: Option<&Path>) -> Result<Self, ClientError> {
        let tls = TlsOptions {
            ca_cert: ca_cert.map(Path::to_owned),
            pin: None,
        };
        Self::with_options(server_url, &tls, READ_TIMEOUT)
    }

    /// [`ApiClient::new`] with TLS options (a pinned certificate) and another longest
    /// silence of the server within a request (`--timeout`).
    pub fn with_options(
        server_url: &str,
        tls_options: &TlsOptions,
        read_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let trimmed = server_url.trim();
        if !trimmed.contains("://") {
            return Err(ClientError::Config(format!(
                "server URL {server_url:?} has no scheme: write http://{trimmed} (or https://{trimmed} \
                 for a server with TLS)"
            )));
        }
        let url = reqwest::Url::parse(trimmed)
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

        let tls = if url.scheme() == "https" {
            Some(Arc::new(tls_config(tls_options)?))
        } else {
            None
        };
        // Two clients: reqwest's read timeout also runs while a request body is being
        // sent (reqwest#2784), so requests with a large body (a batch of chunks, on a
        // slow uplink) go through one with the whole-request timeout only.
        let client = |read: Option<Duration>| {
            let mut b = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT.max(read.unwrap_or_default()))
                .user_agent(concat!("fsync-client/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none());
            if let Some(read) = read {
                b = b.read_timeout(read);
            }
            if let Some(config) = &tls {
                b = b.use_preconfigured_tls((**config).clone());
            }
            b.build()
                .map_err(|e| ClientError::Config(format!("HTTP client set-up: {}", describe(&e))))
        };
        let http = client(Some(read_timeout))?;
        let bulk = client(None)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                bulk,
                base,
                ws_url,
                tls,
                session: Mutex::new(Session::default()),
                read_timeout,
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
    #[cfg(feature = "test-hooks")]
    pub async fn set_access_token_for_test(&self, token: &str) {
        self.inner.session.lock().await.access = Some(token.to_owned());
    }

    /// Replaces the refresh token in memory only (tests use it to simulate a revoked one).
    #[cfg(feature = "test-hooks")]
    pub async fn set_refresh_token_for_test(&self, token: &str) {
        self.inner.session.lock().await.refresh = Some(token.to_owned());
    }
}
