//! Retention: which versions and tombstoned files a policy removes, counted (dry run)
//! or removed under the namespace lock.

use fsync_common::NamespaceId;
use sqlx::{AssertSqlSafe, Row};

use super::{count, GcRepo};
use crate::db::sql::{placeholders, Tx, IN_BATCH};
use crate::db::DbError;

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
    pub(super) fn removed_version(self) -> Option<String> {
        match (self.prunable_version(), self.expired_tombstone()) {
            (None, None) => None,
            (Some(a), None) | (None, Some(a)) => Some(a),
            (Some(a), Some(b)) => Some(format!("({a} OR {b})")),
        }
    }
}

/// What one retention batch removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pruned {
    /// Versions removed.
    pub(crate) versions: u64,
    /// Files removed whole (expired tombstones).
    pub(crate) files: u64,
}

/// Deletes the `version_pages` rows of the versions `ids`, by the keys their page lists
/// give (the table has no index on the version). Inside the caller's transaction, under
/// the namespace lock, before the versions themselves go.
async fn delete_version_pages(tx: &mut Tx, ids: &[i64]) -> Result<(), DbError> {
    for batch in ids.chunks(IN_BATCH) {
        let sql = format!(
            "SELECT v.id, v.pages, f.namespace_id FROM file_versions v JOIN files f ON f.id = v.file_id \
             WHERE v.pages IS NOT NULL AND v.id IN ({})",
            placeholders(1, batch.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in batch {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut **tx).await? {
            let version: i64 = row.try_get(0)?;
            let raw: Vec<u8> = row.try_get(1)?;
            let ns: String = row.try_get(2)?;
            let pages = fsync_common::pages::unpack_ids(&raw)
                .ok_or_else(|| DbError::Corrupt(format!("page list of {} bytes", raw.len())))?;
            for part in pages.chunks(IN_BATCH) {
                let sql = format!(
                    "DELETE FROM version_pages WHERE namespace_id = $1 AND version_id = $2 \
                     AND page_id IN ({})",
                    placeholders(3, part.len())
                );
                let mut q = sqlx::query(AssertSqlSafe(sql))
                    .bind(ns.as_str())
                    .bind(version);
                for p in part {
                    q = q.bind(p.as_bytes().to_vec());
                }
                q.execute(&mut **tx).await?;
            }
        }
    }
    Ok(())
}

impl GcRepo {
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
        let sql = format!("SELECT id FROM file_versions WHERE file_id IN ({list})");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in &ids {
            q = q.bind(id.as_str());
        }
        let versions: Vec<i64> = q
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        delete_version_pages(&mut tx, &versions).await?;
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
        delete_version_pages(&mut tx, &ids).await?;
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
