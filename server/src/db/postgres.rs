//! PostgreSQL: production and multi-node deployments.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use super::sql::{Dialect, SqlRepo};
use super::{migrate, DbError, MetaRepo};

/// Connects to PostgreSQL at `url` and applies migrations.
pub async fn open_postgres(url: &str) -> Result<Arc<dyn MetaRepo>, DbError> {
    Ok(Arc::new(open_postgres_repo(url).await?))
}

pub(crate) async fn open_postgres_repo(url: &str) -> Result<SqlRepo, DbError> {
    sqlx::any::install_default_drivers();
    let options = AnyConnectOptions::from_str(url)?;
    let pool = AnyPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await?;
    migrate(&pool, Dialect::Postgres).await?;
    Ok(SqlRepo::new(pool, Dialect::Postgres))
}
