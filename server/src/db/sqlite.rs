//! SQLite: the embedded, zero-set-up default. One file in the data directory, WAL mode.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::Executor;

use super::sql::{Dialect, SqlRepo};
use super::{migrate, DbError, MetaRepo};

/// Opens (creating if needed) the SQLite database at `path` and applies migrations.
pub async fn open_sqlite(path: &Path) -> Result<Arc<dyn MetaRepo>, DbError> {
    let repo = open_sqlite_repo(path).await?;
    Ok(Arc::new(repo))
}

pub(crate) async fn open_sqlite_repo(path: &Path) -> Result<SqlRepo, DbError> {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let options = AnyConnectOptions::from_str(&url)?;
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                )
                .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    migrate(&pool, Dialect::Sqlite).await?;
    Ok(SqlRepo::new(pool, Dialect::Sqlite))
}
