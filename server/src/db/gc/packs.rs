//! The SQL of collecting over packs: packs that no chunk row points into go (their
//! rows under the namespace lock, then their files); pack files with no row are found
//! page by page; `verify` reads the rows of each pack.

use std::collections::HashSet;

use fsync_common::{ChunkId, NamespaceId, PackId};
use sqlx::{AssertSqlSafe, Row};

use super::{count, GcRepo, NsLock};
use crate::db::sql::{i64_of, parse, placeholders, IN_BATCH};
use crate::db::{DbError, NewPack};

/// A pack row: id, size, and whether a repack retired it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackRow {
    pub(crate) id: PackId,
    pub(crate) size: u64,
    pub(crate) retired: bool,
}

/// `p` (`packs`) has no chunk row pointing into it.
const EMPTY_PACK: &str = "NOT EXISTS (SELECT 1 FROM chunks c \
     WHERE c.namespace_id = p.namespace_id AND c.pack_id = p.id)";

/// `p` was written (or, if retired, retired) before `$2`.
const OLD_PACK: &str = "((p.state = 'live' AND p.created_at < $2) \
     OR (p.state = 'retired' AND p.retired_at < $2))";

impl GcRepo {
    /// Under the namespace lock: refreshes every pack's `live_bytes`, and deletes the
    /// rows of the packs past `cutoff` that no chunk row points into (with `dry_run`,
    /// only finds them). Returns those packs; their files may then be deleted, since
    /// no row can name them again (uploads write new packs; repacks move blobs into
    /// new packs).
    pub(crate) async fn drop_dead_packs(
        &self,
        ns: NamespaceId,
        cutoff: i64,
        dry_run: bool,
    ) -> Result<Vec<(PackId, u64)>, DbError> {
        let select = format!(
            "SELECT p.id, p.size FROM packs p WHERE p.namespace_id = $1 AND {OLD_PACK} \
             AND {EMPTY_PACK} ORDER BY p.id"
        );
        if dry_run {
            let rows = sqlx::query(AssertSqlSafe(select))
                .bind(ns.to_hex())
                .bind(cutoff)
                .fetch_all(self.sql.pool())
                .await?;
            return rows.iter().map(pack_size).collect();
        }
        let (mut tx, guard) = self.sql.begin_ns(ns).await?;
        sqlx::query(
            "UPDATE packs SET live_bytes = (SELECT COALESCE(SUM(c.stored_size), 0) FROM chunks c \
             WHERE c.namespace_id = packs.namespace_id AND c.pack_id = packs.id) \
             WHERE namespace_id = $1",
        )
        .bind(ns.to_hex())
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(AssertSqlSafe(select))
            .bind(ns.to_hex())
            .bind(cutoff)
            .fetch_all(&mut *tx)
            .await?;
        let dead: Vec<(PackId, u64)> = rows.iter().map(pack_size).collect::<Result<_, _>>()?;
        for batch in dead.chunks(IN_BATCH) {
            let sql = format!(
                "DELETE FROM packs WHERE namespace_id = $1 AND id IN ({})",
                placeholders(2, batch.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
            for (id, _) in batch {
                q = q.bind(id.to_hex());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        drop(guard);
        Ok(dead)
    }

    /// Takes the namespace lock and returns it with those of `ids` that have no pack
    /// row: while it is held no upload can record one, so their files may be deleted.
    pub(crate) async fn lock_unrecorded_packs(
        &self,
        ns: NamespaceId,
        ids: &[PackId],
    ) -> Result<(NsLock, Vec<PackId>), DbError> {
        let (mut tx, guard) = self.sql.begin_ns(ns).await?;
        let mut present = HashSet::new();
        for batch in ids.chunks(IN_BATCH) {
            let sql = format!(
                "SELECT id FROM packs WHERE namespace_id = $1 AND id IN ({})",
                placeholders(2, batch.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
            for id in batch {
                q = q.bind(id.to_hex());
            }
            for row in q.fetch_all(&mut *tx).await? {
                present.insert(parse::<PackId>(&row.try_get::<String, _>(0)?, "pack id")?);
            }
        }
        let absent = ids
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        Ok((NsLock { tx, _guard: guard }, absent))
    }

    /// Those of `ids` that have a pack row in `ns`.
    pub(crate) async fn recorded_packs(
        &self,
        ns: NamespaceId,
        ids: &[PackId],
    ) -> Result<HashSet<PackId>, DbError> {
        let mut out = HashSet::new();
        for batch in ids.chunks(IN_BATCH) {
            let sql = format!(
                "SELECT id FROM packs WHERE namespace_id = $1 AND id IN ({})",
                placeholders(2, batch.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
            for id in batch {
                q = q.bind(id.to_hex());
            }
            for row in q.fetch_all(self.sql.pool()).await? {
                out.insert(parse::<PackId>(&row.try_get::<String, _>(0)?, "pack id")?);
            }
        }
        Ok(out)
    }

    /// In one transaction under the namespace lock: records `pack` (written and durable)
    /// and points each of its entries' chunks into it, where the chunk's row still
    /// points where its blob was read from (`from[i]` for `pack.entries[i]`; `None`: a
    /// loose blob); then retires the packs `retire`, which stay for the grace period
    /// for readers that looked them up before. Returns how many rows moved.
    pub(crate) async fn switch_to_pack(
        &self,
        ns: NamespaceId,
        pack: &NewPack,
        from: &[Option<PackId>],
        retire: &[PackId],
        now: i64,
    ) -> Result<u64, DbError> {
        let (mut tx, guard) = self.sql.begin_ns(ns).await?;
        let mut moved = 0;
        let mut live = 0;
        for (e, from) in pack.entries.iter().zip(from) {
            let source = if from.is_some() {
                "pack_id = $5"
            } else {
                "pack_id IS NULL"
            };
            let sql = format!(
                "UPDATE chunks SET pack_id = $3, pack_offset = $4 \
                 WHERE namespace_id = $1 AND id = $2 AND {source}"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(ns.to_hex())
                .bind(e.id.to_hex())
                .bind(pack.id.to_hex())
                .bind(i64_of(e.offset));
            if let Some(from) = from {
                q = q.bind(from.to_hex());
            }
            if q.execute(&mut *tx).await?.rows_affected() == 1 {
                moved += 1;
                live += u64::from(e.len);
            }
        }
        sqlx::query(
            "INSERT INTO packs (namespace_id, id, size, blobs, live_bytes, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'live', $6)",
        )
        .bind(ns.to_hex())
        .bind(pack.id.to_hex())
        .bind(i64_of(pack.size))
        .bind(pack.entries.len() as i64)
        .bind(i64_of(live))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for batch in retire.chunks(IN_BATCH) {
            let sql = format!(
                "UPDATE packs SET state = 'retired', retired_at = $2, live_bytes = 0 \
                 WHERE namespace_id = $1 AND id IN ({})",
                placeholders(3, batch.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex()).bind(now);
            for id in batch {
                q = q.bind(id.to_hex());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        drop(guard);
        Ok(moved)
    }

    /// Live packs of `ns` worth repacking: those whose live bytes are under
    /// `min_live` of their size, and those smaller than `small` bytes (combined into
    /// fuller packs), with their sizes and live bytes, in id order.
    pub(crate) async fn repack_candidates(
        &self,
        ns: NamespaceId,
        min_live: f64,
        small: u64,
    ) -> Result<Vec<(PackId, u64, u64)>, DbError> {
        // live_bytes * 1000 < size * permille: integer arithmetic on both databases.
        let permille = (min_live.clamp(0.0, 1.0) * 1000.0).round() as i64;
        let rows = sqlx::query(
            "SELECT id, size, live_bytes FROM packs WHERE namespace_id = $1 AND state = 'live' \
             AND (live_bytes * 1000 < size * $2 OR size < $3) ORDER BY id",
        )
        .bind(ns.to_hex())
        .bind(permille)
        .bind(i64_of(small))
        .fetch_all(self.sql.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let (id, size) = pack_size(r)?;
                Ok((id, size, count(r, 2)?))
            })
            .collect()
    }

    /// Up to `limit` pack rows of `ns` after `after`, in id order.
    pub(crate) async fn pack_page(
        &self,
        ns: NamespaceId,
        after: Option<PackId>,
        limit: usize,
    ) -> Result<Vec<PackRow>, DbError> {
        let sql = format!(
            "SELECT id, size, state FROM packs WHERE namespace_id = $1 AND id > $2 \
             ORDER BY id LIMIT {}",
            limit.max(1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .bind(after.map_or_else(String::new, |a| a.to_hex()))
            .fetch_all(self.sql.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let (id, size) = pack_size(r)?;
                let retired = r.try_get::<String, _>(2)? == "retired";
                Ok(PackRow { id, size, retired })
            })
            .collect()
    }

    /// The chunk rows pointing into `pack`: id, offset, length, and whether a version
    /// references the chunk.
    pub(crate) async fn chunks_in_pack(
        &self,
        ns: NamespaceId,
        pack: PackId,
    ) -> Result<Vec<(ChunkId, u64, u64, bool)>, DbError> {
        let sql = format!(
            "SELECT c.id, c.pack_offset, c.stored_size, \
             CAST(CASE WHEN {} THEN 0 ELSE 1 END AS BIGINT) FROM chunks c \
             WHERE c.namespace_id = $1 AND c.pack_id = $2 ORDER BY c.pack_offset",
            super::UNREFERENCED
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .bind(pack.to_hex())
            .fetch_all(self.sql.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let id = parse::<ChunkId>(&r.try_get::<String, _>(0)?, "chunk id")?;
                let offset = r.try_get::<Option<i64>, _>(1)?.unwrap_or(-1);
                let offset = u64::try_from(offset)
                    .map_err(|_| DbError::Corrupt(format!("chunk {id}: no pack offset")))?;
                Ok((id, offset, count(r, 2)?, count(r, 3)? != 0))
            })
            .collect()
    }

    /// Chunks of `ns` whose row names a pack that has no row (up to `limit`), with
    /// whether a version references them.
    pub(crate) async fn chunks_in_unrecorded_packs(
        &self,
        ns: NamespaceId,
        limit: usize,
    ) -> Result<Vec<(ChunkId, bool)>, DbError> {
        let sql = format!(
            "SELECT c.id, CAST(CASE WHEN {} THEN 0 ELSE 1 END AS BIGINT) FROM chunks c \
             WHERE c.namespace_id = $1 AND c.pack_id IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM packs p WHERE p.namespace_id = c.namespace_id AND p.id = c.pack_id) \
             ORDER BY c.id LIMIT {}",
            super::UNREFERENCED,
            limit.max(1)
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .fetch_all(self.sql.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let id = parse::<ChunkId>(&r.try_get::<String, _>(0)?, "chunk id")?;
                Ok((id, count(r, 1)? != 0))
            })
            .collect()
    }
}

fn pack_size(row: &sqlx::any::AnyRow) -> Result<(PackId, u64), DbError> {
    let id = parse::<PackId>(&row.try_get::<String, _>(0)?, "pack id")?;
    Ok((id, count(row, 1)?))
}
