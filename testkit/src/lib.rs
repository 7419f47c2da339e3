//! The one test kit of the workspace: what its test harnesses and benchmarks share.
//!
//! - [`postgres`]: scratch PostgreSQL databases next to the one
//!   `FSYNC_TEST_DATABASE_URL` names, and SQL run on them;
//! - [`wait`]: polling with a deadline ([`wait_until`]), whose failure says what was
//!   awaited and for how long;
//! - [`memory`]: this process's resident memory (`/proc/self`);
//! - [`s3`]: the tests' S3 server (`FSYNC_TEST_S3_ENDPOINT`) and scratch buckets;
//! - `server` (feature `server`): a real fsync server in this process on 127.0.0.1;
//! - `client` (feature `client`): accounts and client engines, registered and logged
//!   in the way the client does it;
//! - `keys` (feature `keys`): a new account's keys, for tests that speak the API;
//! - `packs` (feature `keys`): a pack store behind a test's hooks (faults, a held put).
//!
//! Dev-only (`publish = false`): no release build links it.

pub mod memory;
pub mod postgres;
pub mod s3;
pub mod wait;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "keys")]
pub mod keys;
#[cfg(feature = "keys")]
pub mod packs;
#[cfg(feature = "server")]
pub mod server;

pub use wait::{poll, poll_async, wait_until, wait_until_async, TimedOut, POLL};
