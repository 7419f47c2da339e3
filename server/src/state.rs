//! Shared server state: narrow trait objects and small services, no god struct.

use std::sync::Arc;
use std::time::Duration;

use fsync_common::{DeviceId, NamespaceId, Seq};
use fsync_store::{BlobStore, PackStore};
use tokio::sync::broadcast;

use crate::auth::limit::{Limit, RateLimiter};
use crate::auth::tokens::TokenService;
use crate::db::MetaRepo;
use crate::domain::group_commit::GroupCommit;
use crate::fanout::{Event, Publisher};
use crate::metrics::Metrics;

/// Rate limits of the API.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Auth requests per client IP.
    pub auth_per_ip: Limit,
    /// Login attempts per username.
    pub auth_per_user: Limit,
    /// Authenticated API requests per user.
    pub api_per_user: Limit,
    /// How long after a refresh-token rotation the old token may be presented again as
    /// a retry of that rotation (its answer lost), not as a reuse.
    pub refresh_retry_grace: Duration,
    /// Push sockets open at once per device (`MAX_WEBSOCKETS_PER_DEVICE`).
    pub ws_per_device: usize,
    /// Push sockets open at once per user, over all devices (`MAX_WEBSOCKETS_PER_USER`).
    pub ws_per_user: usize,
    /// HTTP connections open at once per client address, 0: no cap
    /// (`MAX_CONNECTIONS_PER_IP`; see `serve.rs`).
    pub connections_per_ip: usize,
    /// How long a request's head may take to arrive, and an idle connection may wait
    /// for its next request (`REQUEST_HEADER_TIMEOUT_SECS`).
    pub header_timeout: Duration,
    /// How long a handler may wait on a request body that brings no data
    /// (`REQUEST_BODY_IDLE_TIMEOUT_SECS`).
    pub body_idle_timeout: Duration,
}

/// Default cap of push sockets per device: a daemon holds one per server.
pub const DEFAULT_WS_PER_DEVICE: usize = 4;
/// Default cap of push sockets per user.
pub const DEFAULT_WS_PER_USER: usize = 32;
/// Default cap of HTTP connections per client address.
pub const DEFAULT_CONNECTIONS_PER_IP: usize = 128;
/// Default deadline of a request head, seconds.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 15;
/// Default deadline of a stalled request body, seconds.
pub const DEFAULT_BODY_IDLE_TIMEOUT_SECS: u64 = 30;

impl Default for Limits {
    fn default() -> Self {
        Self {
            auth_per_ip: Limit {
                max: 60,
                window: Duration::from_secs(60),
            },
            auth_per_user: Limit {
                max: 10,
                window: Duration::from_secs(60),
            },
            api_per_user: Limit {
                max: 6000,
                window: Duration::from_secs(60),
            },
            refresh_retry_grace: Duration::from_secs(10),
            ws_per_device: DEFAULT_WS_PER_DEVICE,
            ws_per_user: DEFAULT_WS_PER_USER,
            connections_per_ip: DEFAULT_CONNECTIONS_PER_IP,
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            body_idle_timeout: Duration::from_secs(DEFAULT_BODY_IDLE_TIMEOUT_SECS),
        }
    }
}

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Metadata.
    pub repo: Arc<dyn MetaRepo>,
    /// Loose blobs of a store written before packs (read, never written).
    pub blobs: Arc<dyn BlobStore>,
    /// Pack files: where uploads go.
    pub packs: Arc<dyn PackStore>,
    /// Groups single-blob uploads into packs.
    pub group_commit: Arc<GroupCommit>,
    /// Open push sockets per user and device.
    pub ws_slots: Arc<crate::http::ws::WsSlots>,
    /// Access tokens.
    pub tokens: Arc<TokenService>,
    /// Rate limiter.
    pub limiter: Arc<RateLimiter>,
    /// Limits applied by the limiter.
    pub limits: Limits,
    /// Journal pushes to WebSockets: (namespace, latest seq).
    pub push: broadcast::Sender<(NamespaceId, Seq)>,
    /// Devices just revoked: their open WebSockets close at once.
    pub revoked: broadcast::Sender<DeviceId>,
    /// Publishes `push` and `revoked` events to the other server nodes (PostgreSQL).
    pub fanout: Option<Publisher>,
    /// Prometheus counters.
    pub metrics: Arc<Metrics>,
    /// Server secret (derives fake KDF params for unknown users).
    pub secret: Arc<Vec<u8>>,
    /// An Argon2 hash nobody's key matches, verified for unknown users so that their
    /// login takes as long as a wrong password.
    pub dummy_hash: Arc<String>,
    /// SHA-256 fingerprint of the TLS certificate served, shown by `/health`.
    pub tls_fingerprint: Option<Arc<str>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("repo", &self.repo)
            .field("blobs", &self.blobs)
            .field("packs", &self.packs)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state from its parts.
    pub fn new(
        repo: Arc<dyn MetaRepo>,
        blobs: Arc<dyn BlobStore>,
        packs: Arc<dyn PackStore>,
        secret: Vec<u8>,
    ) -> Self {
        let (push, _) = broadcast::channel(1024);
        let (revoked, _) = broadcast::channel(64);
        let dummy_hash =
            fsync_store::hash_auth_key(&"00".repeat(32)).expect("hashing a constant works");
        Self {
            group_commit: Arc::default(),
            ws_slots: Arc::default(),
            repo,
            blobs,
            packs,
            tokens: Arc::new(TokenService::new(&secret)),
            limiter: Arc::new(RateLimiter::new()),
            limits: Limits::default(),
            push,
            revoked,
            fanout: None,
            metrics: Arc::new(Metrics::default()),
            secret: Arc::new(secret),
            dummy_hash: Arc::new(dummy_hash),
            tls_fingerprint: None,
        }
    }

    /// Tells WebSocket subscribers, on this node and the others, that `ns` reached
    /// `seq`.
    pub fn notify(&self, ns: NamespaceId, seq: Seq) {
        // No subscribers is fine.
        let _ = self.push.send((ns, seq));
        if let Some(f) = &self.fanout {
            f.publish(Event::Changed(ns, seq));
        }
    }

    /// Tells WebSocket tasks, on this node and the others, that `device` was revoked,
    /// so that its sockets close now rather than when their token expires.
    pub fn device_revoked(&self, device: DeviceId) {
        // No open socket is fine.
        let _ = self.revoked.send(device);
        if let Some(f) = &self.fanout {
            f.publish(Event::Revoked(device));
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
