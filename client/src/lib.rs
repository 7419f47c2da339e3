//! The fsync client daemon: scanner → planner → executor, with a watcher, a push
//! socket and a periodic rescan driving sync rounds.
//!
//! - [`api`]: the typed HTTP/WebSocket client of the server API.
//! - [`scan`]: walks the folder (`.fsyncignore`, no temp or state files).
//! - [`state`]: the last synced base of every path, in SQLite.
//! - [`planner`]: pure reconciliation of base, local and remote trees.
//! - [`engine`]: executes a plan (uploads only missing chunks, atomic downloads).
//! - [`daemon`]: the event loop.
//! - [`session`]: registration, login and key unwrapping.

pub mod api;
pub mod daemon;
pub mod engine;
pub mod planner;
pub mod progress;
pub mod scan;
pub mod session;
pub mod state;
