//! The SQL behind [`MetaRepo`], written once for SQLite and PostgreSQL through sqlx's
//! `Any` driver. Both databases accept `$N` placeholders, `RETURNING` and
//! `ON CONFLICT … DO UPDATE`; the schemas differ only in the auto-increment key.
//!
//! Every write to a namespace starts with `UPDATE namespaces … WHERE id = $1`: on
//! PostgreSQL that takes the namespace's row lock, on SQLite the database write lock,
//! before anything is read. Journal sequence numbers are allocated under that lock, so
//! they become visible in order and a reader's cursor never skips a change.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use fsync_common::limits::MAX_CHUNK_PLAINTEXT;
use fsync_common::wire::{
    Change, ChangesResponse, ChunkRef, CommitOutcome, CommitRequest, CommitResponse, DeleteOutcome,
    DeleteRequest, DeviceInfo, FileMeta, KdfParams, ListResponse, Manifest, NamespaceGrant,
    OpResponse, RenameRequest, VersionInfo,
};
use fsync_common::{
    ChunkId, ContentHash, DeviceId, FileId, NamespaceId, Seq, SyncPath, UserId, VersionNo,
    VersionVector,
};
use sqlx::any::AnyRow;
use sqlx::AnyPool;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row, Transaction};
use tokio::sync::Mutex;

use super::{Actor, BlobConfirm, DbError, MetaRepo, NewUser, TokenOwner, UserRecord};
use crate::domain::resolve::{
    conflict_path, plan_commit, plan_delete, CommitPlan, DeletePlan, HeadState, Incoming,
};

/// How many ids go into one `IN (…)` list.
pub(super) const IN_BATCH: usize = 500;
/// Most chunks a single manifest may list (a 64 GiB file at the 4 MiB maximum).
const MAX_MANIFEST_CHUNKS: usize = 1 << 20;

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

const FILE_COLS: &str =
    "id, namespace_id, path, head_version, vv, size, mtime, mode, checksum, is_deleted, device_id, seq";

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

// ------------------------------------------------------------------ row helpers

pub(super) fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, DbError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

fn json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, DbError> {
    serde_json::from_str(s).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("wire types serialize")
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn file_meta(row: &AnyRow) -> Result<FileMeta, DbError> {
    let checksum: Option<String> = row.try_get("checksum")?;
    Ok(FileMeta {
        file_id: parse(&row.try_get::<String, _>("id")?, "file id")?,
        namespace: parse(&row.try_get::<String, _>("namespace_id")?, "namespace id")?,
        path: parse(&row.try_get::<String, _>("path")?, "path")?,
        version: VersionNo(row.try_get::<i64, _>("head_version")? as u64),
        vv: json(&row.try_get::<String, _>("vv")?, "version vector")?,
        size: row.try_get::<i64, _>("size")? as u64,
        mtime: row.try_get("mtime")?,
        mode: row.try_get::<i64, _>("mode")? as u32,
        content_hash: checksum
            .map(|c| parse::<ContentHash>(&c, "checksum"))
            .transpose()?,
        deleted: row.try_get::<i64, _>("is_deleted")? != 0,
        device: parse(&row.try_get::<String, _>("device_id")?, "device id")?,
        seq: Seq(row.try_get::<i64, _>("seq")? as u64),
    })
}

fn head_state(m: &FileMeta) -> HeadState {
    HeadState {
        vv: m.vv.clone(),
        mtime: m.mtime,
        device: m.device,
        content_hash: m.content_hash,
        size: m.size,
        mode: m.mode,
        deleted: m.deleted,
    }
}

pub(super) fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Upper bound of the half-open range of paths below `dir/`: `'/' + 1 == '0'`.
fn prefix_range(dir: &str) -> (String, String) {
    (format!("{dir}/"), format!("{dir}0"))
}

// ------------------------------------------------------------------ tx helpers

async fn next_seq(tx: &mut Tx, ns: NamespaceId) -> Result<Seq, DbError> {
    let row = sqlx::query(
        "UPDATE namespaces SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq",
    )
    .bind(ns.to_hex())
    .fetch_one(&mut **tx)
    .await?;
    Ok(Seq(row.try_get::<i64, _>(0)? as u64))
}

/// The live file at `path`, or else its most recent tombstone.
async fn head_at(tx: &mut Tx, ns: NamespaceId, path: &str) -> Result<Option<FileMeta>, DbError> {
    let sql = format!(
        "SELECT {FILE_COLS} FROM files WHERE namespace_id = $1 AND path = $2 \
         ORDER BY is_deleted ASC, seq DESC LIMIT 1"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(ns.to_hex())
        .bind(path)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(file_meta).transpose()
}

async fn live_at(tx: &mut Tx, ns: NamespaceId, path: &str) -> Result<bool, DbError> {
    let row = sqlx::query(
        "SELECT 1 FROM files WHERE namespace_id = $1 AND path = $2 AND is_deleted = 0 LIMIT 1",
    )
    .bind(ns.to_hex())
    .bind(path)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.is_some())
}

async fn live_below(tx: &mut Tx, ns: NamespaceId, dir: &str) -> Result<bool, DbError> {
    let (lo, hi) = prefix_range(dir);
    let row = sqlx::query(
        "SELECT 1 FROM files WHERE namespace_id = $1 AND path >= $2 AND path < $3 AND is_deleted = 0 LIMIT 1",
    )
    .bind(ns.to_hex())
    .bind(lo)
    .bind(hi)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.is_some())
}

async fn file_by_id(tx: &mut Tx, file: FileId) -> Result<Option<FileMeta>, DbError> {
    let sql = format!("SELECT {FILE_COLS} FROM files WHERE id = $1");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(file.to_hex())
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(file_meta).transpose()
}

/// Ids among `ids` that are not recorded in `ns`, in first-seen order, deduplicated.
async fn absent_chunks(
    conn: &mut AnyConnection,
    ns: NamespaceId,
    ids: &[ChunkId],
) -> Result<Vec<ChunkId>, DbError> {
    let mut seen = HashSet::new();
    let unique: Vec<ChunkId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
    let mut present = HashSet::new();
    for batch in unique.chunks(IN_BATCH) {
        let sql = format!(
            "SELECT id FROM chunks WHERE namespace_id = $1 AND id IN ({})",
            placeholders(2, batch.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
        for id in batch {
            q = q.bind(id.to_hex());
        }
        for row in q.fetch_all(&mut *conn).await? {
            present.insert(row.try_get::<String, _>(0)?);
        }
    }
    Ok(unique
        .into_iter()
        .filter(|id| !present.contains(&id.to_hex()))
        .collect())
}

/// What a new version records.
struct VersionData<'a> {
    path: &'a SyncPath,
    vv: &'a VersionVector,
    size: u64,
    mtime: i64,
    mode: u32,
    checksum: Option<ContentHash>,
    deleted: bool,
    device: DeviceId,
    chunks: &'a [ChunkRef],
}

/// Writes a new version of `file` (creating the file row when `prev` is `None`), its
/// chunk references and a journal entry. Returns the new head.
async fn write_version(
    tx: &mut Tx,
    ns: NamespaceId,
    file: FileId,
    prev: Option<&FileMeta>,
    v: &VersionData<'_>,
    now: i64,
) -> Result<FileMeta, DbError> {
    let version = VersionNo(prev.map_or(0, |p| p.version.0) + 1);
    let seq = next_seq(tx, ns).await?;
    let vv_json = to_json(v.vv);
    let checksum = v.checksum.map(|c| c.to_hex());
    let deleted = i64::from(v.deleted);
    if prev.is_some() {
        sqlx::query(
            "UPDATE files SET path = $2, head_version = $3, vv = $4, size = $5, mtime = $6, mode = $7, \
             checksum = $8, is_deleted = $9, device_id = $10, seq = $11 WHERE id = $1",
        )
        .bind(file.to_hex())
        .bind(v.path.as_str())
        .bind(i64_of(version.0))
        .bind(&vv_json)
        .bind(i64_of(v.size))
        .bind(v.mtime)
        .bind(i64::from(v.mode))
        .bind(checksum.clone())
        .bind(deleted)
        .bind(v.device.to_hex())
        .bind(i64_of(seq.0))
        .execute(&mut **tx)
        .await?;
    } else {
        sqlx::query(
            "INSERT INTO files (id, namespace_id, path, head_version, vv, size, mtime, mode, checksum, \
             is_deleted, device_id, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(file.to_hex())
        .bind(ns.to_hex())
        .bind(v.path.as_str())
        .bind(i64_of(version.0))
        .bind(&vv_json)
        .bind(i64_of(v.size))
        .bind(v.mtime)
        .bind(i64::from(v.mode))
        .bind(checksum.clone())
        .bind(deleted)
        .bind(v.device.to_hex())
        .bind(i64_of(seq.0))
        .execute(&mut **tx)
        .await?;
    }
    let row = sqlx::query(
        "INSERT INTO file_versions (file_id, version, path, vv, size, mtime, mode, checksum, is_deleted, \
         device_id, manifest, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
    )
    .bind(file.to_hex())
    .bind(i64_of(version.0))
    .bind(v.path.as_str())
    .bind(&vv_json)
    .bind(i64_of(v.size))
    .bind(v.mtime)
    .bind(i64::from(v.mode))
    .bind(checksum)
    .bind(deleted)
    .bind(v.device.to_hex())
    .bind(to_json(&v.chunks))
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    let version_id: i64 = row.try_get(0)?;
    let mut seen = HashSet::new();
    let distinct: Vec<ChunkId> = v
        .chunks
        .iter()
        .map(ChunkRef::id)
        .filter(|id| seen.insert(*id))
        .collect();
    for batch in distinct.chunks(IN_BATCH / 3) {
        let values = (0..batch.len())
            .map(|i| format!("($1, $2, ${})", i + 3))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "INSERT INTO version_chunks (version_id, namespace_id, chunk_id) VALUES {values}"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(version_id)
            .bind(ns.to_hex());
        for id in batch {
            q = q.bind(id.to_hex());
        }
        q.execute(&mut **tx).await?;
    }
    journal(tx, ns, seq, file, version, None).await?;
    Ok(FileMeta {
        file_id: file,
        namespace: ns,
        path: v.path.clone(),
        version,
        vv: v.vv.clone(),
        size: v.size,
        mtime: v.mtime,
        mode: v.mode,
        content_hash: v.checksum,
        deleted: v.deleted,
        device: v.device,
        seq,
    })
}

async fn journal(
    tx: &mut Tx,
    ns: NamespaceId,
    seq: Seq,
    file: FileId,
    version: VersionNo,
    old_path: Option<&SyncPath>,
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO changes (namespace_id, seq, file_id, version, old_path) VALUES ($1, $2, $3, $4, $5)")
        .bind(ns.to_hex())
        .bind(i64_of(seq.0))
        .bind(file.to_hex())
        .bind(i64_of(version.0))
        .bind(old_path.map(|p| p.as_str().to_owned()))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn manifest_of(
    tx: &mut Tx,
    file: FileId,
    version: VersionNo,
) -> Result<Vec<ChunkRef>, DbError> {
    let row = sqlx::query("SELECT manifest FROM file_versions WHERE file_id = $1 AND version = $2")
        .bind(file.to_hex())
        .bind(i64_of(version.0))
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(DbError::NotFound("version"))?;
    json(&row.try_get::<String, _>(0)?, "manifest")
}

/// Creates a conflict copy: a new file holding an existing manifest (no re-upload).
#[allow(clippy::too_many_arguments)]
async fn conflict_copy(
    tx: &mut Tx,
    ns: NamespaceId,
    original: &SyncPath,
    mtime: i64,
    device: DeviceId,
    data: (u64, u32, Option<ContentHash>),
    chunks: &[ChunkRef],
    now: i64,
) -> Result<FileMeta, DbError> {
    let mut attempt = 0;
    let path = loop {
        let candidate = conflict_path(original, mtime, device, attempt);
        if head_at(tx, ns, candidate.as_str()).await?.is_none() {
            break candidate;
        }
        attempt += 1;
    };
    let vv = VersionVector::new().incremented(device);
    let (size, mode, checksum) = data;
    write_version(
        tx,
        ns,
        FileId::from_bytes(rand::random()),
        None,
        &VersionData {
            path: &path,
            vv: &vv,
            size,
            mtime,
            mode,
            checksum,
            deleted: false,
            device,
            chunks,
        },
        now,
    )
    .await
}

async fn idempotent_answer<T: serde::de::DeserializeOwned>(
    tx: &mut Tx,
    ns: NamespaceId,
    device: DeviceId,
    key: &str,
) -> Result<Option<T>, DbError> {
    let row = sqlx::query(
        "SELECT response FROM idempotency WHERE namespace_id = $1 AND device_id = $2 AND key = $3",
    )
    .bind(ns.to_hex())
    .bind(device.to_hex())
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| json(&r.try_get::<String, _>(0)?, "idempotency response"))
        .transpose()
}

async fn remember<T: serde::Serialize>(
    tx: &mut Tx,
    ns: NamespaceId,
    device: DeviceId,
    key: &str,
    answer: &T,
    now: i64,
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO idempotency (namespace_id, device_id, key, response, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(ns.to_hex())
        .bind(device.to_hex())
        .bind(key)
        .bind(to_json(answer))
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The largest version-vector counter a client may send. Far above any real history
/// (one version per nanosecond for a century stays below it), and low enough that the
/// server's increments never saturate: a counter stuck at `u64::MAX` would make an
/// increment change nothing, and a later concurrent edit would fast-forward over it.
pub(crate) const MAX_VV_COUNTER: u64 = 1 << 62;

/// Refuses a base version vector with a counter past [`MAX_VV_COUNTER`].
fn check_base(base: &VersionVector) -> Result<(), DbError> {
    match base.iter().find(|(_, n)| *n > MAX_VV_COUNTER) {
        Some((device, n)) => Err(DbError::Invalid(format!(
            "base counter {n} of device {device} is past the limit {MAX_VV_COUNTER}"
        ))),
        None => Ok(()),
    }
}

fn check_manifest(req: &CommitRequest) -> Result<(), DbError> {
    check_base(&req.base)?;
    if req.idempotency_key.is_empty() || req.idempotency_key.len() > 128 {
        return Err(DbError::Invalid(
            "idempotency_key must be 1 to 128 characters".into(),
        ));
    }
    if req.chunks.len() > MAX_MANIFEST_CHUNKS {
        return Err(DbError::Invalid(format!(
            "manifest lists {} chunks; the limit is {MAX_MANIFEST_CHUNKS}",
            req.chunks.len()
        )));
    }
    let mut total: u64 = 0;
    for c in &req.chunks {
        if c.is_empty() || c.len() as usize > MAX_CHUNK_PLAINTEXT {
            return Err(DbError::Invalid(format!(
                "chunk {} has length {}; lengths must be 1 to {MAX_CHUNK_PLAINTEXT}",
                c.id(),
                c.len()
            )));
        }
        total += u64::from(c.len());
    }
    if total != req.size {
        return Err(DbError::Invalid(format!(
            "size is {} but the chunks add up to {total}",
            req.size
        )));
    }
    if req.mode > 0o7777 {
        return Err(DbError::Invalid(format!(
            "mode {:o} is not a permission mode",
            req.mode
        )));
    }
    Ok(())
}

impl SqlRepo {
    /// Inserts or touches chunk rows under the namespace lock, the lock garbage
    /// collection deletes rows and blobs under; `confirm` runs inside it.
    async fn record(
        &self,
        ns: NamespaceId,
        chunks: &[(ChunkId, u64)],
        now: i64,
        confirm: Option<&dyn BlobConfirm>,
    ) -> Result<(), DbError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let (mut tx, _guard) = self.begin_ns(ns).await?;
        for batch in chunks.chunks(IN_BATCH / 2) {
            let values = (0..batch.len())
                .map(|i| format!("($1, ${}, ${}, $2, $2)", 3 + 2 * i, 4 + 2 * i))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "INSERT INTO chunks (namespace_id, id, stored_size, created_at, last_touched) VALUES {values} \
                 ON CONFLICT (namespace_id, id) DO UPDATE SET last_touched = excluded.last_touched"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex()).bind(now);
            for (id, size) in batch {
                q = q.bind(id.to_hex()).bind(i64_of(*size));
            }
            q.execute(&mut *tx).await?;
        }
        if let Some(confirm) = confirm {
            let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
            confirm.confirm(&ids).await.map_err(DbError::Blob)?;
        }
        tx.commit().await?;
        Ok(())
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
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let taken = sqlx::query("SELECT 1 FROM users WHERE username = $1")
            .bind(&user.username)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(DbError::Conflict("username is already taken".into()));
        }
        let inserted = sqlx::query(
            "INSERT INTO users (id, username, email, auth_hash, kdf, wrapped_account_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(user.id.to_hex())
        .bind(&user.username)
        .bind(&user.email)
        .bind(&user.auth_hash)
        .bind(to_json(&user.kdf))
        .bind(&user.wrapped_account_key)
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(e)) = &inserted {
            if e.is_unique_violation() {
                return Err(DbError::Conflict("username is already taken".into()));
            }
        }
        inserted?;
        sqlx::query(
            "INSERT INTO namespaces (id, owner_id, last_seq, created_at) VALUES ($1, $2, 0, $3)",
        )
        .bind(user.namespace.to_hex())
        .bind(user.id.to_hex())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO namespace_members (namespace_id, user_id, role, wrapped_key) VALUES ($1, $2, 'owner', $3)")
            .bind(user.namespace.to_hex())
            .bind(user.id.to_hex())
            .bind(&user.wrapped_namespace_key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_user(&self, username: &str) -> Result<Option<UserRecord>, DbError> {
        let row = sqlx::query("SELECT id, username, auth_hash, kdf, wrapped_account_key FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(UserRecord {
                id: parse(&r.try_get::<String, _>(0)?, "user id")?,
                username: r.try_get(1)?,
                auth_hash: r.try_get(2)?,
                kdf: json::<KdfParams>(&r.try_get::<String, _>(3)?, "kdf")?,
                wrapped_account_key: r.try_get(4)?,
            })
        })
        .transpose()
    }

    async fn register_device(
        &self,
        user: UserId,
        device: Option<DeviceId>,
        new_id: DeviceId,
        name: &str,
        now: i64,
    ) -> Result<DeviceId, DbError> {
        let _guard = self.write_guard().await;
        if let Some(d) = device {
            let r = sqlx::query("UPDATE devices SET name = $3, last_seen = $4 WHERE id = $1 AND user_id = $2 AND revoked = 0")
                .bind(d.to_hex())
                .bind(user.to_hex())
                .bind(name)
                .bind(now)
                .execute(&self.pool)
                .await?;
            if r.rows_affected() == 1 {
                return Ok(d);
            }
        }
        sqlx::query("INSERT INTO devices (id, user_id, name, created_at, last_seen, revoked) VALUES ($1, $2, $3, $4, $4, 0)")
            .bind(new_id.to_hex())
            .bind(user.to_hex())
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(new_id)
    }

    async fn device_active(
        &self,
        user: UserId,
        device: DeviceId,
        now: i64,
    ) -> Result<bool, DbError> {
        let row = sqlx::query(
            "SELECT last_seen FROM devices WHERE id = $1 AND user_id = $2 AND revoked = 0",
        )
        .bind(device.to_hex())
        .bind(user.to_hex())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(false) };
        // Record activity at most once a minute: a write per request would serialize
        // every reader behind SQLite's single writer.
        if row.try_get::<i64, _>(0)? < now - 60 {
            let _guard = self.write_guard().await;
            sqlx::query("UPDATE devices SET last_seen = $2 WHERE id = $1")
                .bind(device.to_hex())
                .bind(now)
                .execute(&self.pool)
                .await?;
        }
        Ok(true)
    }

    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceInfo>, DbError> {
        let rows = sqlx::query("SELECT id, name, created_at, last_seen, revoked FROM devices WHERE user_id = $1 ORDER BY created_at, id")
            .bind(user.to_hex())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DeviceInfo {
                    id: parse(&r.try_get::<String, _>(0)?, "device id")?,
                    name: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                    last_seen: r.try_get(3)?,
                    revoked: r.try_get::<i64, _>(4)? != 0,
                })
            })
            .collect()
    }

    async fn revoke_device(&self, user: UserId, device: DeviceId) -> Result<bool, DbError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE devices SET revoked = 1 WHERE id = $1 AND user_id = $2")
            .bind(device.to_hex())
            .bind(user.to_hex())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE device_id = $1 AND user_id = $2")
            .bind(device.to_hex())
            .bind(user.to_hex())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_refresh(
        &self,
        token_hash: &str,
        owner: TokenOwner,
        expires_at: i64,
        now: i64,
    ) -> Result<(), DbError> {
        let _guard = self.write_guard().await;
        sqlx::query("INSERT INTO refresh_tokens (token_hash, user_id, device_id, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_hash)
            .bind(owner.user.to_hex())
            .bind(owner.device.to_hex())
            .bind(expires_at)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn rotate_refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<Option<TokenOwner>, DbError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("DELETE FROM refresh_tokens WHERE token_hash = $1 RETURNING user_id, device_id, expires_at")
            .bind(old_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let owner = TokenOwner {
            user: parse(&row.try_get::<String, _>(0)?, "user id")?,
            device: parse(&row.try_get::<String, _>(1)?, "device id")?,
        };
        let active =
            sqlx::query("SELECT 1 FROM devices WHERE id = $1 AND user_id = $2 AND revoked = 0")
                .bind(owner.device.to_hex())
                .bind(owner.user.to_hex())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        if row.try_get::<i64, _>(2)? <= now || !active {
            // The stale token stays deleted.
            tx.commit().await?;
            return Ok(None);
        }
        sqlx::query("INSERT INTO refresh_tokens (token_hash, user_id, device_id, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(new_hash)
            .bind(owner.user.to_hex())
            .bind(owner.device.to_hex())
            .bind(expires_at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(owner))
    }

    async fn delete_refresh(&self, token_hash: &str) -> Result<bool, DbError> {
        let _guard = self.write_guard().await;
        let r = sqlx::query("DELETE FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn namespaces_of(&self, user: UserId) -> Result<Vec<NamespaceGrant>, DbError> {
        let rows = sqlx::query(
            "SELECT m.namespace_id, m.role, m.wrapped_key FROM namespace_members m \
             JOIN namespaces n ON n.id = m.namespace_id WHERE m.user_id = $1 ORDER BY n.created_at, n.id",
        )
        .bind(user.to_hex())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NamespaceGrant {
                    id: parse(&r.try_get::<String, _>(0)?, "namespace id")?,
                    role: r.try_get(1)?,
                    wrapped_key: r.try_get(2)?,
                })
            })
            .collect()
    }

    async fn role_in(&self, user: UserId, ns: NamespaceId) -> Result<Option<String>, DbError> {
        let row = sqlx::query(
            "SELECT role FROM namespace_members WHERE namespace_id = $1 AND user_id = $2",
        )
        .bind(ns.to_hex())
        .bind(user.to_hex())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn missing_chunks(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
        now: i64,
    ) -> Result<Vec<ChunkId>, DbError> {
        let missing = absent_chunks(&mut *self.pool.acquire().await?, ns, ids).await?;
        let missing_set: HashSet<ChunkId> = missing.iter().copied().collect();
        let present: Vec<ChunkId> = ids
            .iter()
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .filter(|id| !missing_set.contains(id))
            .collect();
        if !present.is_empty() {
            // Mark present chunks touched so a concurrent GC keeps them for the grace
            // period: the client is about to commit a manifest that uses them.
            let _guard = self.write_guard().await;
            for batch in present.chunks(IN_BATCH) {
                let sql = format!(
                    "UPDATE chunks SET last_touched = $2 WHERE namespace_id = $1 AND id IN ({})",
                    placeholders(3, batch.len())
                );
                let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex()).bind(now);
                for id in batch {
                    q = q.bind(id.to_hex());
                }
                q.execute(&self.pool).await?;
            }
        }
        Ok(missing)
    }

    async fn record_chunks(
        &self,
        ns: NamespaceId,
        chunks: &[(ChunkId, u64)],
        now: i64,
    ) -> Result<(), DbError> {
        self.record(ns, chunks, now, None).await
    }

    async fn record_chunks_confirmed(
        &self,
        ns: NamespaceId,
        chunks: &[(ChunkId, u64)],
        now: i64,
        confirm: &dyn BlobConfirm,
    ) -> Result<(), DbError> {
        self.record(ns, chunks, now, Some(confirm)).await
    }

    async fn has_chunk(&self, ns: NamespaceId, id: ChunkId) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT 1 FROM chunks WHERE namespace_id = $1 AND id = $2")
            .bind(ns.to_hex())
            .bind(id.to_hex())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn commit(
        &self,
        actor: Actor,
        req: &CommitRequest,
        now: i64,
    ) -> Result<CommitResponse, DbError> {
        check_manifest(req)?;
        let ns = req.namespace;
        let (mut tx, _guard) = self.begin_ns(ns).await?;
        if let Some(mut answer) =
            idempotent_answer::<CommitResponse>(&mut tx, ns, actor.device, &req.idempotency_key)
                .await?
        {
            answer.outcome = CommitOutcome::AlreadyApplied;
            return Ok(answer);
        }
        let ids: Vec<ChunkId> = req.chunks.iter().map(ChunkRef::id).collect();
        let missing = absent_chunks(&mut tx, ns, &ids).await?;
        if !missing.is_empty() {
            return Err(DbError::MissingChunks(missing));
        }
        let head = head_at(&mut tx, ns, req.path.as_str()).await?;
        let incoming = Incoming {
            base: &req.base,
            device: actor.device,
            mtime: req.mtime,
            content_hash: req.content_hash,
            size: req.size,
            mode: req.mode,
        };
        let plan = plan_commit(head.as_ref().map(head_state).as_ref(), &incoming);
        let data = |vv| VersionData {
            path: &req.path,
            vv,
            size: req.size,
            mtime: req.mtime,
            mode: req.mode,
            checksum: Some(req.content_hash),
            deleted: false,
            device: actor.device,
            chunks: &req.chunks,
        };
        let answer = match (plan, head) {
            (CommitPlan::FastForward { vv }, head) => {
                let file = head
                    .as_ref()
                    .map_or_else(|| FileId::from_bytes(rand::random()), |h| h.file_id);
                let new = write_version(&mut tx, ns, file, head.as_ref(), &data(&vv), now).await?;
                CommitResponse {
                    outcome: CommitOutcome::FastForward,
                    head: new,
                    conflict_copy: None,
                }
            }
            (CommitPlan::Unchanged, Some(head)) => CommitResponse {
                outcome: CommitOutcome::Unchanged,
                head,
                conflict_copy: None,
            },
            (CommitPlan::Merge { vv }, Some(head)) => {
                let chunks = manifest_of(&mut tx, head.file_id, head.version).await?;
                let v = VersionData {
                    chunks: &chunks,
                    mtime: head.mtime,
                    device: actor.device,
                    ..data(&vv)
                };
                let new = write_version(&mut tx, ns, head.file_id, Some(&head), &v, now).await?;
                CommitResponse {
                    outcome: CommitOutcome::Unchanged,
                    head: new,
                    conflict_copy: None,
                }
            }
            (
                CommitPlan::ConflictWon {
                    vv,
                    copy_mtime,
                    copy_device,
                },
                Some(head),
            ) => {
                let old_chunks = manifest_of(&mut tx, head.file_id, head.version).await?;
                let copy = conflict_copy(
                    &mut tx,
                    ns,
                    &req.path,
                    copy_mtime,
                    copy_device,
                    (head.size, head.mode, head.content_hash),
                    &old_chunks,
                    now,
                )
                .await?;
                let new =
                    write_version(&mut tx, ns, head.file_id, Some(&head), &data(&vv), now).await?;
                CommitResponse {
                    outcome: CommitOutcome::ConflictWon,
                    head: new,
                    conflict_copy: Some(copy),
                }
            }
            (CommitPlan::ConflictLost, Some(head)) => {
                let copy = conflict_copy(
                    &mut tx,
                    ns,
                    &req.path,
                    req.mtime,
                    actor.device,
                    (req.size, req.mode, Some(req.content_hash)),
                    &req.chunks,
                    now,
                )
                .await?;
                CommitResponse {
                    outcome: CommitOutcome::ConflictLost,
                    head,
                    conflict_copy: Some(copy),
                }
            }
            (_, None) => unreachable!("only a fast-forward is planned without a head"),
        };
        remember(
            &mut tx,
            ns,
            actor.device,
            &req.idempotency_key,
            &answer,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(answer)
    }

    async fn delete(
        &self,
        actor: Actor,
        req: &DeleteRequest,
        now: i64,
    ) -> Result<OpResponse, DbError> {
        check_base(&req.base)?;
        let ns = req.namespace;
        let (mut tx, _guard) = self.begin_ns(ns).await?;
        if let Some(answer) =
            idempotent_answer::<OpResponse>(&mut tx, ns, actor.device, &req.idempotency_key).await?
        {
            return Ok(answer);
        }
        let head = head_at(&mut tx, ns, req.path.as_str())
            .await?
            .ok_or(DbError::NotFound("file"))?;
        let answer = match plan_delete(&head_state(&head), &req.base, actor.device) {
            DeletePlan::Delete { vv } => {
                let v = VersionData {
                    path: &req.path,
                    vv: &vv,
                    size: 0,
                    mtime: head.mtime,
                    mode: head.mode,
                    checksum: None,
                    deleted: true,
                    device: actor.device,
                    chunks: &[],
                };
                let new = write_version(&mut tx, ns, head.file_id, Some(&head), &v, now).await?;
                OpResponse {
                    files: vec![new],
                    outcome: Some(DeleteOutcome::Deleted),
                }
            }
            DeletePlan::KeptModified => OpResponse {
                files: vec![head],
                outcome: Some(DeleteOutcome::KeptModified),
            },
            DeletePlan::AlreadyDeleted => OpResponse {
                files: vec![head],
                outcome: Some(DeleteOutcome::AlreadyDeleted),
            },
        };
        remember(
            &mut tx,
            ns,
            actor.device,
            &req.idempotency_key,
            &answer,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(answer)
    }

    async fn rename(
        &self,
        actor: Actor,
        req: &RenameRequest,
        now: i64,
    ) -> Result<OpResponse, DbError> {
        let ns = req.namespace;
        if req.to.starts_with(&req.from) {
            return Err(DbError::Invalid("cannot move a path into itself".into()));
        }
        let (mut tx, _guard) = self.begin_ns(ns).await?;
        if let Some(answer) =
            idempotent_answer::<OpResponse>(&mut tx, ns, actor.device, &req.idempotency_key).await?
        {
            return Ok(answer);
        }
        // A file, or else every live file below the folder.
        let mut moving = Vec::new();
        if let Some(h) = head_at(&mut tx, ns, req.from.as_str())
            .await?
            .filter(|h| !h.deleted)
        {
            moving.push(h);
        } else {
            let (lo, hi) = prefix_range(req.from.as_str());
            let sql = format!(
                "SELECT {FILE_COLS} FROM files WHERE namespace_id = $1 AND path >= $2 AND path < $3 AND is_deleted = 0 ORDER BY path"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(ns.to_hex())
                .bind(lo)
                .bind(hi)
                .fetch_all(&mut *tx)
                .await?;
            for r in &rows {
                moving.push(file_meta(r)?);
            }
        }
        if moving.is_empty() {
            return Err(DbError::NotFound("file or folder"));
        }
        if live_at(&mut tx, ns, req.to.as_str()).await?
            || live_below(&mut tx, ns, req.to.as_str()).await?
        {
            return Err(DbError::Conflict(format!("{} already exists", req.to)));
        }
        let mut out = Vec::with_capacity(moving.len());
        for m in moving {
            let new_path = m.path.rebase(&req.from, &req.to).ok_or_else(|| {
                DbError::Invalid(format!("{} cannot move under {}", m.path, req.to))
            })?;
            let seq = next_seq(&mut tx, ns).await?;
            sqlx::query("UPDATE files SET path = $2, seq = $3 WHERE id = $1")
                .bind(m.file_id.to_hex())
                .bind(new_path.as_str())
                .bind(i64_of(seq.0))
                .execute(&mut *tx)
                .await?;
            journal(&mut tx, ns, seq, m.file_id, m.version, Some(&m.path)).await?;
            out.push(FileMeta {
                path: new_path,
                seq,
                ..m
            });
        }
        let answer = OpResponse {
            files: out,
            outcome: None,
        };
        remember(
            &mut tx,
            ns,
            actor.device,
            &req.idempotency_key,
            &answer,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(answer)
    }

    async fn list_files(
        &self,
        ns: NamespaceId,
        prefix: Option<&str>,
        include_deleted: bool,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ListResponse, DbError> {
        let mut sql = format!("SELECT {FILE_COLS} FROM files WHERE namespace_id = $1");
        let mut binds: Vec<String> = vec![ns.to_hex()];
        if let Some(p) = prefix.filter(|p| !p.is_empty()) {
            let (lo, hi) = prefix_range(p);
            let _ = write!(
                sql,
                " AND (path = ${} OR (path >= ${} AND path < ${}))",
                binds.len() + 1,
                binds.len() + 2,
                binds.len() + 3
            );
            binds.extend([p.to_owned(), lo, hi]);
        }
        if !include_deleted {
            sql.push_str(" AND is_deleted = 0");
        }
        if let Some(a) = after {
            // The cursor is `path` or `path U+0001 file id` (paths cannot hold controls).
            let (path, id) = a.split_once('\u{1}').unwrap_or((a, ""));
            let _ = write!(
                sql,
                " AND (path > ${} OR (path = ${} AND id > ${}))",
                binds.len() + 1,
                binds.len() + 1,
                binds.len() + 2
            );
            binds.extend([
                path.to_owned(),
                if id.is_empty() {
                    "~".repeat(33)
                } else {
                    id.to_owned()
                },
            ]);
        }
        let _ = write!(sql, " ORDER BY path, id LIMIT {}", u64::from(limit) + 1);
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in &binds {
            q = q.bind(b.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut files = rows.iter().map(file_meta).collect::<Result<Vec<_>, _>>()?;
        let next = if files.len() > limit as usize {
            files.truncate(limit as usize);
            files
                .last()
                .map(|f| format!("{}\u{1}{}", f.path, f.file_id))
        } else {
            None
        };
        Ok(ListResponse { files, next })
    }

    async fn file_namespace(&self, file: FileId) -> Result<Option<NamespaceId>, DbError> {
        let row = sqlx::query("SELECT namespace_id FROM files WHERE id = $1")
            .bind(file.to_hex())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| parse(&r.try_get::<String, _>(0)?, "namespace id"))
            .transpose()
    }

    async fn manifest(
        &self,
        file: FileId,
        version: Option<VersionNo>,
    ) -> Result<Manifest, DbError> {
        let sql = format!("SELECT {FILE_COLS} FROM files WHERE id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(file.to_hex())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(DbError::NotFound("file"))?;
        let head = file_meta(&row)?;
        let v = version.unwrap_or(head.version);
        let row = sqlx::query(
            "SELECT vv, size, mtime, mode, checksum, is_deleted, device_id, manifest FROM file_versions \
             WHERE file_id = $1 AND version = $2",
        )
        .bind(file.to_hex())
        .bind(i64_of(v.0))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(DbError::NotFound("version"))?;
        let checksum: Option<String> = row.try_get(4)?;
        let meta = FileMeta {
            version: v,
            vv: json(&row.try_get::<String, _>(0)?, "version vector")?,
            size: row.try_get::<i64, _>(1)? as u64,
            mtime: row.try_get(2)?,
            mode: row.try_get::<i64, _>(3)? as u32,
            content_hash: checksum
                .map(|c| parse::<ContentHash>(&c, "checksum"))
                .transpose()?,
            deleted: row.try_get::<i64, _>(5)? != 0,
            device: parse(&row.try_get::<String, _>(6)?, "device id")?,
            ..head
        };
        let chunks = json(&row.try_get::<String, _>(7)?, "manifest")?;
        Ok(Manifest { meta, chunks })
    }

    async fn versions(&self, file: FileId) -> Result<Vec<VersionInfo>, DbError> {
        let rows = sqlx::query(
            "SELECT version, vv, path, size, mtime, device_id, created_at, is_deleted, checksum FROM file_versions \
             WHERE file_id = $1 ORDER BY version DESC",
        )
        .bind(file.to_hex())
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(DbError::NotFound("file"));
        }
        rows.iter()
            .map(|r| {
                let checksum: Option<String> = r.try_get(8)?;
                Ok(VersionInfo {
                    version: VersionNo(r.try_get::<i64, _>(0)? as u64),
                    vv: json(&r.try_get::<String, _>(1)?, "version vector")?,
                    path: parse(&r.try_get::<String, _>(2)?, "path")?,
                    size: r.try_get::<i64, _>(3)? as u64,
                    mtime: r.try_get(4)?,
                    device: parse(&r.try_get::<String, _>(5)?, "device id")?,
                    created_at: r.try_get(6)?,
                    deleted: r.try_get::<i64, _>(7)? != 0,
                    content_hash: checksum
                        .map(|c| parse::<ContentHash>(&c, "checksum"))
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn restore(
        &self,
        actor: Actor,
        file: FileId,
        version: VersionNo,
        now: i64,
    ) -> Result<CommitResponse, DbError> {
        let ns = self
            .file_namespace(file)
            .await?
            .ok_or(DbError::NotFound("file"))?;
        let old = self.manifest(file, Some(version)).await?;
        let (mut tx, _guard) = self.begin_ns(ns).await?;
        let head = file_by_id(&mut tx, file)
            .await?
            .ok_or(DbError::NotFound("file"))?;
        // Read the chunk list again under the lock: garbage collection may have pruned
        // the version (and swept its chunks) since `old` was read.
        let chunks = manifest_of(&mut tx, file, version).await?;
        if head.deleted && live_at(&mut tx, ns, head.path.as_str()).await? {
            return Err(DbError::Conflict(format!(
                "{} is now used by another file; move it away before restoring",
                head.path
            )));
        }
        let vv = head.vv.incremented(actor.device);
        let v = VersionData {
            path: &head.path,
            vv: &vv,
            size: old.meta.size,
            mtime: old.meta.mtime,
            mode: old.meta.mode,
            checksum: old.meta.content_hash,
            deleted: old.meta.deleted,
            device: actor.device,
            chunks: &chunks,
        };
        let new = write_version(&mut tx, ns, file, Some(&head), &v, now).await?;
        tx.commit().await?;
        Ok(CommitResponse {
            outcome: CommitOutcome::FastForward,
            head: new,
            conflict_copy: None,
        })
    }

    async fn changes(
        &self,
        ns: NamespaceId,
        since: Seq,
        limit: u32,
    ) -> Result<ChangesResponse, DbError> {
        let sql = format!(
            "SELECT c.seq AS change_seq, c.old_path, f.{} FROM changes c JOIN files f ON f.id = c.file_id \
             WHERE c.namespace_id = $1 AND c.seq > $2 ORDER BY c.seq LIMIT $3",
            FILE_COLS.replace(", ", ", f.")
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .bind(i64_of(since.0))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        let has_more = rows.len() > limit as usize;
        let mut changes = Vec::with_capacity(rows.len().min(limit as usize));
        for r in rows.iter().take(limit as usize) {
            let old_path: Option<String> = r.try_get("old_path")?;
            changes.push(Change {
                seq: Seq(r.try_get::<i64, _>("change_seq")? as u64),
                file: file_meta(r)?,
                old_path: old_path
                    .map(|p| parse::<SyncPath>(&p, "path"))
                    .transpose()?,
            });
        }
        let cursor = changes.last().map_or(since, |c| c.seq);
        Ok(ChangesResponse {
            changes,
            cursor,
            has_more,
        })
    }

    async fn last_seq(&self, ns: NamespaceId) -> Result<Seq, DbError> {
        let row = sqlx::query("SELECT last_seq FROM namespaces WHERE id = $1")
            .bind(ns.to_hex())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(DbError::NotFound("namespace"))?;
        Ok(Seq(row.try_get::<i64, _>(0)? as u64))
    }
}
