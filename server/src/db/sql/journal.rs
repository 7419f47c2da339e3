//! The change journal: the sync cursor's source.

use async_trait::async_trait;
use fsync_common::wire::{Change, ChangesResponse};
use fsync_common::{NamespaceId, Seq, SyncPath};
use sqlx::{AssertSqlSafe, Row};

use super::rows::{file_meta, i64_of, parse, FILE_COLS};
use super::SqlRepo;
use crate::db::DbError;
use crate::db::JournalRepo;

#[async_trait]
impl JournalRepo for SqlRepo {
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
