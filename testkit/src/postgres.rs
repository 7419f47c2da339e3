//! Scratch PostgreSQL databases: one fresh, empty database per test (or benchmark
//! run), created next to the one a base URL names, whose role needs `CREATEDB`. The
//! base URL of the tests is `FSYNC_TEST_DATABASE_URL` ([`test_database_url`]);
//! `scripts/postgres.sh` prints one and drops the scratch databases (`fsync_t_…`) that
//! earlier runs left. Also SQL run on a test's database, PostgreSQL or SQLite
//! ([`execute`], [`rows`]).

use std::future::Future;

use anyhow::Context as _;
use sqlx::Connection as _;

/// The environment variable with the base URL of the tests' PostgreSQL.
pub const TEST_DATABASE_URL: &str = "FSYNC_TEST_DATABASE_URL";
/// How the names of the tests' scratch databases start (`scripts/postgres.sh` drops
/// `fsync_t_<hex>` databases).
pub const SCRATCH_PREFIX: &str = "fsync_t_";

/// The base URL of `FSYNC_TEST_DATABASE_URL`; `None` when it is unset or empty, which
/// fails when `CI` is set (CI must never skip the PostgreSQL tests silently).
pub fn test_database_url() -> Option<String> {
    match std::env::var(TEST_DATABASE_URL) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but {TEST_DATABASE_URL} is not: the PostgreSQL tests must run in CI"
            );
            None
        }
    }
}

/// A fresh database name, `<prefix><12 hex digits>` (for a database a test lets the
/// code under test create).
pub fn scratch_name(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 6]>()))
}

/// A fresh database made next to the one a base URL names. Nothing drops it on its
/// own: [`ScratchDatabase::drop_database`] does, or the next `scripts/postgres.sh`.
#[derive(Debug, Clone)]
pub struct ScratchDatabase {
    url: String,
    name: String,
    base: String,
}

impl ScratchDatabase {
    /// Creates `fsync_t_<12 hex digits>` next to the database `base` names.
    pub async fn create(base: &str) -> anyhow::Result<Self> {
        Self::create_with_prefix(base, SCRATCH_PREFIX).await
    }

    /// Creates `<prefix><12 hex digits>` next to the database `base` names.
    pub async fn create_with_prefix(base: &str, prefix: &str) -> anyhow::Result<Self> {
        let name = scratch_name(prefix);
        let url = with_database(base, &name)?;
        execute(base, &format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating the database {name} (the role needs CREATEDB)"))?;
        Ok(Self {
            url,
            name,
            base: base.to_owned(),
        })
    }

    /// [`ScratchDatabase::create`] from code that is not async (or is, but may not
    /// block its runtime): on a thread of its own, with its own runtime.
    pub fn create_blocking(base: &str) -> anyhow::Result<Self> {
        let base = base.to_owned();
        blocking(async move { Self::create(&base).await })
    }

    /// Its URL (the base URL's, naming this database).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database, cutting the connections that are still open to it.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        execute(&self.base, &sql)
            .await
            .with_context(|| format!("dropping the database {}", self.name))
    }

    /// [`ScratchDatabase::drop_database`] from code that is not async (e.g. `Drop`
    /// inside a test's runtime).
    pub fn drop_database_blocking(self) -> anyhow::Result<()> {
        blocking(self.drop_database())
    }
}

/// Runs `sql` (one statement or several) on the database `url` names.
pub async fn execute(url: &str, sql: &str) -> anyhow::Result<()> {
    let mut conn = connect(url).await?;
    let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    done.with_context(|| format!("running {sql}"))?;
    Ok(())
}

/// Runs the query `sql` on the database `url` names (PostgreSQL or SQLite): its rows,
/// every column as text (empty where a column is not text: cast it in the query).
pub async fn rows(url: &str, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    use sqlx::Row as _;
    let mut conn = connect(url).await?;
    let found = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut conn)
        .await;
    let _ = conn.close().await;
    let text = |r: &sqlx::any::AnyRow, i| r.try_get::<String, _>(i).unwrap_or_default();
    Ok(found
        .with_context(|| format!("running {sql}"))?
        .iter()
        .map(|r| (0..r.len()).map(|i| text(r, i)).collect())
        .collect())
}

async fn connect(url: &str) -> anyhow::Result<sqlx::AnyConnection> {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url)
        .await
        .context("connecting to the database")
}

/// [`execute`] from code that is not async.
pub fn execute_blocking(url: &str, sql: &str) -> anyhow::Result<()> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    blocking(async move { execute(&url, &sql).await })
}

/// [`rows`] from code that is not async.
pub fn rows_blocking(url: &str, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    blocking(async move { rows(&url, &sql).await })
}

/// `url` naming the database `name` instead of its own (its query string kept).
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (main, query) = url.find('?').map_or((url, ""), |i| url.split_at(i));
    let hosts = main.find("://").map_or(0, |i| i + 3);
    let slash = main[hosts..]
        .find('/')
        .with_context(|| format!("the database URL has no database path ({main:.12}…)"))?;
    Ok(format!("{}/{name}{query}", &main[..hosts + slash]))
}

/// Runs `f` to completion on a new thread with a runtime of its own.
fn blocking<T: Send + 'static>(
    f: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a tokio runtime")?
            .block_on(f)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_replaced_and_the_query_kept() {
        let url = |u: &str| with_database(u, "x").unwrap();
        assert_eq!(
            url("postgres://u:p@h:5432/db?sslmode=disable"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(url("postgres://h/db"), "postgres://h/x");
        assert_eq!(url("postgres://h/"), "postgres://h/x");
        assert!(with_database("postgres://h", "x").is_err());
    }

    /// Made, reachable, dropped (when `FSYNC_TEST_DATABASE_URL` is set).
    #[test]
    fn a_scratch_database_is_made_and_dropped() {
        let Some(base) = test_database_url() else {
            return;
        };
        let db = ScratchDatabase::create_blocking(&base).unwrap();
        assert!(db.name().starts_with(SCRATCH_PREFIX));
        assert!(db.url().ends_with(db.name()));
        let url = db.url().to_owned();
        let one = rows_blocking(&url, "SELECT CAST(1 AS TEXT), 2").unwrap();
        assert_eq!(one, [["1", ""]]);
        db.drop_database_blocking().unwrap();
        assert!(rows_blocking(&url, "SELECT 1").is_err());
    }
}
