//! The fsync server: accounts, chunk store, manifests with version vectors, the sync
//! journal and WebSocket push, on SQLite (default) or PostgreSQL.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use fsync_server::{build_state, run, Config};
//! use clap::Parser;
//!
//! let config = Config::parse_from(["fsync-server", "--data-dir", "/tmp/fsync"]);
//! let state = build_state(&config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! run(listener, state, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod admin;
mod auth;
mod config;
mod db;
mod domain;
mod fanout;
mod gc;
mod http;
mod metrics;
mod serve;
mod state;
mod tls;

use std::future::Future;
use std::sync::Arc;

/// Access-token verification and refresh-token hashing, public for the fuzz targets in
/// `fuzz/` (the server itself uses them through its HTTP layer).
pub use auth::tokens::{hash_refresh_token, Claims, TokenError, TokenService};
pub use config::{
    load_dotenv, parse_log_level, Config, ConfigError, DotenvError, LogFormat, ServerCommand,
    StorageConfig,
};
pub use db::{
    open as open_repo, open_postgres, open_sqlite, AccountRepo, Actor, BatchAnswer, BatchOp,
    BlobConfirm, BlobLocation, ChunkRepo, DbError, FileRepo, JournalRepo, MetaRepo, NewPack,
    NewUser, PageRepo, TokenOwner, WriteRepo,
};
pub use domain::group_commit::GroupCommit;
pub use domain::uploads::{put_blobs, record_stored, store_chunks, PutBlobs, UploadError};
pub use gc::{
    Collector, Damage, GcError, GcEvent, GcHook, GcLock, GcStage, NoProgress, Progress,
    RebuildReport, Repack, Retention, RunOptions, RunReport, Stats, VerifyReport,
    DEFAULT_BATCH as GC_BATCH,
};
pub use http::error::ApiError;
pub use http::{app, Access, Route, ROUTES};
pub use state::{AppState, Limits};
pub use tls::{cert_fingerprint, load_server_config, self_signed, PeerAddr, TlsError, TlsListener};

/// Opens the database and blob store named by `config` and builds the state.
pub async fn build_state(config: &Config) -> anyhow::Result<AppState> {
    let data_dir = &config.storage.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", data_dir.display()))?;
    let secret = config.secret()?;
    let url = config.database_url();
    let repo = db::open(&url).await?;
    let blobs: Arc<dyn fsync_store::BlobStore> =
        Arc::new(fsync_store::LocalStore::open(config.files_directory())?);
    let packs = config.storage.open_packs()?;
    let mut state = AppState::new(repo, blobs, packs, secret);
    state.limits.ws_per_device = config.max_websockets_per_device;
    state.limits.ws_per_user = config.max_websockets_per_user;
    state.limits.connections_per_ip = config.max_connections_per_ip;
    state.limits.header_timeout =
        std::time::Duration::from_secs(config.request_header_timeout_secs);
    if let db::DbUrl::Postgres(url) = db::parse_url(&url)? {
        fanout::start(url, &mut state)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for other nodes' events: {e}"))?;
    }
    Ok(state)
}

/// Serves the API on `listener` until `shutdown` resolves; in-flight requests finish.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits;
    serve::serve(listener, app(state), &limits, shutdown).await
}

/// Serves the API over TLS on `listener` until `shutdown` resolves.
pub async fn run_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TlsListener::new(listener, tls)?;
    let limits = state.limits;
    serve::serve(listener, app(state), &limits, shutdown).await
}
