//! PostgreSQL: production and multi-node deployments.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};

use super::sql::{Dialect, SqlRepo};
use super::{migrate, DbError, MetaRepo};

/// Connects to PostgreSQL at `url` and applies migrations.
pub async fn open_postgres(url: &str) -> Result<Arc<dyn MetaRepo>, DbError> {
    Ok(Arc::new(open_postgres_repo(url).await?))
}

pub(crate) async fn open_postgres_repo(url: &str) -> Result<SqlRepo, DbError> {
    sqlx::any::install_default_drivers();
    let options = AnyConnectOptions::from_str(url)?;
    prepare(url).await?;
    let pool = AnyPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await?;
    migrate(&pool, Dialect::Postgres).await?;
    Ok(SqlRepo::new(pool, Dialect::Postgres))
}

/// Connects once before the pool does, so that what stops the server is said in words
/// (the pool's own first attempts turn a refused connection into "pool timed out"), and
/// creates the database when it does not exist and the role may (`CREATEDB`).
async fn prepare(url: &str) -> Result<(), DbError> {
    let options = PgConnectOptions::from_str(url)?;
    let first = match PgConnection::connect_with(&options).await {
        Err(e) if sql_state(&e).as_deref() == Some("3D000") => create_database(&options).await,
        other => other.map(drop),
    };
    first.map_err(|e| explain(&options, e))
}

/// `CREATE DATABASE` through the maintenance database `postgres`, owned by the role the
/// server connects as; another node that created it first is as good.
async fn create_database(options: &PgConnectOptions) -> Result<(), sqlx::Error> {
    let name = options.get_database().unwrap_or(options.get_username());
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    // An identifier cannot be bound; it is quoted, its own quotes doubled.
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut admin).await {
        Ok(_) => tracing::info!(database = name, "created the PostgreSQL database"),
        Err(e) if sql_state(&e).as_deref() == Some("42P04") => {}
        Err(e) => return Err(e),
    }
    let _ = admin.close().await;
    PgConnection::connect_with(options).await.map(drop)
}

fn sql_state(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(std::borrow::Cow::into_owned),
        _ => None,
    }
}

/// What a failed first connection means and what the operator can do about it; the
/// password is never part of it.
fn explain(options: &PgConnectOptions, e: sqlx::Error) -> DbError {
    let role = options.get_username();
    let database = options.get_database().unwrap_or(role);
    let at = format!("{}:{}", options.get_host(), options.get_port());
    let superuser = "as the database superuser (README, \"PostgreSQL\") run";
    let message = match sql_state(&e).as_deref() {
        Some("3D000" | "42501") => format!(
            "the PostgreSQL database \"{database}\" does not exist and the role \"{role}\" may \
             not create it; {superuser}: createdb --owner {role} {database}"
        ),
        Some("28P01" | "28000") => format!(
            "PostgreSQL at {at} refused the role \"{role}\" (no such role, or a wrong password \
             in DATABASE_URL); to create it, {superuser}: psql -c \"CREATE ROLE {role} LOGIN \
             PASSWORD '…'\""
        ),
        _ => match &e {
            sqlx::Error::Io(io) => format!(
                "cannot connect to PostgreSQL at {at}: {io}; is it running, and is DATABASE_URL's \
                 host and port right?"
            ),
            sqlx::Error::Tls(tls) => format!("TLS with PostgreSQL at {at}: {tls}"),
            _ => return DbError::Backend(e),
        },
    };
    DbError::Setup(message)
}
