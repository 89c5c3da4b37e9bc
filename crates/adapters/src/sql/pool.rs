//! Connection pools: SQLite files in WAL mode with a busy timeout and foreign keys on, and
//! Postgres pools with bounded acquire time, so an absent database answers `Unavailable` quickly.

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// How long a caller waits for a pooled connection before the database counts as unavailable.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A database handle as the adapters hold it. Cheap to clone (pools are shared).
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Opens (creating if missing) a SQLite database file: WAL, `synchronous = NORMAL`, 5 s busy
/// timeout, foreign keys enforced.
pub async fn connect_sqlite(
    path: &Path,
    max_connections: u32,
) -> Result<sqlx::SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    SqlitePoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}

/// Connects to Postgres at `url` (`postgres://user:pass@host:port/db`). A server that refuses the
/// connection fails at once (one direct attempt first), rather than after the pool's retries.
pub async fn connect_postgres(
    url: &str,
    max_connections: u32,
) -> Result<sqlx::PgPool, sqlx::Error> {
    use sqlx::Connection;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let probe = tokio::time::timeout(ACQUIRE_TIMEOUT, sqlx::PgConnection::connect_with(&options))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    probe.close().await?;
    PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}

pub use sqlx::{PgPool, SqlitePool};

/// One round trip to the SQLite database (for readiness checks).
pub async fn ping_sqlite(pool: &SqlitePool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One round trip to Postgres (for readiness checks).
pub async fn ping_postgres(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
