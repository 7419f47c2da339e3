//! The sweep: unreferenced chunk rows past the grace period go under the namespace
//! lock, then their blobs; blobs with no row are found page by page.

use std::collections::HashSet;

use fsync_common::{ChunkId, NamespaceId};
use sqlx::{AssertSqlSafe, Row};

use super::{
    chunk_row, hex_ids, ChunkRow, GcRepo, NsLock, RetentionSql, PAGE_UNREFERENCED, UNREFERENCED,
};
use crate::db::sql::{ids, parse, placeholders, Tx, IN_BATCH};
use crate::db::DbError;

/// Condition on `c` (`chunks`): a sweep at `cutoff` deletes the row, because no version
/// references it (with `ignoring`: no version that policy keeps) and it was neither
/// uploaded nor touched since. `cutoff` is an integer, written into the text.
pub(super) fn swept(cutoff: i64, ignoring: Option<RetentionSql>) -> String {
    let unreferenced = match ignoring.and_then(RetentionSql::removed_version) {
        // Through pages: a page the sweep keeps (named by a kept version, or touched
        // within the grace period) keeps its chunks.
        Some(removed) => format!(
            "NOT EXISTS (SELECT 1 FROM version_chunks vc \
             JOIN file_versions v ON v.id = vc.version_id JOIN files f ON f.id = v.file_id \
             WHERE vc.namespace_id = c.namespace_id AND vc.chunk_id = c.id AND NOT {removed}) \
             AND NOT EXISTS (SELECT 1 FROM page_chunks pc \
             JOIN manifest_pages p ON p.namespace_id = pc.namespace_id AND p.id = pc.page_id \
             WHERE pc.namespace_id = c.namespace_id AND pc.chunk_id = c.id \
             AND (p.last_touched >= {cutoff} OR EXISTS (SELECT 1 FROM version_pages vp \
             JOIN file_versions v ON v.id = vp.version_id JOIN files f ON f.id = v.file_id \
             WHERE vp.namespace_id = p.namespace_id AND vp.page_id = p.id AND NOT {removed})))"
        ),
        None => UNREFERENCED.to_owned(),
    };
    format!("(c.last_touched < {cutoff} AND {unreferenced})")
}

impl GcRepo {
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
        let sql = format!(
            "SELECT c.id, c.stored_size FROM chunks c WHERE c.namespace_id = $1 AND c.id > $2 \
             AND {} ORDER BY c.id LIMIT {}",
            swept(cutoff, ignoring),
            limit.max(1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .bind(after.map_or_else(String::new, |a| a.to_hex()))
            .fetch_all(self.sql.pool())
            .await?;
        rows.iter().map(chunk_row).collect()
    }

    /// Deletes the rows of `ids` that are, checked again under the namespace lock, still
    /// referenced by no version and untouched since `cutoff`. Returns the deleted rows,
    /// each with whether its blob was loose (a packed blob goes with its pack).
    pub(crate) async fn delete_chunk_rows(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
        cutoff: i64,
    ) -> Result<Vec<(ChunkRow, bool)>, DbError> {
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
                 AND NOT EXISTS (SELECT 1 FROM page_chunks pc \
                 WHERE pc.namespace_id = chunks.namespace_id AND pc.chunk_id = chunks.id) \
                 RETURNING id, stored_size, pack_id",
                placeholders(3, batch.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(ns.to_hex())
                .bind(cutoff);
            for id in hex_ids(batch) {
                q = q.bind(id);
            }
            for row in q.fetch_all(&mut *tx).await? {
                let loose = row.try_get::<Option<String>, _>(2)?.is_none();
                out.push((chunk_row(&row)?, loose));
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

    /// Up to `limit` rows of loose chunks (no pack) of `ns` after `after`, each with
    /// whether a version references it.
    pub(crate) async fn chunk_page(
        &self,
        ns: NamespaceId,
        after: Option<ChunkId>,
        limit: usize,
    ) -> Result<Vec<(ChunkId, u64, bool)>, DbError> {
        let sql = format!(
            "SELECT c.id, c.stored_size, CAST(CASE WHEN {UNREFERENCED} THEN 0 ELSE 1 END AS BIGINT) \
             FROM chunks c WHERE c.namespace_id = $1 AND c.id > $2 AND c.pack_id IS NULL \
             ORDER BY c.id LIMIT {}",
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

    /// Chunks that versions or manifest pages of `ns` reference but that have no row
    /// (up to `limit`).
    pub(crate) async fn unrecorded_references(
        &self,
        ns: NamespaceId,
        limit: usize,
    ) -> Result<Vec<ChunkId>, DbError> {
        let sql = format!(
            "SELECT DISTINCT r.chunk_id FROM (SELECT namespace_id, chunk_id FROM version_chunks \
             UNION ALL SELECT namespace_id, chunk_id FROM page_chunks) r \
             WHERE r.namespace_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.namespace_id = r.namespace_id \
             AND c.id = r.chunk_id) ORDER BY r.chunk_id LIMIT {}",
            limit.max(1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .fetch_all(self.sql.pool())
            .await?;
        ids(&rows, "chunk id")
    }
}

impl GcRepo {
    /// Deletes the manifest pages of `ns` that no version names and that were neither
    /// stored nor touched since `cutoff`, with their chunk rows, under the namespace
    /// lock (the lock a commit holds while it checks its pages and names them).
    /// Returns how many went.
    pub(crate) async fn sweep_pages(&self, ns: NamespaceId, cutoff: i64) -> Result<u64, DbError> {
        let mut total = 0;
        loop {
            let (mut tx, guard) = self.sql.begin_ns(ns).await?;
            let dead = sqlx::query(AssertSqlSafe(format!(
                "SELECT p.id, p.body FROM manifest_pages p WHERE p.namespace_id = $1 \
                 AND p.last_touched < {cutoff} AND {PAGE_UNREFERENCED} LIMIT {IN_BATCH}"
            )))
            .bind(ns.to_hex())
            .fetch_all(&mut *tx)
            .await?;
            if dead.is_empty() {
                drop((tx, guard));
                return Ok(total);
            }
            // A page's chunk rows, by the keys its body lists.
            let mut ids = Vec::with_capacity(dead.len());
            let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
            for row in &dead {
                let id: Vec<u8> = row.try_get(0)?;
                let body: Vec<u8> = row.try_get(1)?;
                let chunks = fsync_common::pages::decode(&body)
                    .map_err(|e| DbError::Corrupt(format!("a manifest page: {e}")))?;
                let mut seen = HashSet::new();
                for c in chunks {
                    if seen.insert(c.id()) {
                        keys.push((c.id().to_hex(), id.clone()));
                    }
                }
                ids.push(id);
            }
            for batch in keys.chunks(IN_BATCH / 2) {
                let pairs = (0..batch.len())
                    .map(|i| format!("(${}, ${})", 2 + 2 * i, 3 + 2 * i))
                    .collect::<Vec<_>>()
                    .join(",");
                let sql = format!(
                    "DELETE FROM page_chunks WHERE namespace_id = $1 \
                     AND (chunk_id, page_id) IN (VALUES {pairs})"
                );
                let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
                for (chunk, page) in batch {
                    q = q.bind(chunk.as_str()).bind(page.clone());
                }
                q.execute(&mut *tx).await?;
            }
            let sql = format!(
                "DELETE FROM manifest_pages WHERE namespace_id = $1 AND id IN ({})",
                placeholders(2, ids.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
            for id in &ids {
                q = q.bind(id.clone());
            }
            total += q.execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            drop(guard);
        }
    }

    /// Pages that versions of `ns` name but that are not stored (up to `limit`).
    pub(crate) async fn unrecorded_pages(
        &self,
        ns: NamespaceId,
        limit: usize,
    ) -> Result<Vec<fsync_common::PageId>, DbError> {
        let sql = format!(
            "SELECT DISTINCT vp.page_id FROM version_pages vp WHERE vp.namespace_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM manifest_pages p WHERE p.namespace_id = vp.namespace_id \
             AND p.id = vp.page_id) ORDER BY vp.page_id LIMIT {}",
            limit.max(1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .fetch_all(self.sql.pool())
            .await?;
        rows.iter()
            .map(|r| crate::db::sql::page_id(&r.try_get::<Vec<u8>, _>(0)?))
            .collect()
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
