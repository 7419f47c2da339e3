//! The SQL of garbage collection (`crate::gc` holds the procedure and the argument for
//! why it is safe online). Every statement that removes a row runs in a transaction
//! that first takes the namespace lock ([`SqlRepo::begin_ns`]), the same lock a commit
//! holds while it checks that its chunks are recorded and inserts its references.

use std::path::PathBuf;

use fsync_common::{ChunkId, NamespaceId};
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::sql::{ids, parse, Dialect, SqlRepo, Tx};
use super::{parse_url, DbError, DbUrl};

mod packs;
mod retention;
mod sweep;

pub(crate) use retention::RetentionSql;

/// Key of the PostgreSQL advisory lock that one `fsync-gc run` holds ("fsync-gc").
const GC_ADVISORY_KEY: i64 = 0x6673_796e_632d_6763;

/// `c` (`chunks`) is referenced by no version's inline chunk list and by no stored
/// manifest page (pages no version names go first, in their own sweep).
const UNREFERENCED: &str = "NOT EXISTS (SELECT 1 FROM version_chunks vc \
     WHERE vc.namespace_id = c.namespace_id AND vc.chunk_id = c.id) \
     AND NOT EXISTS (SELECT 1 FROM page_chunks pc \
     WHERE pc.namespace_id = c.namespace_id AND pc.chunk_id = c.id)";

/// `p` (`manifest_pages`) is named by no version.
const PAGE_UNREFERENCED: &str = "NOT EXISTS (SELECT 1 FROM version_pages vp \
     WHERE vp.namespace_id = p.namespace_id AND vp.page_id = p.id)";

/// A chunk row: id and stored size.
pub(crate) type ChunkRow = (ChunkId, u64);

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
    pub(crate) packs: u64,
    pub(crate) pack_bytes: u64,
    pub(crate) packed_live_bytes: u64,
    pub(crate) loose_chunks: u64,
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

    /// Every account's usage, or only that of `ns`'s owner.
    pub(crate) async fn users_owning(
        &self,
        ns: Option<NamespaceId>,
    ) -> Result<Vec<crate::db::UserSummary>, DbError> {
        use crate::db::AdminRepo as _;
        let users = self.sql.users(None).await?;
        let Some(ns) = ns else { return Ok(users) };
        let owner = self.sql.quota_of(ns).await?.map(|u| u.user);
        Ok(users.into_iter().filter(|u| Some(u.id) == owner).collect())
    }

    /// Every namespace, in id order.
    pub(crate) async fn namespaces(&self) -> Result<Vec<NamespaceId>, DbError> {
        let rows = sqlx::query("SELECT id FROM namespaces ORDER BY id")
            .fetch_all(self.sql.pool())
            .await?;
        ids(&rows, "namespace id")
    }

    /// True when the namespace exists.
    pub(crate) async fn namespace_exists(&self, ns: NamespaceId) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT 1 FROM namespaces WHERE id = $1")
            .bind(ns.to_hex())
            .fetch_optional(self.sql.pool())
            .await?;
        Ok(row.is_some())
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
        let p_ns = if ns.is_some() {
            "p.namespace_id = $1"
        } else {
            "$1 = $1"
        };
        let packs = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(p.size), 0) AS BIGINT) FROM packs p \
             WHERE {p_ns} AND p.state <> 'dead'"
        )))
        .bind(&bind)
        .fetch_one(pool)
        .await?;
        let placed = sqlx::query(AssertSqlSafe(format!(
            "SELECT CAST(COALESCE(SUM(CASE WHEN c.pack_id IS NULL THEN 0 ELSE c.stored_size END), 0) \
             AS BIGINT), CAST(COALESCE(SUM(CASE WHEN c.pack_id IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT) \
             FROM chunks c WHERE {c_ns}"
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
            packs: count(&packs, 0)?,
            pack_bytes: count(&packs, 1)?,
            packed_live_bytes: count(&placed, 0)?,
            loose_chunks: count(&placed, 1)?,
        })
    }
}
