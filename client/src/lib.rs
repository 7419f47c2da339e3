//! The fsync client: a daemon that keeps one folder in sync through an fsync server.
//! One sync round is scanner → planner → executor; a file watcher, the server's push
//! socket and a periodic rescan start rounds.
//!
//! The usual entry points are re-exported here:
//!
//! ```no_run
//! use fsync_client::{session, ApiClient, Engine, KnownRoots};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let root = std::fs::canonicalize("Sync")?;
//! // Refuses a folder that was synced before but lost its marker (an unmounted disk).
//! let marker = KnownRoots::from_env().prepare(&root, false)?;
//! let state = session::open_state(&marker)?;
//! let api = ApiClient::new("http://127.0.0.1:8080", None)?;
//! let s = session::login(&api, &state, "alice", "correct horse", "laptop",
//!     session::chunk_config(None)?).await?;
//! let mut engine = Engine::new(root, marker, state, s);
//! let report = engine.sync_once().await?;
//! println!("{} uploaded, {} downloaded", report.uploaded, report.downloaded);
//! # Ok(()) }
//! ```
//!
//! Modules:
//! - [`api`]: the typed HTTP/WebSocket client of the server API;
//! - [`scan`]: walks the folder (`.fsyncignore`, no temp or state files);
//! - [`state`]: the last synced base of every path, in SQLite;
//! - [`planner`]: pure reconciliation of base, local and remote trees into a [`Plan`];
//! - [`engine`]: executes a plan against a [`Remote`] (the server) and a [`LocalFs`]
//!   (the folder);
//! - [`root`]: the sync-root marker rule;
//! - [`daemon`]: the event loop;
//! - [`session`]: registration, login and key unwrapping.

pub mod api;
pub mod daemon;
pub mod engine;
pub mod planner;
pub mod progress;
pub mod root;
pub mod scan;
pub mod session;
pub mod state;

pub use api::{ApiClient, ClientError};
pub use daemon::DaemonOptions;
pub use engine::{DiskFs, Engine, LocalFs, Remote, RoundReport, SyncError, SyncKeys};
pub use planner::Plan;
pub use root::{KnownRoots, RootError};
pub use session::{Session, SessionError};
pub use state::State;
