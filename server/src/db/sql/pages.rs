//! Manifest pages (`fsync_common::pages`): stored once per namespace, with a
//! `page_chunks` row for each chunk a page lists (the chunks' mark set) and a
//! `version_pages` row for each page a version names (the pages' mark set).

use async_trait::async_trait;
use std::collections::{HashMap, HashSet};

use fsync_common::pages::{self, Page};
use fsync_common::wire::ChunkRef;
use fsync_common::{ChunkId, NamespaceId, PageId};
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::chunks::{absent_chunks, unique_ids};
use super::rows::{i64_of, multi_row_values, placeholders};
use super::{SqlRepo, IN_BATCH, TOUCH_SLACK_SECS};
use crate::db::{DbError, PageRepo};

/// A page id as stored: 32 raw bytes.
pub(in crate::db) fn raw(id: &PageId) -> Vec<u8> {
    id.as_bytes().to_vec()
}

/// A stored page id.
pub(in crate::db) fn page_id(raw: &[u8]) -> Result<PageId, DbError> {
    <[u8; 32]>::try_from(raw)
        .map(PageId::from_bytes)
        .map_err(|_| DbError::Corrupt(format!("a page id of {} bytes", raw.len())))
}

/// One column of the pages among `ids` that `ns` holds, by page: `last_touched`,
/// `entries` or `body` (a name from this file, never from a request).
async fn column<T>(
    conn: &mut AnyConnection,
    ns: NamespaceId,
    ids: &[PageId],
    name: &str,
) -> Result<HashMap<PageId, T>, DbError>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    let mut out = HashMap::new();
    for batch in unique_ids(ids).chunks(IN_BATCH) {
        let sql = format!(
            "SELECT id, {name} FROM manifest_pages WHERE namespace_id = $1 AND id IN ({})",
            placeholders(2, batch.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .persistent(false)
            .bind(ns.to_hex());
        for id in batch {
            q = q.bind(raw(id));
        }
        for row in q.fetch_all(&mut *conn).await? {
            out.insert(
                page_id(&row.try_get::<Vec<u8>, _>(0)?)?,
                row.try_get::<T, _>(1)?,
            );
        }
    }
    Ok(out)
}

/// The `last_touched` of the pages among `ids` recorded in `ns`.
async fn present(
    conn: &mut AnyConnection,
    ns: NamespaceId,
    ids: &[PageId],
) -> Result<HashMap<PageId, i64>, DbError> {
    column(conn, ns, ids, "last_touched").await
}

/// Inserts the pages of `new` that `ns` does not hold yet, with their chunk rows. Runs
/// inside a transaction under the namespace lock, after the caller made sure every
/// chunk they list is recorded. Returns how many were inserted.
pub(super) async fn insert_absent(
    conn: &mut AnyConnection,
    ns: NamespaceId,
    new: &[&Page],
    now: i64,
) -> Result<usize, DbError> {
    let ids: Vec<PageId> = new.iter().map(|p| p.id()).collect();
    let have = present(conn, ns, &unique_ids(&ids)).await?;
    let mut seen = HashSet::new();
    let absent: Vec<&Page> = new
        .iter()
        .copied()
        .filter(|p| !have.contains_key(&p.id()) && seen.insert(p.id()))
        .collect();
    for batch in absent.chunks(IN_BATCH / 4) {
        let values = multi_row_values("($1, ?, ?, ?, ?, $2, $2)", 2, batch.len());
        let sql = format!(
            "INSERT INTO manifest_pages (namespace_id, id, body, entries, size, created_at, last_touched) \
             VALUES {values}"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex()).bind(now);
        for p in batch {
            q = q
                .bind(raw(&p.id()))
                .bind(p.body().to_vec())
                .bind(p.chunks().len() as i64)
                .bind(i64_of(p.size()));
        }
        q.execute(&mut *conn).await?;
    }
    let rows: Vec<(PageId, ChunkId)> = absent
        .iter()
        .flat_map(|p| {
            let ids: Vec<ChunkId> = p.chunks().iter().map(ChunkRef::id).collect();
            unique_ids(&ids).into_iter().map(|c| (p.id(), c))
        })
        .collect();
    for batch in rows.chunks(IN_BATCH / 2) {
        let values = multi_row_values("($1, ?, ?)", 1, batch.len());
        let sql =
            format!("INSERT INTO page_chunks (namespace_id, page_id, chunk_id) VALUES {values}");
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
        for (page, chunk) in batch {
            q = q.bind(raw(page)).bind(chunk.to_hex());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(absent.len())
}

/// Inserts `version_pages` rows: (`file_versions.id`, page).
pub(super) async fn insert_version_refs(
    conn: &mut AnyConnection,
    ns: NamespaceId,
    refs: &[(i64, PageId)],
) -> Result<(), DbError> {
    for batch in refs.chunks(IN_BATCH) {
        let values = multi_row_values("(?, $1, ?)", 1, batch.len());
        let sql = format!(
            "INSERT INTO version_pages (version_id, namespace_id, page_id) VALUES {values}"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex());
        for (version_id, page) in batch {
            q = q.bind(*version_id).bind(raw(page));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The bodies of the pages among `ids` that `ns` holds.
async fn bodies(
    conn: &mut AnyConnection,
    ns: NamespaceId,
    ids: &[PageId],
) -> Result<HashMap<PageId, Vec<u8>>, DbError> {
    column(conn, ns, ids, "body").await
}

/// How many entries the pages of `list` hold in all (a page named twice counts
/// twice), read from their rows without their bodies: the check a commit naming pages
/// passes before its list is assembled. A page `ns` does not hold makes it
/// [`DbError::MissingPages`].
pub(super) async fn entries_of(
    conn: &mut AnyConnection,
    ns: NamespaceId,
    list: &[PageId],
) -> Result<u64, DbError> {
    let ids = unique_ids(list);
    let entries: HashMap<PageId, i64> = column(conn, ns, &ids, "entries").await?;
    let missing: Vec<PageId> = ids
        .into_iter()
        .filter(|id| !entries.contains_key(id))
        .collect();
    if !missing.is_empty() {
        return Err(DbError::MissingPages(missing));
    }
    Ok(list.iter().map(|id| entries[id].max(0) as u64).sum())
}

/// The chunk list of each page list of `lists`, each in file order. A page `ns` does
/// not hold makes it [`DbError::MissingPages`] (every such id, in first-seen order).
pub(super) async fn resolve(
    conn: &mut AnyConnection,
    ns: NamespaceId,
    lists: &[&[PageId]],
) -> Result<Vec<Vec<ChunkRef>>, DbError> {
    let all: Vec<PageId> = lists.iter().flat_map(|l| l.iter().copied()).collect();
    let found = bodies(conn, ns, &all).await?;
    let missing: Vec<PageId> = unique_ids(&all)
        .into_iter()
        .filter(|id| !found.contains_key(id))
        .collect();
    if !missing.is_empty() {
        return Err(DbError::MissingPages(missing));
    }
    let mut decoded: HashMap<PageId, Vec<ChunkRef>> = HashMap::with_capacity(found.len());
    for (id, body) in &found {
        let chunks = pages::decode(body)
            .map_err(|e| DbError::Corrupt(format!("manifest page {id}: {e}")))?;
        decoded.insert(*id, chunks);
    }
    Ok(lists
        .iter()
        .map(|l| {
            l.iter()
                .flat_map(|id| decoded[id].iter().copied())
                .collect()
        })
        .collect())
}

#[async_trait]
impl PageRepo for SqlRepo {
    async fn missing_pages(
        &self,
        ns: NamespaceId,
        ids: &[PageId],
        now: i64,
    ) -> Result<Vec<PageId>, DbError> {
        let ids = unique_ids(ids);
        let have = present(&mut *self.pool.acquire().await?, ns, &ids).await?;
        // As `missing_chunks`: a page about to be named by a commit is kept by GC for
        // the grace period; one touched within TOUCH_SLACK_SECS is left as it is.
        let cutoff = now.saturating_sub(TOUCH_SLACK_SECS);
        let stale: Vec<PageId> = have
            .iter()
            .filter(|(_, t)| **t < cutoff)
            .map(|(id, _)| *id)
            .collect();
        if !stale.is_empty() {
            let _guard = self.write_guard().await;
            for batch in stale.chunks(IN_BATCH) {
                let sql = format!(
                    "UPDATE manifest_pages SET last_touched = $2 WHERE namespace_id = $1 \
                     AND last_touched < $3 AND id IN ({})",
                    placeholders(4, batch.len())
                );
                let mut q = sqlx::query(AssertSqlSafe(sql))
                    .bind(ns.to_hex())
                    .bind(now)
                    .bind(cutoff);
                for id in batch {
                    q = q.bind(raw(id));
                }
                q.execute(&self.pool).await?;
            }
        }
        Ok(ids
            .into_iter()
            .filter(|id| !have.contains_key(id))
            .collect())
    }

    async fn store_pages(&self, ns: NamespaceId, new: &[Page], now: i64) -> Result<usize, DbError> {
        if new.is_empty() {
            return Ok(0);
        }
        let (mut tx, _guard) = self.begin_ns(ns).await?;
        let chunks: Vec<ChunkId> = new
            .iter()
            .flat_map(|p| p.chunks().iter().map(ChunkRef::id))
            .collect();
        let missing = absent_chunks(&mut tx, ns, &chunks).await?;
        if !missing.is_empty() {
            return Err(DbError::MissingChunks(missing));
        }
        let refs: Vec<&Page> = new.iter().collect();
        let stored = insert_absent(&mut tx, ns, &refs, now).await?;
        // Pages that were there already: touched, as an upload of a chunk touches it.
        let again = unique_ids(&new.iter().map(Page::id).collect::<Vec<_>>());
        for batch in again.chunks(IN_BATCH) {
            let sql = format!(
                "UPDATE manifest_pages SET last_touched = $2 WHERE namespace_id = $1 \
                 AND last_touched < $2 AND id IN ({})",
                placeholders(3, batch.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ns.to_hex()).bind(now);
            for id in batch {
                q = q.bind(raw(id));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn page_bodies(
        &self,
        ns: NamespaceId,
        ids: &[PageId],
    ) -> Result<Vec<(PageId, Vec<u8>)>, DbError> {
        let mut found = bodies(&mut *self.pool.acquire().await?, ns, ids).await?;
        Ok(unique_ids(ids)
            .into_iter()
            .filter_map(|id| found.remove(&id).map(|b| (id, b)))
            .collect())
    }
}
