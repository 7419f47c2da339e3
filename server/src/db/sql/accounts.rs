//! Users, devices, refresh tokens and namespace membership.

use async_trait::async_trait;
use fsync_common::wire::{DeviceInfo, KdfParams, NamespaceGrant};
use fsync_common::{DeviceId, NamespaceId, UserId};
use sqlx::Row;

use super::rows::{json, parse, to_json};
use super::SqlRepo;
use crate::db::{AccountRepo, DbError, DeviceStatus, NewUser, Rotation, TokenOwner, UserRecord};
use crate::domain::roles::Role;

#[async_trait]
impl AccountRepo for SqlRepo {
    async fn create_user(&self, user: NewUser, now: i64) -> Result<(), DbError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let taken = sqlx::query("SELECT 1 FROM users WHERE username = $1")
            .bind(&user.username)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(DbError::UsernameTaken);
        }
        let inserted = sqlx::query(
            "INSERT INTO users (id, username, email, auth_hash, kdf, wrapped_account_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(user.id.to_hex())
        .bind(&user.username)
        .bind(user.email.as_deref().unwrap_or(""))
        .bind(&user.auth_hash)
        .bind(to_json(&user.kdf))
        .bind(&user.wrapped_account_key)
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(sqlx::Error::Database(e)) = &inserted {
            if e.is_unique_violation() {
                return Err(DbError::UsernameTaken);
            }
        }
        inserted?;
        sqlx::query(
            "INSERT INTO namespaces (id, owner_id, last_seq, created_at) VALUES ($1, $2, 0, $3)",
        )
        .bind(user.namespace.to_hex())
        .bind(user.id.to_hex())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO namespace_members (namespace_id, user_id, role, wrapped_key) VALUES ($1, $2, 'owner', $3)")
            .bind(user.namespace.to_hex())
            .bind(user.id.to_hex())
            .bind(&user.wrapped_namespace_key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_user(&self, username: &str) -> Result<Option<UserRecord>, DbError> {
        let row = sqlx::query(
            "SELECT id, username, auth_hash, kdf, wrapped_account_key, disabled FROM users \
             WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(UserRecord {
                id: parse(&r.try_get::<String, _>(0)?, "user id")?,
                username: r.try_get(1)?,
                auth_hash: r.try_get(2)?,
                kdf: json::<KdfParams>(&r.try_get::<String, _>(3)?, "kdf")?,
                wrapped_account_key: r.try_get(4)?,
                disabled: r.try_get::<i64, _>(5)? != 0,
            })
        })
        .transpose()
    }

    async fn register_device(
        &self,
        user: UserId,
        device: Option<DeviceId>,
        new_id: DeviceId,
        name: &str,
        now: i64,
    ) -> Result<DeviceId, DbError> {
        let _guard = self.write_guard().await;
        if let Some(d) = device {
            let r = sqlx::query("UPDATE devices SET name = $3, last_seen = $4 WHERE id = $1 AND user_id = $2 AND revoked = 0")
                .bind(d.to_hex())
                .bind(user.to_hex())
                .bind(name)
                .bind(now)
                .execute(&self.pool)
                .await?;
            if r.rows_affected() == 1 {
                return Ok(d);
            }
        }
        sqlx::query("INSERT INTO devices (id, user_id, name, created_at, last_seen, revoked) VALUES ($1, $2, $3, $4, $4, 0)")
            .bind(new_id.to_hex())
            .bind(user.to_hex())
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(new_id)
    }

    async fn device_active(
        &self,
        user: UserId,
        device: DeviceId,
        now: i64,
    ) -> Result<DeviceStatus, DbError> {
        let row = sqlx::query(
            "SELECT d.last_seen, u.disabled FROM devices d JOIN users u ON u.id = d.user_id \
             WHERE d.id = $1 AND d.user_id = $2 AND d.revoked = 0",
        )
        .bind(device.to_hex())
        .bind(user.to_hex())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(DeviceStatus::Revoked);
        };
        if row.try_get::<i64, _>(1)? != 0 {
            return Ok(DeviceStatus::Disabled);
        }
        // Record activity at most once a minute: a write per request would serialize
        // every reader behind SQLite's single writer.
        if row.try_get::<i64, _>(0)? < now - 60 {
            let _guard = self.write_guard().await;
            sqlx::query("UPDATE devices SET last_seen = $2 WHERE id = $1")
                .bind(device.to_hex())
                .bind(now)
                .execute(&self.pool)
                .await?;
        }
        Ok(DeviceStatus::Active)
    }

    async fn list_devices(&self, user: UserId) -> Result<Vec<DeviceInfo>, DbError> {
        let rows = sqlx::query("SELECT id, name, created_at, last_seen, revoked FROM devices WHERE user_id = $1 ORDER BY created_at, id")
            .bind(user.to_hex())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DeviceInfo {
                    id: parse(&r.try_get::<String, _>(0)?, "device id")?,
                    name: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                    last_seen: r.try_get(3)?,
                    revoked: r.try_get::<i64, _>(4)? != 0,
                })
            })
            .collect()
    }

    async fn revoke_device(&self, user: UserId, device: DeviceId) -> Result<bool, DbError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE devices SET revoked = 1 WHERE id = $1 AND user_id = $2")
            .bind(device.to_hex())
            .bind(user.to_hex())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE device_id = $1 AND user_id = $2")
            .bind(device.to_hex())
            .bind(user.to_hex())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_refresh(
        &self,
        token_hash: &str,
        owner: TokenOwner,
        expires_at: i64,
        now: i64,
    ) -> Result<(), DbError> {
        let _guard = self.write_guard().await;
        let mut conn = self.pool.acquire().await?;
        // A login starts a family: the first token's hash names it.
        insert_token(&mut conn, token_hash, token_hash, owner, expires_at, now).await
    }

    async fn rotate_refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        expires_at: i64,
        now: i64,
        retry_grace: i64,
    ) -> Result<Rotation, DbError> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT t.user_id, t.device_id, t.expires_at, t.family, t.rotated_at, \
             (SELECT CAST(CASE WHEN s.rotated_at IS NULL THEN 1 ELSE 0 END AS BIGINT) \
              FROM refresh_tokens s WHERE s.token_hash = t.successor_hash), \
             (SELECT CAST(1 AS BIGINT) FROM devices d \
              WHERE d.id = t.device_id AND d.user_id = t.user_id AND d.revoked = 0), \
             (SELECT u.disabled FROM users u WHERE u.id = t.user_id) \
             FROM refresh_tokens t WHERE t.token_hash = $1",
        )
        .bind(old_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Rotation::Invalid);
        };
        let owner = TokenOwner {
            user: parse(&row.try_get::<String, _>(0)?, "user id")?,
            device: parse(&row.try_get::<String, _>(1)?, "device id")?,
        };
        let family: String = row.try_get(3)?;
        let rotated_at: Option<i64> = row.try_get(4)?;
        let successor_unused = row.try_get::<Option<i64>, _>(5)? == Some(1);
        let active = row.try_get::<Option<i64>, _>(6)?.is_some();
        if row.try_get::<Option<i64>, _>(7)?.unwrap_or(0) != 0 {
            // Checked before anything changes: a renewal refused now must not count as
            // a reuse of the token once the account is enabled again.
            return Ok(Rotation::Disabled(owner));
        }
        if row.try_get::<i64, _>(2)? <= now || !active {
            // A stale token (and its expired relatives) goes.
            sqlx::query(
                "DELETE FROM refresh_tokens WHERE token_hash = $1 OR (family = $2 AND expires_at <= $3)",
            )
            .bind(old_hash)
            .bind(&family)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Rotation::Invalid);
        }
        match rotated_at {
            Some(at) if !(successor_unused && now - at < retry_grace) => {
                sqlx::query("DELETE FROM refresh_tokens WHERE family = $1")
                    .bind(&family)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(Rotation::Reused(owner));
            }
            Some(_) => {
                // The same rotation retried: its unused successor is rotated out too.
                sqlx::query(
                    "UPDATE refresh_tokens SET rotated_at = $2, successor_hash = $3 \
                     WHERE token_hash = (SELECT successor_hash FROM refresh_tokens WHERE token_hash = $1)",
                )
                .bind(old_hash)
                .bind(now)
                .bind(new_hash)
                .execute(&mut *tx)
                .await?;
            }
            None => {}
        }
        sqlx::query(
            "UPDATE refresh_tokens SET rotated_at = COALESCE(rotated_at, $2), successor_hash = $3 \
             WHERE token_hash = $1",
        )
        .bind(old_hash)
        .bind(now)
        .bind(new_hash)
        .execute(&mut *tx)
        .await?;
        insert_token(&mut tx, new_hash, &family, owner, expires_at, now).await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE family = $1 AND expires_at <= $2")
            .bind(&family)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Rotation::Rotated(owner))
    }

    async fn delete_refresh(&self, token_hash: &str, owner: TokenOwner) -> Result<bool, DbError> {
        let _guard = self.write_guard().await;
        let r = sqlx::query(
            "DELETE FROM refresh_tokens WHERE family = (SELECT family FROM refresh_tokens \
             WHERE token_hash = $1 AND user_id = $2 AND device_id = $3)",
        )
        .bind(token_hash)
        .bind(owner.user.to_hex())
        .bind(owner.device.to_hex())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn namespaces_of(&self, user: UserId) -> Result<Vec<NamespaceGrant>, DbError> {
        let rows = sqlx::query(
            "SELECT m.namespace_id, m.role, m.wrapped_key FROM namespace_members m \
             JOIN namespaces n ON n.id = m.namespace_id WHERE m.user_id = $1 ORDER BY n.created_at, n.id",
        )
        .bind(user.to_hex())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NamespaceGrant {
                    id: parse(&r.try_get::<String, _>(0)?, "namespace id")?,
                    role: r.try_get(1)?,
                    wrapped_key: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// The user's role in a namespace: `None` when not a member, or when the stored role
    /// is not one this server knows (logged as an error: no access rather than a guess).
    async fn role_in(&self, user: UserId, ns: NamespaceId) -> Result<Option<Role>, DbError> {
        let row = sqlx::query(
            "SELECT role FROM namespace_members WHERE namespace_id = $1 AND user_id = $2",
        )
        .bind(ns.to_hex())
        .bind(user.to_hex())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get(0)?;
        let role = Role::from_db(&stored);
        if role.is_none() {
            tracing::error!(namespace = %ns, user = %user, role = %stored, "unknown role in namespace_members; access refused");
        }
        Ok(role)
    }
}

/// Stores a refresh token of `family`.
async fn insert_token(
    conn: &mut sqlx::AnyConnection,
    token_hash: &str,
    family: &str,
    owner: TokenOwner,
    expires_at: i64,
    now: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, user_id, device_id, expires_at, created_at, family) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token_hash)
    .bind(owner.user.to_hex())
    .bind(owner.device.to_hex())
    .bind(expires_at)
    .bind(now)
    .bind(family)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
