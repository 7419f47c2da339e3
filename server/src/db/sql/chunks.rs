//! Chunk rows: which chunks a namespace holds, recording uploads, touching.

use async_trait::async_trait;
use std::collections::{HashMap, HashSet};

use fsync_common::{ChunkId, NamespaceId};
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::rows::{i64_of, insert_pack_row, multi_row_values, parse, placeholders};
use super::{SqlRepo, IN_BATCH, TOUCH_SLACK_SECS};
use crate::db::{BlobConfirm, BlobLocation, ChunkRepo, DbError, NewPack};
use fsync_common::PackId;
use fsync_store::pack::PackEntry;

/// `ids` deduplicated, in first-seen order (chunk or page ids).
pub(super) fn unique_ids<T: Copy + Eq + std::hash::Hash>(ids: &[T]) -> Vec<T> {
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
pub(super) async fn absent_chunks(
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

/// Inserts or touches loose chunk rows under the namespace lock, the lock garbage
/// collection deletes rows and blobs under.
pub(super) async fn record(
    repo: &SqlRepo,
    ns: NamespaceId,
    chunks: &[(ChunkId, u64)],
    now: i64,
) -> Result<(), DbError> {
    if chunks.is_empty() {
        return Ok(());
    }
    let (mut tx, _guard) = repo.begin_ns(ns).await?;
    for batch in chunks.chunks(IN_BATCH / 2) {
        let values = multi_row_values("($1, ?, ?, $2, $2)", 2, batch.len());
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
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl ChunkRepo for SqlRepo {
    async fn record_chunks(
        &self,
        ns: NamespaceId,
        chunks: &[(ChunkId, u64)],
        now: i64,
    ) -> Result<(), DbError> {
        record(self, ns, chunks, now).await
    }

    /// [`ChunkRepo::missing_chunks`].
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

    async fn record_pack(
        &self,
        ns: NamespaceId,
        pack: &NewPack,
        now: i64,
        confirm: &dyn BlobConfirm,
    ) -> Result<Vec<ChunkId>, DbError> {
        let (mut tx, _guard) = self.begin_ns(ns).await?;
        let ids: Vec<ChunkId> = pack.entries.iter().map(|e| e.id).collect();
        confirm.confirm(&ids).await.map_err(DbError::Blob)?;
        let present = present_chunks(&mut tx, ns, &ids).await?;
        let (old, new): (Vec<&PackEntry>, Vec<&PackEntry>) = pack
            .entries
            .iter()
            .partition(|e| present.contains_key(&e.id.to_hex()));
        let live: u64 = new.iter().map(|e| u64::from(e.len)).sum();
        insert_pack_row(&mut tx, ns, pack, live, now, false).await?;
        for batch in new.chunks(IN_BATCH / 3) {
            let values = multi_row_values("($1, ?, ?, $2, $2, $3, ?)", 3, batch.len());
            let sql = format!(
                "INSERT INTO chunks (namespace_id, id, stored_size, created_at, last_touched, \
                 pack_id, pack_offset) VALUES {values}"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(ns.to_hex())
                .bind(now)
                .bind(pack.id.to_hex());
            for e in batch {
                q = q
                    .bind(e.id.to_hex())
                    .bind(i64::from(e.len))
                    .bind(i64_of(e.offset));
            }
            q.execute(&mut *tx).await?;
        }
        for batch in old.chunks(IN_BATCH) {
            let sql = format!(
                "UPDATE chunks SET last_touched = $2 WHERE namespace_id = $1 AND id IN ({})",
                placeholders(3, batch.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex()).bind(now);
            for e in batch {
                q = q.bind(e.id.to_hex());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(old.iter().map(|e| e.id).collect())
    }

    async fn locate_chunks(
        &self,
        ns: NamespaceId,
        ids: &[ChunkId],
    ) -> Result<HashMap<ChunkId, BlobLocation>, DbError> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut conn = self.pool.acquire().await?;
        for batch in unique_ids(ids).chunks(IN_BATCH) {
            let sql = format!(
                "SELECT id, stored_size, pack_id, pack_offset FROM chunks \
                 WHERE namespace_id = $1 AND id IN ({})",
                placeholders(2, batch.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
            for id in batch {
                q = q.bind(id.to_hex());
            }
            for row in q.fetch_all(&mut *conn).await? {
                let id: ChunkId = parse(&row.try_get::<String, _>(0)?, "chunk id")?;
                let size = row.try_get::<i64, _>(1)?.max(0) as u64;
                let pack: Option<String> = row.try_get(2)?;
                let location = match pack {
                    None => BlobLocation::Loose { size },
                    Some(pack) => BlobLocation::Packed {
                        pack: parse::<PackId>(&pack, "pack id")?,
                        offset: row
                            .try_get::<Option<i64>, _>(3)?
                            .and_then(|o| u64::try_from(o).ok())
                            .ok_or_else(|| DbError::Corrupt(format!("chunk {id}: no offset")))?,
                        len: u32::try_from(size)
                            .map_err(|_| DbError::Corrupt(format!("chunk {id}: size {size}")))?,
                    },
                };
                out.insert(id, location);
            }
        }
        Ok(out)
    }

    async fn has_chunk(&self, ns: NamespaceId, id: ChunkId) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT 1 FROM chunks WHERE namespace_id = $1 AND id = $2")
            .bind(ns.to_hex())
            .bind(id.to_hex())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}
