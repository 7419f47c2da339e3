//! The SQL of garbage collection (`crate::gc` holds the procedure and the argument for
//! why it is safe online). Every statement that removes a row runs in a transaction
//! that first takes the namespace lock ([`SqlRepo::begin_ns`]), the same lock a commit
//! holds while it checks that its chunks are recorded and inserts its references.

use std::path::PathBuf;

use fsync_common::{ChunkId, NamespaceId};
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::sql::{parse, placeholders, Dialect, SqlRepo, Tx, IN_BATCH};
use super::{parse_url, DbError, DbUrl};

/// Key of the PostgreSQL advisory lock that one `fsync-gc run` holds ("fsync-gc").
const GC_ADVISORY_KEY: i64 = 0x6673_796e_632d_6763;

/// Which versions retention prunes. A version is kept when it is its file's head, when
/// it is among the `keep_versions` newest, or when it was replaced (the next remaining
/// version was created) at or after `keep_after`; a policy that sets neither prunes
/// nothing. Age counts from replacement, not creation, so that the content a recent
/// edit or delete replaced stays restorable for the whole period. A file whose head is
/// a tombstone created before `keep_after` is removed whole (versions, journal entries
/// and file row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RetentionSql {
    /// Keep this many newest versions per file (at least 1: the head).
    pub(crate) keep_versions: Option<u64>,
    /// Keep versions replaced at or after this time (seconds).
    pub(crate) keep_after: Option<i64>,
}

impl RetentionSql {
    /// Condition on `v` (`file_versions`) joined with `f` (`files`): the version may go.
    /// `None` when the policy prunes no version.
    fn prunable_version(self) -> Option<String> {
        if self.keep_versions.is_none() && self.keep_after.is_none() {
            return None;
        }
        let mut parts = vec!["v.version <> f.head_version".to_owned()];
        if let Some(n) = self.keep_versions {
            parts.push(format!("v.version <= f.head_version - {}", n.max(1)));
        }
        if let Some(t) = self.keep_after {
            parts.push(format!(
                "(SELECT MIN(n.created_at) FROM file_versions n \
                 WHERE n.file_id = v.file_id AND n.version > v.version) < {t}"
            ));
        }
        Some(format!("({})", parts.join(" AND ")))
    }

    /// Condition on `f` (`files`): a tombstone older than the policy, removed whole.
    fn expired_tombstone(self) -> Option<String> {
        self.keep_after.map(|t| {
            format!(
                "(f.is_deleted = 1 AND EXISTS (SELECT 1 FROM file_versions h \
                 WHERE h.file_id = f.id AND h.version = f.head_version AND h.created_at < {t}))"
            )
        })
    }

    /// Condition on `v` and `f`: the version is removed by this policy.
    fn removed_version(self) -> Option<String> {
        match (self.prunable_version(), self.expired_tombstone()) {
            (None, None) => None,
            (Some(a), None) | (None, Some(a)) => Some(a),
            (Some(a), Some(b)) => Some(format!("({a} OR {b})")),
        }
    }
}

/// `c` (`chunks`) is referenced by no version.
const UNREFERENCED: &str = "NOT EXISTS (SELECT 1 FROM version_chunks vc \
     WHERE vc.namespace_id = c.namespace_id AND vc.chunk_id = c.id)";

/// A chunk row: id and stored size.
pub(crate) type ChunkRow = (ChunkId, u64);

/// What one retention batch removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pruned {
    /// Versions removed.
    pub(crate) versions: u64,
    /// Files removed whole (expired tombstones).
    pub(crate) files: u64,
}

/// Totals for `fsync-gc stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StatsRow {
    pub(crate) files: u64,
    pub(crate) versions: u64,
    pub(crate) chunks: u64,
    pub(crate) stored_bytes: u64,
    pub(crate) referenced_chunks: u64,
    pub(crate) referenced_stored_bytes: u64,
    pub(crate) logical_bytes: u64,
    pub(crate) head_logical_bytes: u64,
    pub(crate) unreferenced_chunks: u64,
    pub(crate) unreferenced_bytes: u64,
    pub(crate) reclaimable_chunks: u64,
    pub(crate) reclaimable_bytes: u64,
}

/// Holds the namespace lock until [`NsLock::release`] (or drop, which rolls back).
pub(crate) struct NsLock {
    tx: Tx,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl NsLock {
    /// Commits the (write-free) transaction, releasing the lock.
    pub(crate) async fn release(self) -> Result<(), DbError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// The one-GC-at-a-time lock, held until dropped.
#[derive(Debug)]
pub(crate) enum GcLockHandle {
    /// A PostgreSQL session holding `pg_try_advisory_lock`: closing it releases the lock.
    Postgres(Option<AnyConnection>),
    /// An exclusively locked file next to the SQLite database (closing it unlocks).
    Sqlite {
        /// The open, locked file.
        _held: std::fs::File,
    },
}

impl GcLockHandle {
    /// Releases the lock.
    pub(crate) async fn release(self) {
        match self {
            Self::Postgres(Some(mut conn)) => {
                // Unlock explicitly: the server ends a closed session's locks only when
                // its backend exits, which a next run could beat. (A crash needs
                // neither: the session ends and its locks with it.)
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(GC_ADVISORY_KEY)
                    .execute(&mut conn)
                    .await;
                let _ = sqlx::Connection::close(conn).await;
            }
            Self::Postgres(None) | Self::Sqlite { .. } => {}
        }
    }
}

/// Why the GC lock was not taken.
#[derive(Debug)]
pub(crate) enum LockFailure {
    /// Another GC holds it; where (the lock file, or the database).
    Busy(String),
    /// Creating the lock file failed.
    Io(PathBuf, std::io::Error),
    /// The database failed.
    Db(DbError),
}

/// Garbage collection's view of the repository.
#[derive(Debug, Clone)]
pub(crate) struct GcRepo {
    sql: SqlRepo,
    /// The SQLite database file, whose `.gc.lock` sibling is the GC lock.
    sqlite_path: Option<PathBuf>,
}

fn hex_ids(ids: &[ChunkId]) -> Vec<String> {
    ids.iter().map(ChunkId::to_hex).collect()
}

fn chunk_row(row: &sqlx::any::AnyRow) -> Result<ChunkRow, DbError> {
    let id = parse::<ChunkId>(&row.try_get::<String, _>(0)?, "chunk id")?;
    Ok((id, row.try_get::<i64, _>(1)?.max(0) as u64))
}

fn count(row: &sqlx::any::AnyRow, i: usize) -> Result<u64, DbError> {
    Ok(row.try_get::<i64, _>(i)?.max(0) as u64)
}

impl GcRepo {
    /// Opens (and migrates) the database named by `url`.
    pub(crate) async fn open(url: &str) -> Result<Self, DbError> {
        Ok(match parse_url(url)? {
            DbUrl::Postgres(u) => Self {
                sql: super::postgres::open_postgres_repo(u).await?,
                sqlite_path: None,
            },
            DbUrl::Sqlite(p) => Self {
                sql: super::sqlite::open_sqlite_repo(p).await?,
                sqlite_path: Some(p.to_owned()),
            },
        })
    }

    /// Takes the one-GC-at-a-time lock without waiting.
    pub(crate) async fn try_lock_gc(&self) -> Result<GcLockHandle, LockFailure> {
        match self.sql.dialect() {
            Dialect::Postgres => {
                let mut conn = self
                    .sql
                    .pool()
                    .acquire()
                    .await
                    .map_err(|e| LockFailure::Db(e.into()))?
                    .detach();
                let row = sqlx::query("SELECT pg_try_advisory_lock($1)")
                    .bind(GC_ADVISORY_KEY)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| LockFailure::Db(e.into()))?;
                let got: bool = row.try_get(0).map_err(|e| LockFailure::Db(e.into()))?;
                if got {
                    Ok(GcLockHandle::Postgres(Some(conn)))
                } else {
                    let _ = sqlx::Connection::close(conn).await;
                    Err(LockFailure::Busy(format!(
                        "the PostgreSQL advisory lock {GC_ADVISORY_KEY:#x}"
                    )))
                }
            }
            Dialect::Sqlite => {
                let db = self
                    .sqlite_path
                    .as_ref()
                    .expect("an SQLite repository knows its file");
                let mut name = db.as_os_str().to_owned();
                name.push(".gc.lock");
                let path = PathBuf::from(name);
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| LockFailure::Io(path.clone(), e))?;
                match file.try_lock() {
                    Ok(()) => {
                        use std::io::Write as _;
                        let _ = file.set_len(0);
                        let _ = writeln!(&file, "{}", std::process::id());
                        Ok(GcLockHandle::Sqlite { _held: file })
                    }
                    Err(std::fs::TryLockError::WouldBlock) => {
                        let holder = std::fs::read_to_string(&path).unwrap_or_default();
                        Err(LockFailure::Busy(format!(
                            "{} (held by process {})",
                            path.display(),
                            holder.trim()
                        )))
                    }
                    Err(std::fs::TryLockError::Error(e)) => Err(LockFailure::Io(path, e)),
                }
            }
        }
    }

    /// Every namespace, in id order.
    pub(crate) async fn namespaces(&self) -> Result<Vec<NamespaceId>, DbError> {
        let rows = sqlx::query("SELECT id FROM namespaces ORDER BY id")
            .fetch_all(self.sql.pool())
            .await?;
        rows.iter()
            .map(|r| parse(&r.try_get::<String, _>(0)?, "namespace id"))
            .collect()
    }

    /// True when the namespace exists.
    pub(crate) async fn namespace_exists(&self, ns: NamespaceId) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT 1 FROM namespaces WHERE id = $1")
            .bind(ns.to_hex())
            .fetch_optional(self.sql.pool())
            .await?;
        Ok(row.is_some())
    }

    // ---------------------------------------------------------------- retention

    /// Counts what the policy would remove in `ns`.
    pub(crate) async fn count_prunable(
        &self,
        ns: NamespaceId,
        policy: RetentionSql,
    ) -> Result<Pruned, DbError> {
        let mut out = Pruned::default();
        if let Some(cond) = policy.removed_version() {
            let sql = format!(
                "SELECT COUNT(*) FROM file_versions v JOIN files f ON f.id = v.file_id \
                 WHERE f.namespace_id = $1 AND {cond}"
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(ns.to_hex())
                .fetch_one(self.sql.pool())
                .await?;
            out.versions = count(&row, 0)?;
        }
        if let Some(cond) = policy.expired_tombstone() {
            let sql = format!("SELECT COUNT(*) FROM files f WHERE f.namespace_id = $1 AND {cond}");
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(ns.to_hex())
                .fetch_one(self.sql.pool())
                .await?;
            out.files = count(&row, 0)?;
        }
        Ok(out)
    }

    /// Removes up to `limit` expired tombstoned files of `ns` with all their versions,
    /// under the namespace lock. Returns what went; zero files means done.
    pub(crate) async fn prune_tombstones(
        &self,
        ns: NamespaceId,
        policy: RetentionSql,
        limit: usize,
    ) -> Result<Pruned, DbError> {
        let Some(cond) = policy.expired_tombstone() else {
            return Ok(Pruned::default());
        };
        let (mut tx, guard) = self.sql.begin_ns(ns).await?;
        let sql = format!(
            "SELECT f.id FROM files f WHERE f.namespace_id = $1 AND {cond} ORDER BY f.id LIMIT {}",
            limit.clamp(1, IN_BATCH)
        );
        let ids: Vec<String> = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            drop((tx, guard));
            return Ok(Pruned::default());
        }
        let list = placeholders(1, ids.len());
        let statements = [
            format!(
                "DELETE FROM version_chunks WHERE version_id IN \
                 (SELECT id FROM file_versions WHERE file_id IN ({list}))"
            ),
            format!("DELETE FROM file_versions WHERE file_id IN ({list})"),
            format!("DELETE FROM changes WHERE file_id IN ({list})"),
            format!("DELETE FROM files WHERE id IN ({list})"),
        ];
        let mut affected = [0u64; 4];
        for (i, sql) in statements.into_iter().enumerate() {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in &ids {
                q = q.bind(id.as_str());
            }
            affected[i] = q.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        drop(guard);
        Ok(Pruned {
            versions: affected[1],
            files: affected[3],
        })
    }

    /// Removes up to `limit` prunable (never head) versions of `ns` under the namespace
    /// lock. Returns how many went; zero means done.
    pub(crate) async fn prune_versions(
        &self,
        ns: NamespaceId,
        policy: RetentionSql,
        limit: usize,
    ) -> Result<u64, DbError> {
        let Some(cond) = policy.prunable_version() else {
            return Ok(0);
        };
        let (mut tx, guard) = self.sql.begin_ns(ns).await?;
        let sql = format!(
            "SELECT v.id FROM file_versions v JOIN files f ON f.id = v.file_id \
             WHERE f.namespace_id = $1 AND {cond} ORDER BY v.id LIMIT {}",
            limit.clamp(1, IN_BATCH)
        );
        let ids: Vec<i64> = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            drop((tx, guard));
            return Ok(0);
        }
        let list = placeholders(1, ids.len());
        let mut removed = 0;
        for sql in [
            format!("DELETE FROM version_chunks WHERE version_id IN ({list})"),
            format!("DELETE FROM file_versions WHERE id IN ({list})"),
        ] {
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in &ids {
                q = q.bind(*id);
            }
            removed = q.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        drop(guard);
        Ok(removed)
    }

    // ---------------------------------------------------------------- sweep

    /// Up to `limit` chunks of `ns` after `after` (id order) that no version references
    /// and that were neither uploaded nor touched since `cutoff`. With `ignoring`, also
    /// chunks referenced only by versions that policy would remove (a dry run's view).
    /// Read without the lock: [`GcRepo::delete_chunk_rows`] checks again under it.
    pub(crate) async fn sweep_candidates(
        &self,
        ns: NamespaceId,
        after: Option<ChunkId>,
        cutoff: i64,
        limit: usize,
        ignoring: Option<RetentionSql>,
    ) -> Result<Vec<ChunkRow>, DbError> {
        let unreferenced = match ignoring.and_then(RetentionSql::removed_version) {
            Some(removed) => format!(
                "NOT EXISTS (SELECT 1 FROM version_chunks vc \
                 JOIN file_versions v ON v.id = vc.version_id JOIN files f ON f.id = v.file_id \
                 WHERE vc.namespace_id = c.namespace_id AND vc.chunk_id = c.id AND NOT {removed})"
            ),
            None => UNREFERENCED.to_owned(),
        };
        let sql = format!(
            "SELECT c.id, c.stored_size FROM chunks c WHERE c.namespace_id = $1 AND c.id > $2 \
             AND c.last_touched < $3 AND {unreferenced} ORDER BY c.id LIMIT {}",
            limit.max(1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .bind(after.map_or_else(String::new, |a| a.to_hex()))
            .bind(cutoff)
            .fetch_all(self.sql.pool())
            .await?;
        rows.iter().map(chunk_row).collect()
    }

    /// Deletes the rows of `ids` that are, checked again under the namespace lock, still
    /// referenced by no version and untouched since `cutoff`. Returns the deleted rows.
    pub(crate) async fn delete_chunk_rows(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
        cutoff: i64,
    ) -> Result<Vec<ChunkRow>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (mut tx, guard) = self.sql.begin_ns(ns).await?;
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(IN_BATCH) {
            let sql = format!(
                "DELETE FROM chunks WHERE namespace_id = $1 AND last_touched < $2 AND id IN ({}) \
                 AND NOT EXISTS (SELECT 1 FROM version_chunks vc \
                 WHERE vc.namespace_id = chunks.namespace_id AND vc.chunk_id = chunks.id) \
                 RETURNING id, stored_size",
                placeholders(3, batch.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(ns.to_hex())
                .bind(cutoff);
            for id in hex_ids(batch) {
                q = q.bind(id);
            }
            for row in q.fetch_all(&mut *tx).await? {
                out.push(chunk_row(&row)?);
            }
        }
        tx.commit().await?;
        drop(guard);
        Ok(out)
    }

    /// Takes the namespace lock and returns it with those of `ids` that have no chunk
    /// row. While the lock is held no row for them can appear, so their blobs may be
    /// deleted; release the lock after.
    pub(crate) async fn lock_unrecorded(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<(NsLock, Vec<ChunkId>), DbError> {
        let (mut tx, guard) = self.sql.begin_ns(ns).await?;
        let present = present_in(&mut tx, ns, ids).await?;
        let absent = ids
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        Ok((NsLock { tx, _guard: guard }, absent))
    }

    /// Those of `ids` that have a chunk row in `ns`, with their stored sizes.
    pub(crate) async fn rows_of(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkRow>, DbError> {
        let mut out = Vec::new();
        for batch in ids.chunks(IN_BATCH) {
            let sql = format!(
                "SELECT id, stored_size FROM chunks WHERE namespace_id = $1 AND id IN ({})",
                placeholders(2, batch.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
            for id in hex_ids(batch) {
                q = q.bind(id);
            }
            for row in q.fetch_all(self.sql.pool()).await? {
                out.push(chunk_row(&row)?);
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- verify and stats

    /// Up to `limit` chunk rows of `ns` after `after`, each with whether a version
    /// references it.
    pub(crate) async fn chunk_page(
        &self,
        ns: NamespaceId,
        after: Option<ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, u64, bool)>, DbError> {
        let sql = format!(
            "SELECT c.id, c.stored_size, CAST(CASE WHEN {UNREFERENCED} THEN 0 ELSE 1 END AS BIGINT) \
             FROM chunks c WHERE c.namespace_id = $1 AND c.id > $2 ORDER BY c.id LIMIT {}",
            limit.max(1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .bind(after.map_or_else(String::new, |a| a.to_hex()))
            .fetch_all(self.sql.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let (id, size) = chunk_row(r)?;
                Ok((id, size, r.try_get::<i64, _>(2)? != 0))
            })
            .collect()
    }

    /// Chunks that versions of `ns` reference but that have no row (up to `limit`).
    pub(crate) async fn unrecorded_references(
        &self,
        ns: NamespaceId,
        limit: usize,
    ) -> Result<Vec<ChunkId>, DbError> {
        let sql = format!(
            "SELECT DISTINCT vc.chunk_id FROM version_chunks vc WHERE vc.namespace_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.namespace_id = vc.namespace_id \
             AND c.id = vc.chunk_id) ORDER BY vc.chunk_id LIMIT {}",
            limit.max(1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .fetch_all(self.sql.pool())
            .await?;
        rows.iter()
            .map(|r| parse(&r.try_get::<String, _>(0)?, "chunk id"))
            .collect()
    }

    /// Totals over `ns` (or every namespace); chunks unreferenced and untouched since
    /// `cutoff` count as reclaimable.
    pub(crate) async fn stats(
        &self,
        ns: Option<NamespaceId>,
        cutoff: i64,
    ) -> Result<StatsRow, DbError> {
        let (c_ns, f_ns) = if ns.is_some() {
            ("c.namespace_id = $1", "f.namespace_id = $1")
        } else {
            ("$1 = $1", "$1 = $1")
        };
        let bind = ns.map_or_else(String::new, |n| n.to_hex());
        let pool = self.sql.pool();
        let sum = "CAST(COALESCE(SUM(c.stored_size), 0) AS BIGINT)";
        let chunks = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*), {sum} FROM chunks c WHERE {c_ns}"
        )))
        .bind(&bind)
        .fetch_one(pool)
        .await?;
        let unreferenced = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*), {sum} FROM chunks c WHERE {c_ns} AND {UNREFERENCED}"
        )))
        .bind(&bind)
        .fetch_one(pool)
        .await?;
        let reclaimable = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*), {sum} FROM chunks c WHERE {c_ns} AND c.last_touched < $2 AND {UNREFERENCED}"
        )))
        .bind(&bind)
        .bind(cutoff)
        .fetch_one(pool)
        .await?;
        let versions = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(v.size), 0) AS BIGINT) FROM file_versions v \
             JOIN files f ON f.id = v.file_id WHERE {f_ns}"
        )))
        .bind(&bind)
        .fetch_one(pool)
        .await?;
        let files = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN f.is_deleted = 0 THEN f.size ELSE 0 END), 0) AS BIGINT) \
             FROM files f WHERE {f_ns}"
        )))
        .bind(&bind)
        .fetch_one(pool)
        .await?;
        let (n_chunks, stored) = (count(&chunks, 0)?, count(&chunks, 1)?);
        let (n_unref, unref_bytes) = (count(&unreferenced, 0)?, count(&unreferenced, 1)?);
        Ok(StatsRow {
            files: count(&files, 0)?,
            versions: count(&versions, 0)?,
            chunks: n_chunks,
            stored_bytes: stored,
            referenced_chunks: n_chunks - n_unref,
            referenced_stored_bytes: stored - unref_bytes,
            logical_bytes: count(&versions, 1)?,
            head_logical_bytes: count(&files, 1)?,
            unreferenced_chunks: n_unref,
            unreferenced_bytes: unref_bytes,
            reclaimable_chunks: count(&reclaimable, 0)?,
            reclaimable_bytes: count(&reclaimable, 1)?,
        })
    }
}

/// Those of `ids` recorded in `ns`, read inside `tx`.
async fn present_in(
    tx: &mut Tx,
    ns: NamespaceId,
    ids: &[ChunkId],
) -> Result<std::collections::HashSet<ChunkId>, DbError> {
    let mut present = std::collections::HashSet::new();
    for batch in ids.chunks(IN_BATCH) {
        let sql = format!(
            "SELECT id FROM chunks WHERE namespace_id = $1 AND id IN ({})",
            placeholders(2, batch.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
        for id in hex_ids(batch) {
            q = q.bind(id);
        }
        for row in q.fetch_all(&mut **tx).await? {
            present.insert(parse::<ChunkId>(&row.try_get::<String, _>(0)?, "chunk id")?);
        }
    }
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::RetentionSql;

    #[test]
    fn an_empty_policy_prunes_nothing() {
        let p = RetentionSql::default();
        assert_eq!(p.prunable_version(), None);
        assert_eq!(p.expired_tombstone(), None);
        assert_eq!(p.removed_version(), None);
    }

    #[test]
    fn the_head_is_never_prunable() {
        for p in [
            RetentionSql {
                keep_versions: Some(1),
                keep_after: None,
            },
            RetentionSql {
                keep_versions: None,
                keep_after: Some(5),
            },
        ] {
            assert!(p
                .prunable_version()
                .unwrap()
                .starts_with("(v.version <> f.head_version AND "));
        }
    }

    #[test]
    fn keep_versions_zero_still_keeps_the_head() {
        let p = RetentionSql {
            keep_versions: Some(0),
            keep_after: None,
        };
        assert!(p
            .prunable_version()
            .unwrap()
            .contains("v.version <= f.head_version - 1"));
    }

    #[test]
    fn tombstones_expire_only_by_age() {
        let p = RetentionSql {
            keep_versions: Some(3),
            keep_after: None,
        };
        assert_eq!(p.expired_tombstone(), None);
        let p = RetentionSql {
            keep_versions: Some(3),
            keep_after: Some(100),
        };
        assert!(p
            .expired_tombstone()
            .unwrap()
            .contains("h.created_at < 100"));
    }
}
