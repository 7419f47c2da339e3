//! The SQL of collecting over packs: packs that no chunk row points into go (their
//! rows under the namespace lock, then their files); pack files with no row are found
//! page by page; `verify` reads the rows of each pack.

use std::collections::HashSet;

use fsync_common::{ChunkId, NamespaceId, PackId};
use fsync_store::pack;
use sqlx::{AssertSqlSafe, Row};

use super::sweep::swept;
use super::{count, GcRepo, NsLock, RetentionSql};
use crate::db::sql::{i64_of, insert_pack_row, parse, placeholders, IN_BATCH};
use crate::db::{DbError, NewPack};

/// A pack row: id, size, and whether it may be missing (a repack retired it, or a
/// collection is deleting it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackRow {
    pub(crate) id: PackId,
    pub(crate) size: u64,
    pub(crate) going: bool,
}

/// A pack worth repacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RepackCandidate {
    pub(crate) id: PackId,
    pub(crate) size: u64,
    /// Stored bytes of its surviving chunk rows.
    pub(crate) live: u64,
    /// Selected for its dead bytes, not only for being small.
    pub(crate) mostly_dead: bool,
}

/// `p` was written (or, if retired, retired) before `$2`.
const OLD_PACK: &str = "((p.state = 'live' AND p.created_at < $2) \
     OR (p.state = 'retired' AND p.retired_at < $2))";

/// ` AND NOT <the row would be swept>` for a dry run's prediction (`predict`: the
/// policy of the run), nothing for a real run, which asks after its sweep.
fn surviving(cutoff: i64, predict: Option<RetentionSql>) -> String {
    predict.map_or_else(String::new, |policy| {
        format!(" AND NOT {}", swept(cutoff, Some(policy)))
    })
}

/// The stored bytes of the chunk rows pointing into `p` (`packs`) that survive.
fn live_bytes(keep: &str) -> String {
    format!(
        "CAST((SELECT COALESCE(SUM(c.stored_size), 0) FROM chunks c \
         WHERE c.namespace_id = p.namespace_id AND c.pack_id = p.id{keep}) AS BIGINT)"
    )
}

impl GcRepo {
    /// The packs of `ns` whose files are to be deleted: those marked `dead` by an
    /// earlier run whose deletion failed, and those past `cutoff` that no chunk row
    /// points into any more. With `predict` (a dry run with that policy), only found,
    /// counting the rows its sweep would delete as gone; else, under the namespace
    /// lock, marked `dead` (and every pack's `live_bytes` refreshed). No row can point
    /// into a dead pack again (uploads write new packs; repacks move blobs into new
    /// packs); [`GcRepo::forget_packs`] removes its row once its file is gone.
    pub(crate) async fn drop_dead_packs(
        &self,
        ns: NamespaceId,
        cutoff: i64,
        predict: Option<RetentionSql>,
    ) -> Result<Vec<(PackId, u64)>, DbError> {
        let keep = surviving(cutoff, predict);
        let doomed = format!(
            "p.namespace_id = $1 AND (p.state = 'dead' OR ({OLD_PACK} \
             AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.namespace_id = p.namespace_id \
             AND c.pack_id = p.id{keep})))"
        );
        let select = format!("SELECT p.id, p.size FROM packs p WHERE {doomed} ORDER BY p.id");
        if predict.is_some() {
            let rows = sqlx::query(AssertSqlSafe(select))
                .bind(ns.to_hex())
                .bind(cutoff)
                .fetch_all(self.sql.pool())
                .await?;
            return rows.iter().map(pack_size).collect();
        }
        let (mut tx, guard) = self.sql.begin_ns(ns).await?;
        let refresh = format!(
            "UPDATE packs SET live_bytes = {} WHERE namespace_id = $1",
            live_bytes("").replace("p.", "packs.")
        );
        sqlx::query(AssertSqlSafe(refresh))
            .bind(ns.to_hex())
            .execute(&mut *tx)
            .await?;
        let mark = format!(
            "UPDATE packs SET state = 'dead' WHERE id IN (SELECT p.id FROM packs p WHERE {doomed}) \
             AND namespace_id = $1"
        );
        sqlx::query(AssertSqlSafe(mark))
            .bind(ns.to_hex())
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT id, size FROM packs WHERE namespace_id = $1 AND state = 'dead' ORDER BY id",
        )
        .bind(ns.to_hex())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        drop(guard);
        rows.iter().map(pack_size).collect()
    }

    /// Removes the rows of dead packs whose files are gone.
    pub(crate) async fn forget_packs(
        &self,
        ns: NamespaceId,
        ids: &[PackId],
    ) -> Result<(), DbError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (mut tx, guard) = self.sql.begin_ns(ns).await?;
        for batch in ids.chunks(IN_BATCH) {
            let sql = format!(
                "DELETE FROM packs WHERE namespace_id = $1 AND state = 'dead' AND id IN ({})",
                placeholders(2, batch.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
            for id in batch {
                q = q.bind(id.to_hex());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        drop(guard);
        Ok(())
    }

    /// Rows of loose chunks (no pack) in `ns` that survive (see [`GcRepo::drop_dead_packs`]
    /// for `predict`).
    pub(crate) async fn count_loose(
        &self,
        ns: NamespaceId,
        cutoff: i64,
        predict: Option<RetentionSql>,
    ) -> Result<u64, DbError> {
        let sql = format!(
            "SELECT COUNT(*) FROM chunks c WHERE c.namespace_id = $1 AND c.pack_id IS NULL{}",
            surviving(cutoff, predict)
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .fetch_one(self.sql.pool())
            .await?;
        count(&row, 0)
    }

    /// Takes the namespace lock and returns it with those of `ids` that have no pack
    /// row: while it is held no upload can record one, so their files may be deleted.
    pub(crate) async fn lock_unrecorded_packs(
        &self,
        ns: NamespaceId,
        ids: &[PackId],
    ) -> Result<(NsLock, Vec<PackId>), DbError> {
        let (mut tx, guard) = self.sql.begin_ns(ns).await?;
        let present = recorded_among(&mut tx, ns, ids).await?;
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
        let mut conn = self.sql.pool().acquire().await?;
        recorded_among(&mut conn, ns, ids).await
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
        insert_pack_row(&mut tx, ns, pack, live, now, false).await?;
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

    /// Live packs of `ns` worth repacking, with their sizes and surviving live bytes
    /// (see [`GcRepo::drop_dead_packs`] for `predict`), in id order: those with live
    /// bytes but under `min_live` of their size, and those smaller than `small` bytes
    /// (to be combined into fuller packs).
    pub(crate) async fn repack_candidates(
        &self,
        ns: NamespaceId,
        min_live: f64,
        small: u64,
        cutoff: i64,
        predict: Option<RetentionSql>,
    ) -> Result<Vec<RepackCandidate>, DbError> {
        // live * 1000 < blob bytes * permille: integer arithmetic on both databases.
        // The blob bytes are the pack less its header, trailer and footer (what a
        // copy cannot save), so that a small pack full of live blobs is not "dead".
        let permille = (min_live.clamp(0.0, 1.0) * 1000.0).round() as i64;
        let live = live_bytes(&surviving(cutoff, predict));
        let framing = pack::PACK_HEADER_LEN + 4 + pack::PACK_FOOTER_LEN;
        let dead = format!(
            "live * 1000 < (size - {framing} - {} * blobs) * $2",
            pack::PACK_ENTRY_LEN
        );
        let sql = format!(
            "SELECT id, size, live, CASE WHEN {dead} THEN 1 ELSE 0 END FROM \
             (SELECT p.id, p.size, p.blobs, {live} AS live FROM packs p \
             WHERE p.namespace_id = $1 AND p.state = 'live') q \
             WHERE live > 0 AND ({dead} OR size < $3) ORDER BY id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ns.to_hex())
            .bind(permille)
            .bind(i64_of(small))
            .fetch_all(self.sql.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let (id, size) = pack_size(r)?;
                Ok(RepackCandidate {
                    id,
                    size,
                    live: count(r, 2)?,
                    mostly_dead: count(r, 3)? != 0,
                })
            })
            .collect()
    }

    /// Adopts a pack found in the store (`fsync-gc verify --rebuild-index`), in one
    /// transaction under the namespace lock: records it if it has no row, records a
    /// chunk row pointing into it for each of its blobs that has none, and points into
    /// it each row that names a pack with no row. Returns (rows recorded, rows moved).
    pub(crate) async fn adopt_pack(
        &self,
        ns: NamespaceId,
        pack: &NewPack,
        modified: i64,
    ) -> Result<(u64, u64), DbError> {
        let (mut tx, guard) = self.sql.begin_ns(ns).await?;
        insert_pack_row(&mut tx, ns, pack, 0, modified, true).await?;
        let (mut recorded, mut moved) = (0, 0);
        for e in &pack.entries {
            let r = sqlx::query(
                "INSERT INTO chunks (namespace_id, id, stored_size, created_at, last_touched, \
                 pack_id, pack_offset) VALUES ($1, $2, $3, $4, $4, $5, $6) \
                 ON CONFLICT (namespace_id, id) DO NOTHING",
            )
            .bind(ns.to_hex())
            .bind(e.id.to_hex())
            .bind(i64::from(e.len))
            .bind(modified)
            .bind(pack.id.to_hex())
            .bind(i64_of(e.offset))
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 1 {
                recorded += 1;
                continue;
            }
            let r = sqlx::query(
                "UPDATE chunks SET pack_id = $3, pack_offset = $4, stored_size = $5 \
                 WHERE namespace_id = $1 AND id = $2 AND pack_id IS NOT NULL AND NOT EXISTS \
                 (SELECT 1 FROM packs p WHERE p.namespace_id = chunks.namespace_id \
                 AND p.id = chunks.pack_id)",
            )
            .bind(ns.to_hex())
            .bind(e.id.to_hex())
            .bind(pack.id.to_hex())
            .bind(i64_of(e.offset))
            .bind(i64::from(e.len))
            .execute(&mut *tx)
            .await?;
            moved += r.rows_affected();
        }
        tx.commit().await?;
        drop(guard);
        Ok((recorded, moved))
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
                let going = r.try_get::<String, _>(2)? != "live";
                Ok(PackRow { id, size, going })
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

/// Those of `ids` that have a pack row in `ns`, read on `conn` (a transaction's, to
/// read under its lock).
async fn recorded_among(
    conn: &mut sqlx::AnyConnection,
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
        for row in q.fetch_all(&mut *conn).await? {
            out.insert(parse::<PackId>(&row.try_get::<String, _>(0)?, "pack id")?);
        }
    }
    Ok(out)
}
