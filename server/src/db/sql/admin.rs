//! The operator's view of accounts: usage, disabling, quotas, deletion.

use async_trait::async_trait;
use fsync_common::{DeviceId, NamespaceId, UserId};
use sqlx::Row;

use super::rows::{ids, parse};
use super::SqlRepo;
use crate::db::{AdminRepo, DbError, DeletedUser, Usage, UserSummary};

/// Stored bytes of the namespaces `$1` owns.
const USED_BY_OWNER: &str = "SELECT CAST(COALESCE(SUM(c.stored_size), 0) AS BIGINT) FROM chunks c \
     JOIN namespaces n ON n.id = c.namespace_id WHERE n.owner_id = $1";

/// A byte count read from the database, never negative.
fn bytes_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Column `i` of `row`, a count or a sum.
fn count(row: &sqlx::any::AnyRow, i: usize) -> Result<u64, DbError> {
    Ok(bytes_of(row.try_get::<i64, _>(i)?))
}

/// A quota read from the database.
fn quota_of_row(v: Option<i64>) -> Option<u64> {
    v.map(bytes_of)
}

#[async_trait]
impl AdminRepo for SqlRepo {
    async fn users(&self, username: Option<&str>) -> Result<Vec<UserSummary>, DbError> {
        // One pass per table, grouped by owner, rather than one query per account.
        let rows = sqlx::query(
            "SELECT u.id, u.username, u.email, u.created_at, u.disabled, u.quota_bytes, \
             (SELECT CAST(COALESCE(SUM(c.stored_size), 0) AS BIGINT) FROM chunks c JOIN namespaces n \
              ON n.id = c.namespace_id WHERE n.owner_id = u.id), \
             (SELECT COUNT(*) FROM files f JOIN namespaces n ON n.id = f.namespace_id \
              WHERE n.owner_id = u.id AND f.is_deleted = 0), \
             (SELECT CAST(COALESCE(SUM(f.size), 0) AS BIGINT) FROM files f JOIN namespaces n \
              ON n.id = f.namespace_id WHERE n.owner_id = u.id AND f.is_deleted = 0), \
             (SELECT COUNT(*) FROM devices d WHERE d.user_id = u.id AND d.revoked = 0), \
             (SELECT MAX(d.last_seen) FROM devices d WHERE d.user_id = u.id) \
             FROM users u WHERE ($1 IS NULL OR u.username = $1) ORDER BY u.username",
        )
        .bind(username)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let email: String = r.try_get(2)?;
                Ok(UserSummary {
                    id: parse(&r.try_get::<String, _>(0)?, "user id")?,
                    username: r.try_get(1)?,
                    email: (!email.is_empty()).then_some(email),
                    created_at: r.try_get(3)?,
                    disabled: r.try_get::<i64, _>(4)? != 0,
                    quota_bytes: quota_of_row(r.try_get(5)?),
                    stored_bytes: count(r, 6)?,
                    files: count(r, 7)?,
                    file_bytes: count(r, 8)?,
                    devices: count(r, 9)?,
                    last_seen: r.try_get(10)?,
                })
            })
            .collect()
    }

    async fn set_disabled(&self, user: UserId, disabled: bool) -> Result<Vec<DeviceId>, DbError> {
        let _guard = self.write_guard().await;
        let r = sqlx::query("UPDATE users SET disabled = $2 WHERE id = $1")
            .bind(user.to_hex())
            .bind(i64::from(disabled))
            .execute(&self.pool)
            .await?;
        if r.rows_affected() != 1 {
            return Err(DbError::NotFound("user"));
        }
        let rows = sqlx::query("SELECT id FROM devices WHERE user_id = $1 AND revoked = 0")
            .bind(user.to_hex())
            .fetch_all(&self.pool)
            .await?;
        ids(&rows, "device id")
    }

    async fn set_quota(&self, user: UserId, quota: Option<u64>) -> Result<(), DbError> {
        let _guard = self.write_guard().await;
        let quota = quota.map(|q| i64::try_from(q).unwrap_or(i64::MAX));
        let r = sqlx::query("UPDATE users SET quota_bytes = $2 WHERE id = $1")
            .bind(user.to_hex())
            .bind(quota)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() != 1 {
            return Err(DbError::NotFound("user"));
        }
        Ok(())
    }

    async fn delete_user(&self, user: UserId) -> Result<DeletedUser, DbError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let uid = user.to_hex();
        let rows = sqlx::query("SELECT id FROM devices WHERE user_id = $1")
            .bind(&uid)
            .fetch_all(&mut *tx)
            .await?;
        let devices: Vec<DeviceId> = ids(&rows, "device id")?;
        // Its namespaces first (locked, so that no commit runs into them meanwhile),
        // children before parents.
        let owned = "SELECT id FROM namespaces WHERE owner_id = $1";
        let rows = sqlx::query(owned).bind(&uid).fetch_all(&mut *tx).await?;
        let namespaces: Vec<NamespaceId> = ids(&rows, "namespace id")?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE namespaces SET last_seq = last_seq WHERE id IN ({owned})"
        )))
        .bind(&uid)
        .execute(&mut *tx)
        .await?;
        let versions = format!(
            "SELECT v.id FROM file_versions v JOIN files f ON f.id = v.file_id \
             WHERE f.namespace_id IN ({owned})"
        );
        for sql in [
            format!("DELETE FROM version_chunks WHERE version_id IN ({versions})"),
            format!("DELETE FROM version_pages WHERE namespace_id IN ({owned})"),
            format!("DELETE FROM page_chunks WHERE namespace_id IN ({owned})"),
            format!("DELETE FROM manifest_pages WHERE namespace_id IN ({owned})"),
            format!("DELETE FROM changes WHERE namespace_id IN ({owned})"),
            format!("DELETE FROM file_versions WHERE id IN ({versions})"),
            format!("DELETE FROM files WHERE namespace_id IN ({owned})"),
            format!("DELETE FROM chunks WHERE namespace_id IN ({owned})"),
            format!("DELETE FROM packs WHERE namespace_id IN ({owned})"),
            format!("DELETE FROM idempotency WHERE namespace_id IN ({owned})"),
            format!("DELETE FROM namespace_members WHERE namespace_id IN ({owned})"),
            "DELETE FROM namespace_members WHERE user_id = $1".to_owned(),
            "DELETE FROM namespaces WHERE owner_id = $1".to_owned(),
            "DELETE FROM refresh_tokens WHERE user_id = $1".to_owned(),
            "DELETE FROM devices WHERE user_id = $1".to_owned(),
            "DELETE FROM users WHERE id = $1".to_owned(),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&uid)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(DeletedUser {
            devices,
            namespaces,
        })
    }

    async fn quota_of(&self, ns: NamespaceId) -> Result<Option<Usage>, DbError> {
        let row = sqlx::query(
            "SELECT u.id, u.quota_bytes FROM namespaces n JOIN users u ON u.id = n.owner_id \
             WHERE n.id = $1",
        )
        .bind(ns.to_hex())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let user: UserId = parse(&row.try_get::<String, _>(0)?, "user id")?;
        let quota_bytes = quota_of_row(row.try_get(1)?);
        let used_bytes = match quota_bytes {
            Some(_) => self.used_by(user).await?,
            None => 0,
        };
        Ok(Some(Usage {
            user,
            used_bytes,
            quota_bytes,
        }))
    }

    async fn usage_of(&self, user: UserId) -> Result<Usage, DbError> {
        let row = sqlx::query("SELECT quota_bytes FROM users WHERE id = $1")
            .bind(user.to_hex())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(DbError::NotFound("user"))?;
        Ok(Usage {
            user,
            used_bytes: self.used_by(user).await?,
            quota_bytes: quota_of_row(row.try_get(0)?),
        })
    }
}

impl SqlRepo {
    /// Stored bytes of the namespaces `user` owns.
    async fn used_by(&self, user: UserId) -> Result<u64, DbError> {
        let row = sqlx::query(USED_BY_OWNER)
            .bind(user.to_hex())
            .fetch_one(&self.pool)
            .await?;
        count(&row, 0)
    }
}
