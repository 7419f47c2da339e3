//! The SQL behind [`MetaRepo`], written once for SQLite and PostgreSQL through sqlx's
//! `Any` driver. Both databases accept `$N` placeholders, `RETURNING` and
//! `ON CONFLICT … DO UPDATE`; the schemas differ only in the auto-increment key.
//!
//! Every write to a namespace starts with `UPDATE namespaces … WHERE id = $1`: on
//! PostgreSQL that takes the namespace's row lock, on SQLite the database write lock,
//! before anything is read. Journal sequence numbers are allocated under that lock, so
//! they become visible in order and a reader's cursor never skips a change.
//!
//! One module per entity (`accounts`, `chunks`, `files`, `journal`), the writes of
//! `sync/event` batches (`writes`), the namespace transaction (`tx`) and row decoding
//! (`rows`); each entity module implements its repository trait.

mod accounts;
mod admin;
mod chunks;
mod files;
mod journal;
mod pages;
mod rows;
mod tx;
mod writes;

use std::sync::Arc;

use async_trait::async_trait;
use fsync_common::NamespaceId;
use sqlx::AnyPool;
use sqlx::{Any, Transaction};
use tokio::sync::Mutex;

use super::{DbError, MetaRepo};

pub(super) use pages::page_id;
pub(super) use rows::{i64_of, ids, insert_pack_row, parse, placeholders};

/// How many ids go into one `IN (…)` list.
pub(super) const IN_BATCH: usize = 500;
/// `chunks/missing` touches a present chunk only when its `last_touched` is older than
/// this (seconds). A chunk answered present then has `last_touched >= now - slack`, and
/// the sweep deletes only rows with `last_touched < its now - grace`, so the client keeps
/// at least `grace - slack` (23 h with the default 24 h grace) to commit before the
/// chunk can go; a commit later than that gets 409 with the ids (the namespace lock,
/// not the grace period, is what keeps a committed version's chunks, see `crate::gc`).
/// Keep it well below the grace period.
pub(crate) const TOUCH_SLACK_SECS: i64 = 3600;

/// Which database the pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// The repository over an `Any` pool.
#[derive(Debug, Clone)]
pub(crate) struct SqlRepo {
    pool: AnyPool,
    /// SQLite allows one writer: serializing writers here avoids busy-retry storms
    /// inside one process (other processes, like `fsync-gc`, wait on `busy_timeout`).
    write_lock: Option<Arc<Mutex<()>>>,
}

pub(super) type Tx = Transaction<'static, Any>;

impl SqlRepo {
    pub(crate) fn new(pool: AnyPool, dialect: Dialect) -> Self {
        let write_lock = (dialect == Dialect::Sqlite).then(|| Arc::new(Mutex::new(())));
        Self { pool, write_lock }
    }

    /// The connection pool (garbage collection runs its own SQL on it).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub(crate) fn dialect(&self) -> Dialect {
        if self.write_lock.is_some() {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        }
    }

    async fn write_guard(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.write_lock {
            Some(m) => Some(m.clone().lock_owned().await),
            None => None,
        }
    }

    /// Begins a write transaction on a namespace, taking its lock first.
    pub(super) async fn begin_ns(
        &self,
        ns: NamespaceId,
    ) -> Result<(Tx, Option<tokio::sync::OwnedMutexGuard<()>>), DbError> {
        let guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE namespaces SET last_seq = last_seq WHERE id = $1")
            .bind(ns.to_hex())
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Err(DbError::NotFound("namespace"));
        }
        Ok((tx, guard))
    }
}

// ------------------------------------------------------------------ the trait

#[async_trait]
impl MetaRepo for SqlRepo {
    async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }
}
