//! The SQL behind [`MetaRepo`], written once for SQLite and PostgreSQL through sqlx's
//! `Any` driver. Both databases accept `$N` placeholders, `RETURNING` and
//! `ON CONFLICT … DO UPDATE`; the schemas differ only in the auto-increment key.
//!
//! Every write to a namespace starts with `UPDATE namespaces … WHERE id = $1`: on
//! PostgreSQL that takes the namespace's row lock, on SQLite the database write lock,
//! before anything is read. Journal sequence numbers are allocated under that lock, so
//! they become visible in order and a reader's cursor never skips a change.

use std::collections::{HashMap, HashSet};
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

use super::{
    Actor, BatchAnswer, BatchOp, BlobConfirm, DbError, MetaRepo, NewUser, TokenOwner, UserRecord,
};
use crate::domain::resolve::{
    conflict_path, plan_commit, plan_delete, CommitPlan, DeletePlan, HeadState, Incoming,
};

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

/// A write transaction on one namespace, holding the namespace lock from its first
/// statement to its commit. Journal positions are allocated here (no one else can while
/// the lock is held); rows that nothing inside the transaction reads back — journal
/// entries, chunk references, idempotency answers — are buffered and inserted by
/// [`NsTx::finish`] with a few multi-row statements, still inside the transaction and
/// under the lock. Heads and idempotency answers read once are cached, and kept up to
/// date by the writes made through this value.
pub(super) struct NsTx {
    tx: Tx,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    ns: NamespaceId,
    /// The device whose idempotency keys `answers` holds.
    device: DeviceId,
    now: i64,
    /// `namespaces.last_seq` when the transaction began, and the last one allocated.
    seq_start: u64,
    seq: u64,
    journal: Vec<(Seq, FileId, VersionNo, Option<String>)>,
    /// (`file_versions.id`, chunk): references to insert.
    refs: Vec<(i64, ChunkId)>,
    /// Idempotency answers by key (`None`: known absent), as stored JSON.
    answers: HashMap<String, Option<String>>,
    new_answers: Vec<(String, String)>,
    /// `head_at` by path, for paths read or written in this transaction.
    heads: HashMap<String, Option<FileMeta>>,
    /// Counts writes, so that a caller can tell whether a failed step wrote anything.
    writes: u64,
}

impl NsTx {
    /// Begins the transaction and takes the namespace lock.
    async fn begin(
        repo: &SqlRepo,
        ns: NamespaceId,
        device: DeviceId,
        now: i64,
    ) -> Result<Self, DbError> {
        let guard = repo.write_guard().await;
        let mut tx = repo.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE namespaces SET last_seq = last_seq WHERE id = $1 RETURNING last_seq",
        )
        .bind(ns.to_hex())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(DbError::NotFound("namespace"))?;
        let seq = row.try_get::<i64, _>(0)? as u64;
        Ok(Self {
            tx,
            _guard: guard,
            ns,
            device,
            now,
            seq_start: seq,
            seq,
            journal: Vec::new(),
            refs: Vec::new(),
            answers: HashMap::new(),
            new_answers: Vec::new(),
            heads: HashMap::new(),
            writes: 0,
        })
    }

    fn next_seq(&mut self) -> Seq {
        self.seq += 1;
        Seq(self.seq)
    }

    fn journal(&mut self, seq: Seq, file: FileId, version: VersionNo, old: Option<&SyncPath>) {
        self.journal
            .push((seq, file, version, old.map(|p| p.as_str().to_owned())));
    }

    /// The live file at `path`, or else its most recent tombstone.
    async fn head(&mut self, path: &str) -> Result<Option<FileMeta>, DbError> {
        if let Some(h) = self.heads.get(path) {
            return Ok(h.clone());
        }
        let h = head_at(&mut self.tx, self.ns, path).await?;
        self.heads.insert(path.to_owned(), h.clone());
        Ok(h)
    }

    /// Reads the heads of many paths at once (a few queries instead of one per path).
    async fn prefetch_heads(&mut self, paths: &[&str]) -> Result<(), DbError> {
        let mut seen = HashSet::new();
        let wanted: Vec<&str> = paths
            .iter()
            .copied()
            .filter(|p| !self.heads.contains_key(*p) && seen.insert(*p))
            .collect();
        for batch in wanted.chunks(IN_BATCH) {
            let sql = format!(
                "SELECT {FILE_COLS} FROM files WHERE namespace_id = $1 AND path IN ({})",
                placeholders(2, batch.len())
            );
            // Planned for its values each time (not prepared once): on PostgreSQL a cached
            // generic plan of these IN lists can filter the whole namespace row by row.
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .persistent(false)
                .bind(self.ns.to_hex());
            for p in batch {
                q = q.bind(*p);
            }
            let mut best: HashMap<String, FileMeta> = HashMap::new();
            for row in q.fetch_all(&mut *self.tx).await? {
                let m = file_meta(&row)?;
                // `head_at`'s order: live first, then the newest.
                let better = best.get(m.path.as_str()).is_none_or(|b| {
                    (m.deleted, std::cmp::Reverse(m.seq)) < (b.deleted, std::cmp::Reverse(b.seq))
                });
                if better {
                    best.insert(m.path.as_str().to_owned(), m);
                }
            }
            for p in batch {
                let h = best.remove(*p);
                self.heads.insert((*p).to_owned(), h);
            }
        }
        Ok(())
    }

    /// The answer remembered for an idempotency key of this transaction's device.
    async fn answer<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, DbError> {
        if !self.answers.contains_key(key) {
            self.prefetch_answers(&[key]).await?;
        }
        match self.answers.get(key) {
            Some(Some(s)) => json(s, "idempotency response").map(Some),
            _ => Ok(None),
        }
    }

    /// Reads the answers of many idempotency keys at once.
    async fn prefetch_answers(&mut self, keys: &[&str]) -> Result<(), DbError> {
        let mut seen = HashSet::new();
        let wanted: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !self.answers.contains_key(*k) && seen.insert(*k))
            .collect();
        for batch in wanted.chunks(IN_BATCH) {
            let sql = format!(
                "SELECT key, response FROM idempotency WHERE namespace_id = $1 AND device_id = $2 \
                 AND key IN ({})",
                placeholders(3, batch.len())
            );
            // Not prepared: see `prefetch_heads`.
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .persistent(false)
                .bind(self.ns.to_hex())
                .bind(self.device.to_hex());
            for k in batch {
                q = q.bind(*k);
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                self.answers
                    .insert(row.try_get(0)?, Some(row.try_get::<String, _>(1)?));
            }
            for k in batch {
                self.answers.entry((*k).to_owned()).or_insert(None);
            }
        }
        Ok(())
    }

    /// Records the answer to an idempotency key.
    fn remember<T: serde::Serialize>(&mut self, key: &str, answer: &T) {
        let s = to_json(answer);
        self.answers.insert(key.to_owned(), Some(s.clone()));
        self.new_answers.push((key.to_owned(), s));
        self.writes += 1;
    }

    /// Inserts the buffered rows, advances the namespace's journal position and commits.
    async fn finish(mut self) -> Result<(), DbError> {
        if self.writes == 0 {
            // Nothing to keep (every op was a retry answered from the idempotency table,
            // or was refused): end the transaction without a commit's flush.
            self.tx.rollback().await?;
            return Ok(());
        }
        let ns = self.ns.to_hex();
        for batch in self.refs.chunks(IN_BATCH) {
            let values = (0..batch.len())
                .map(|i| format!("(${}, $1, ${})", 2 + 2 * i, 3 + 2 * i))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "INSERT INTO version_chunks (version_id, namespace_id, chunk_id) VALUES {values}"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(&ns);
            for (version_id, id) in batch {
                q = q.bind(*version_id).bind(id.to_hex());
            }
            q.execute(&mut *self.tx).await?;
        }
        for batch in self.journal.chunks(IN_BATCH / 2) {
            let values = (0..batch.len())
                .map(|i| {
                    let b = 2 + 4 * i;
                    format!("($1, ${b}, ${}, ${}, ${})", b + 1, b + 2, b + 3)
                })
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "INSERT INTO changes (namespace_id, seq, file_id, version, old_path) VALUES {values}"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(&ns);
            for (seq, file, version, old) in batch {
                q = q
                    .bind(i64_of(seq.0))
                    .bind(file.to_hex())
                    .bind(i64_of(version.0))
                    .bind(old.clone());
            }
            q.execute(&mut *self.tx).await?;
        }
        for batch in self.new_answers.chunks(IN_BATCH / 2) {
            let values = (0..batch.len())
                .map(|i| format!("($1, $2, ${}, ${}, $3)", 4 + 2 * i, 5 + 2 * i))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "INSERT INTO idempotency (namespace_id, device_id, key, response, created_at) VALUES {values}"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(&ns)
                .bind(self.device.to_hex())
                .bind(self.now);
            for (key, answer) in batch {
                q = q.bind(key.as_str()).bind(answer.as_str());
            }
            q.execute(&mut *self.tx).await?;
        }
        if self.seq != self.seq_start {
            sqlx::query("UPDATE namespaces SET last_seq = $2 WHERE id = $1")
                .bind(&ns)
                .bind(i64_of(self.seq))
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
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

/// `ids` deduplicated, in first-seen order.
fn unique_ids(ids: &[ChunkId]) -> Vec<ChunkId> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// The `last_touched` of the chunks among `ids` that are recorded in `ns`, by hex id.
async fn present_chunks(
    conn: &mut AnyConnection,
    ns: NamespaceId,
    ids: &[ChunkId],
) -> Result<HashMap<String, i64>, DbError> {
    let mut present = HashMap::new();
    for batch in ids.chunks(IN_BATCH) {
        let sql = format!(
            "SELECT id, last_touched FROM chunks WHERE namespace_id = $1 AND id IN ({})",
            placeholders(2, batch.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
        for id in batch {
            q = q.bind(id.to_hex());
        }
        for row in q.fetch_all(&mut *conn).await? {
            present.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
        }
    }
    Ok(present)
}

/// Ids among `ids` that are not recorded in `ns`, in first-seen order, deduplicated.
async fn absent_chunks(
    conn: &mut AnyConnection,
    ns: NamespaceId,
    ids: &[ChunkId],
) -> Result<Vec<ChunkId>, DbError> {
    let unique = unique_ids(ids);
    let present = present_chunks(conn, ns, &unique).await?;
    Ok(unique
        .into_iter()
        .filter(|id| !present.contains_key(&id.to_hex()))
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
    w: &mut NsTx,
    file: FileId,
    prev: Option<&FileMeta>,
    v: &VersionData<'_>,
) -> Result<FileMeta, DbError> {
    let ns = w.ns;
    let version = VersionNo(prev.map_or(0, |p| p.version.0) + 1);
    let seq = w.next_seq();
    w.writes += 1;
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
        .execute(&mut *w.tx)
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
        .execute(&mut *w.tx)
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
    .bind(w.now)
    .fetch_one(&mut *w.tx)
    .await?;
    let version_id: i64 = row.try_get(0)?;
    let ids: Vec<ChunkId> = v.chunks.iter().map(ChunkRef::id).collect();
    w.refs
        .extend(unique_ids(&ids).into_iter().map(|id| (version_id, id)));
    w.journal(seq, file, version, None);
    let head = FileMeta {
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
    };
    // The path's head is now this version: a live file is the only live one at its path
    // (the repository keeps it so), and a tombstone replaced the live head, if any.
    w.heads
        .insert(v.path.as_str().to_owned(), Some(head.clone()));
    Ok(head)
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
async fn conflict_copy(
    w: &mut NsTx,
    original: &SyncPath,
    mtime: i64,
    device: DeviceId,
    data: (u64, u32, Option<ContentHash>),
    chunks: &[ChunkRef],
) -> Result<FileMeta, DbError> {
    let mut attempt = 0;
    let path = loop {
        let candidate = conflict_path(original, mtime, device, attempt);
        if w.head(candidate.as_str()).await?.is_none() {
            break candidate;
        }
        attempt += 1;
    };
    let vv = VersionVector::new().incremented(device);
    let (size, mode, checksum) = data;
    write_version(
        w,
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
    )
    .await
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

// ------------------------------------------------------------------ writes

/// The checks of an op that need no database; they run before its transaction.
fn precheck(op: &BatchOp<'_>) -> Result<(), DbError> {
    match op {
        BatchOp::Commit(req) => check_manifest(req),
        BatchOp::Delete(req) => check_base(&req.base),
        BatchOp::Rename(req) if req.to.starts_with(&req.from) => {
            Err(DbError::Invalid("cannot move a path into itself".into()))
        }
        BatchOp::Rename(_) => Ok(()),
    }
}

fn idempotency_key<'a>(op: &BatchOp<'a>) -> &'a str {
    match op {
        BatchOp::Commit(r) => &r.idempotency_key,
        BatchOp::Delete(r) => &r.idempotency_key,
        BatchOp::Rename(r) => &r.idempotency_key,
    }
}

/// Errors after which the transaction cannot go on (on PostgreSQL a failed statement
/// aborts it).
fn is_fatal(e: &DbError) -> bool {
    matches!(e, DbError::Backend(_) | DbError::Blob(_))
}

/// Commits a manifest (ARCHITECTURE §5). `absent`: the chunks of the transaction's
/// commits that are not recorded, read under the lock. Every check that can refuse the
/// commit runs before its first write.
async fn commit_in(
    w: &mut NsTx,
    actor: Actor,
    req: &CommitRequest,
    absent: &HashSet<ChunkId>,
) -> Result<CommitResponse, DbError> {
    if let Some(mut answer) = w.answer::<CommitResponse>(&req.idempotency_key).await? {
        answer.outcome = CommitOutcome::AlreadyApplied;
        return Ok(answer);
    }
    let ids: Vec<ChunkId> = req.chunks.iter().map(ChunkRef::id).collect();
    let missing: Vec<ChunkId> = unique_ids(&ids)
        .into_iter()
        .filter(|id| absent.contains(id))
        .collect();
    if !missing.is_empty() {
        return Err(DbError::MissingChunks(missing));
    }
    let head = w.head(req.path.as_str()).await?;
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
            let new = write_version(w, file, head.as_ref(), &data(&vv)).await?;
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
            let chunks = manifest_of(&mut w.tx, head.file_id, head.version).await?;
            let v = VersionData {
                chunks: &chunks,
                mtime: head.mtime,
                device: actor.device,
                ..data(&vv)
            };
            let new = write_version(w, head.file_id, Some(&head), &v).await?;
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
            let old_chunks = manifest_of(&mut w.tx, head.file_id, head.version).await?;
            let copy = conflict_copy(
                w,
                &req.path,
                copy_mtime,
                copy_device,
                (head.size, head.mode, head.content_hash),
                &old_chunks,
            )
            .await?;
            let new = write_version(w, head.file_id, Some(&head), &data(&vv)).await?;
            CommitResponse {
                outcome: CommitOutcome::ConflictWon,
                head: new,
                conflict_copy: Some(copy),
            }
        }
        (CommitPlan::ConflictLost, Some(head)) => {
            let copy = conflict_copy(
                w,
                &req.path,
                req.mtime,
                actor.device,
                (req.size, req.mode, Some(req.content_hash)),
                &req.chunks,
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
    w.remember(&req.idempotency_key, &answer);
    Ok(answer)
}

/// Tombstones a path, if the head is the version the client saw.
async fn delete_in(w: &mut NsTx, actor: Actor, req: &DeleteRequest) -> Result<OpResponse, DbError> {
    if let Some(answer) = w.answer::<OpResponse>(&req.idempotency_key).await? {
        return Ok(answer);
    }
    let head = w
        .head(req.path.as_str())
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
            let new = write_version(w, head.file_id, Some(&head), &v).await?;
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
    w.remember(&req.idempotency_key, &answer);
    Ok(answer)
}

/// Moves a file or every file below a folder, as one operation.
async fn rename_in(w: &mut NsTx, req: &RenameRequest) -> Result<OpResponse, DbError> {
    if let Some(answer) = w.answer::<OpResponse>(&req.idempotency_key).await? {
        return Ok(answer);
    }
    let ns = w.ns;
    // A file, or else every live file below the folder.
    let mut moving = Vec::new();
    if let Some(h) = w.head(req.from.as_str()).await?.filter(|h| !h.deleted) {
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
            .fetch_all(&mut *w.tx)
            .await?;
        for r in &rows {
            moving.push(file_meta(r)?);
        }
    }
    if moving.is_empty() {
        return Err(DbError::NotFound("file or folder"));
    }
    if live_at(&mut w.tx, ns, req.to.as_str()).await?
        || live_below(&mut w.tx, ns, req.to.as_str()).await?
    {
        return Err(DbError::Conflict(format!("{} already exists", req.to)));
    }
    // Every new path is known before the first write.
    let moves = moving
        .into_iter()
        .map(|m| match m.path.rebase(&req.from, &req.to) {
            Some(new_path) => Ok((m, new_path)),
            None => Err(DbError::Invalid(format!(
                "{} cannot move under {}",
                m.path, req.to
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Paths change under the cached heads.
    w.heads.clear();
    let mut out = Vec::with_capacity(moves.len());
    for (m, new_path) in moves {
        let seq = w.next_seq();
        w.writes += 1;
        sqlx::query("UPDATE files SET path = $2, seq = $3 WHERE id = $1")
            .bind(m.file_id.to_hex())
            .bind(new_path.as_str())
            .bind(i64_of(seq.0))
            .execute(&mut *w.tx)
            .await?;
        w.journal(seq, m.file_id, m.version, Some(&m.path));
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
    w.remember(&req.idempotency_key, &answer);
    Ok(answer)
}

impl SqlRepo {
    /// Applies ops of one namespace in one transaction under its lock (see
    /// [`MetaRepo::apply_batch`]). The chunks, idempotency answers and heads of all the
    /// ops are read with a few queries first. An op refused by a check gets its error
    /// and the others go on: every check runs before the op's first write. `Err` when
    /// the transaction failed (nothing of it is applied).
    async fn apply_group(
        &self,
        actor: Actor,
        ns: NamespaceId,
        ops: &[BatchOp<'_>],
        now: i64,
    ) -> Result<Vec<Result<BatchAnswer, DbError>>, DbError> {
        let mut out: Vec<Option<Result<BatchAnswer, DbError>>> =
            ops.iter().map(|op| precheck(op).err().map(Err)).collect();
        let live: Vec<&BatchOp<'_>> = ops
            .iter()
            .zip(&out)
            .filter(|(_, r)| r.is_none())
            .map(|(op, _)| op)
            .collect();
        if live.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        let mut w = NsTx::begin(self, ns, actor.device, now).await?;
        let keys: Vec<&str> = live.iter().map(|op| idempotency_key(op)).collect();
        w.prefetch_answers(&keys).await?;
        let mut ids = Vec::new();
        let mut paths = Vec::new();
        for op in &live {
            match op {
                BatchOp::Commit(r) => {
                    ids.extend(r.chunks.iter().map(ChunkRef::id));
                    paths.push(r.path.as_str());
                }
                BatchOp::Delete(r) => paths.push(r.path.as_str()),
                BatchOp::Rename(r) => paths.push(r.from.as_str()),
            }
        }
        // Checked under the lock, so no sweep can delete these rows before the
        // references are inserted (at `finish`, in this same transaction).
        let absent: HashSet<ChunkId> = absent_chunks(&mut w.tx, ns, &ids)
            .await?
            .into_iter()
            .collect();
        w.prefetch_heads(&paths).await?;
        for (op, slot) in ops.iter().zip(out.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            let writes = w.writes;
            let r = match op {
                BatchOp::Commit(req) => commit_in(&mut w, actor, req, &absent)
                    .await
                    .map(|r| BatchAnswer::Committed(Box::new(r))),
                BatchOp::Delete(req) => delete_in(&mut w, actor, req)
                    .await
                    .map(BatchAnswer::Applied),
                BatchOp::Rename(req) => rename_in(&mut w, req).await.map(BatchAnswer::Applied),
            };
            match r {
                // A failure half-way through an op cannot be undone alone.
                Err(e) if is_fatal(&e) || w.writes != writes => return Err(e),
                r => *slot = Some(r),
            }
        }
        w.finish().await?;
        Ok(out.into_iter().flatten().collect())
    }

    /// [`SqlRepo::apply_group`] of one op.
    async fn apply_one(
        &self,
        actor: Actor,
        op: BatchOp<'_>,
        now: i64,
    ) -> Result<BatchAnswer, DbError> {
        self.apply_group(actor, op.namespace(), &[op], now)
            .await?
            .pop()
            .expect("one answer per op")
    }
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

    async fn delete_refresh(&self, token_hash: &str, owner: TokenOwner) -> Result<bool, DbError> {
        let _guard = self.write_guard().await;
        let r = sqlx::query(
            "DELETE FROM refresh_tokens WHERE token_hash = $1 AND user_id = $2 AND device_id = $3",
        )
        .bind(token_hash)
        .bind(owner.user.to_hex())
        .bind(owner.device.to_hex())
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
        let unique = unique_ids(ids);
        let present = present_chunks(&mut *self.pool.acquire().await?, ns, &unique).await?;
        // Mark present chunks touched so that a concurrent GC keeps them for the grace
        // period: the client is about to commit a manifest that uses them. A row touched
        // within the last TOUCH_SLACK_SECS is left as it is, so repeated lookups are
        // read-only (see TOUCH_SLACK_SECS for why GC stays safe).
        let cutoff = now.saturating_sub(TOUCH_SLACK_SECS);
        let stale: Vec<&String> = present
            .iter()
            .filter(|(_, touched)| **touched < cutoff)
            .map(|(id, _)| id)
            .collect();
        if !stale.is_empty() {
            let _guard = self.write_guard().await;
            for batch in stale.chunks(IN_BATCH) {
                let sql = format!(
                    "UPDATE chunks SET last_touched = $2 WHERE namespace_id = $1 AND last_touched < $3 \
                     AND id IN ({})",
                    placeholders(4, batch.len())
                );
                let mut q = sqlx::query(AssertSqlSafe(sql))
                    .bind(ns.to_hex())
                    .bind(now)
                    .bind(cutoff);
                for id in batch {
                    q = q.bind(id.as_str());
                }
                q.execute(&self.pool).await?;
            }
        }
        Ok(unique
            .into_iter()
            .filter(|id| !present.contains_key(&id.to_hex()))
            .collect())
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
        match self.apply_one(actor, BatchOp::Commit(req), now).await? {
            BatchAnswer::Committed(r) => Ok(*r),
            BatchAnswer::Applied(_) => unreachable!("a commit is answered as one"),
        }
    }

    async fn delete(
        &self,
        actor: Actor,
        req: &DeleteRequest,
        now: i64,
    ) -> Result<OpResponse, DbError> {
        match self.apply_one(actor, BatchOp::Delete(req), now).await? {
            BatchAnswer::Applied(r) => Ok(r),
            BatchAnswer::Committed(_) => unreachable!("a delete is answered as an op"),
        }
    }

    async fn rename(
        &self,
        actor: Actor,
        req: &RenameRequest,
        now: i64,
    ) -> Result<OpResponse, DbError> {
        match self.apply_one(actor, BatchOp::Rename(req), now).await? {
            BatchAnswer::Applied(r) => Ok(r),
            BatchAnswer::Committed(_) => unreachable!("a rename is answered as an op"),
        }
    }

    async fn apply_batch(
        &self,
        actor: Actor,
        ops: &[BatchOp<'_>],
        now: i64,
    ) -> Vec<Result<BatchAnswer, DbError>> {
        let mut out = Vec::with_capacity(ops.len());
        for group in ops.chunk_by(|a, b| a.namespace() == b.namespace()) {
            match self
                .apply_group(actor, group[0].namespace(), group, now)
                .await
            {
                Ok(answers) => out.extend(answers),
                Err(e) if group.len() == 1 => out.push(Err(e)),
                Err(e) => {
                    // Nothing of the group was applied: apply its ops one by one, each in
                    // its own transaction, so that the failure stays with its op.
                    tracing::warn!(error = %e, ops = group.len(), "batch transaction failed; applying its events one by one");
                    for op in group {
                        out.push(self.apply_one(actor, *op, now).await);
                    }
                }
            }
        }
        out
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
        let mut w = NsTx::begin(self, ns, actor.device, now).await?;
        let head = file_by_id(&mut w.tx, file)
            .await?
            .ok_or(DbError::NotFound("file"))?;
        // Read the chunk list again under the lock: garbage collection may have pruned
        // the version (and swept its chunks) since `old` was read.
        let chunks = manifest_of(&mut w.tx, file, version).await?;
        if head.deleted && live_at(&mut w.tx, ns, head.path.as_str()).await? {
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
        let new = write_version(&mut w, file, Some(&head), &v).await?;
        w.finish().await?;
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
