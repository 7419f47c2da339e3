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
//! (`rows`); the [`MetaRepo`] impl here only delegates to them.

mod accounts;
mod chunks;
mod files;
mod journal;
mod rows;
mod tx;
mod writes;

use std::sync::Arc;

use async_trait::async_trait;
use fsync_common::wire::{
    ChangesResponse, CommitRequest, CommitResponse, DeleteRequest, DeviceInfo, ListResponse,
    Manifest, NamespaceGrant, OpResponse, RenameRequest, VersionInfo,
};
use fsync_common::{ChunkId, DeviceId, FileId, NamespaceId, Seq, UserId, VersionNo};
use sqlx::AnyPool;
use sqlx::{Any, Transaction};
use tokio::sync::Mutex;

use super::{
    Actor, BatchAnswer, BatchOp, BlobConfirm, DbError, MetaRepo, NewUser, TokenOwner, UserRecord,
};
use crate::domain::roles::Role;

pub(super) use rows::{parse, placeholders};

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

    async fn create_user(&self, user: NewUser, now: i64) -> Result<(), DbError> {
        accounts::create_user(self, user, now).await
    }

    async fn find_user(&self, username: &str) -> Result<Option<UserRecord>, DbError> {
        accounts::find_user(self, username).await
    }

    async fn register_device(
        &self,
        user: UserId,
        device: Option<DeviceId>,
        new_id: DeviceId,
        name: &str,
        now: i64,
    ) -> Result<DeviceId, DbError> {
        accounts::register_device(self, user, device, new_id, name, now).await
    }

    async fn device_active(
        &self,
        user: UserId,
        device: DeviceId,
        now: i64,
    ) -> Result<bool, DbError> {
        accounts::device_active(self, user, device, now).await
    }

    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceInfo>, DbError> {
        accounts::list_devices(self, user).await
    }

    async fn revoke_device(&self, user: UserId, device: DeviceId) -> Result<bool, DbError> {
        accounts::revoke_device(self, user, device).await
    }

    async fn insert_refresh(
        &self,
        token_hash: &str,
        owner: TokenOwner,
        expires_at: i64,
        now: i64,
    ) -> Result<(), DbError> {
        accounts::insert_refresh(self, token_hash, owner, expires_at, now).await
    }

    async fn rotate_refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<Option<TokenOwner>, DbError> {
        accounts::rotate_refresh(self, old_hash, new_hash, expires_at, now).await
    }

    async fn delete_refresh(&self, token_hash: &str, owner: TokenOwner) -> Result<bool, DbError> {
        accounts::delete_refresh(self, token_hash, owner).await
    }

    async fn namespaces_of(&self, user: UserId) -> Result<Vec<NamespaceGrant>, DbError> {
        accounts::namespaces_of(self, user).await
    }

    async fn role_in(&self, user: UserId, ns: NamespaceId) -> Result<Option<Role>, DbError> {
        accounts::role_in(self, user, ns).await
    }

    async fn missing_chunks(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
        now: i64,
    ) -> Result<Vec<ChunkId>, DbError> {
        chunks::missing_chunks(self, ns, ids, now).await
    }

    async fn record_chunks(
        &self,
        ns: NamespaceId,
        chunks: &[(ChunkId, u64)],
        now: i64,
    ) -> Result<(), DbError> {
        chunks::record(self, ns, chunks, now, None).await
    }

    async fn record_chunks_confirmed(
        &self,
        ns: NamespaceId,
        chunks: &[(ChunkId, u64)],
        now: i64,
        confirm: &dyn BlobConfirm,
    ) -> Result<(), DbError> {
        chunks::record(self, ns, chunks, now, Some(confirm)).await
    }

    async fn has_chunk(&self, ns: NamespaceId, id: ChunkId) -> Result<bool, DbError> {
        chunks::has_chunk(self, ns, id).await
    }

    async fn commit(
        &self,
        actor: Actor,
        req: &CommitRequest,
        now: i64,
    ) -> Result<CommitResponse, DbError> {
        writes::commit(self, actor, req, now).await
    }

    async fn delete(
        &self,
        actor: Actor,
        req: &DeleteRequest,
        now: i64,
    ) -> Result<OpResponse, DbError> {
        writes::delete(self, actor, req, now).await
    }

    async fn rename(
        &self,
        actor: Actor,
        req: &RenameRequest,
        now: i64,
    ) -> Result<OpResponse, DbError> {
        writes::rename(self, actor, req, now).await
    }

    async fn apply_batch(
        &self,
        actor: Actor,
        ops: &[BatchOp<'_>],
        now: i64,
    ) -> Vec<Result<BatchAnswer, DbError>> {
        writes::apply_batch(self, actor, ops, now).await
    }

    async fn list_files(
        &self,
        ns: NamespaceId,
        prefix: Option<&str>,
        include_deleted: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ListResponse, DbError> {
        files::list_files(self, ns, prefix, include_deleted, after, limit).await
    }

    async fn file_namespace(&self, file: FileId) -> Result<Option<NamespaceId>, DbError> {
        files::file_namespace(self, file).await
    }

    async fn manifest(
        &self,
        file: FileId,
        version: Option<VersionNo>,
    ) -> Result<Manifest, DbError> {
        files::manifest(self, file, version).await
    }

    async fn versions(&self, file: FileId) -> Result<Vec<VersionInfo>, DbError> {
        files::versions(self, file).await
    }

    async fn restore(
        &self,
        actor: Actor,
        file: FileId,
        version: VersionNo,
        now: i64,
    ) -> Result<CommitResponse, DbError> {
        files::restore(self, actor, file, version, now).await
    }

    async fn changes(
        &self,
        ns: NamespaceId,
        since: Seq,
        limit: u32,
    ) -> Result<ChangesResponse, DbError> {
        journal::changes(self, ns, since, limit).await
    }

    async fn last_seq(&self, ns: NamespaceId) -> Result<Seq, DbError> {
        journal::last_seq(self, ns).await
    }
}
