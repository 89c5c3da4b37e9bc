//! The embedded schema migrations of the shared databases (identity, vault, run ledger, audit),
//! one list per engine, applied by `switchboard migrate` and at server start. Applying is
//! idempotent; a database whose schema is newer than this binary knows is refused with a clear
//! error instead of being used.
//!
//! Per-session SQLite databases have their own schema, applied by the session store itself.

use sqlx::migrate::{Migration, MigrationType, Migrator};
use std::borrow::Cow;
use switchboard_core::ErrorClass;

/// `(version, description, sql)` of every Postgres migration, in order.
pub const POSTGRES: &[(i64, &str, &str)] = &[
    (1, "identity", include_str!("../../migrations/postgres/0001_identity.sql")),
    (2, "vault", include_str!("../../migrations/postgres/0002_vault.sql")),
    (3, "run ledger", include_str!("../../migrations/postgres/0003_run_ledger.sql")),
    (4, "audit", include_str!("../../migrations/postgres/0004_audit.sql")),
];

/// `(version, description, sql)` of every SQLite migration, in order.
pub const SQLITE: &[(i64, &str, &str)] = &[
    (1, "identity", include_str!("../../migrations/sqlite/0001_identity.sql")),
    (2, "vault", include_str!("../../migrations/sqlite/0002_vault.sql")),
    (3, "run ledger", include_str!("../../migrations/sqlite/0003_run_ledger.sql")),
    (4, "audit", include_str!("../../migrations/sqlite/0004_audit.sql")),
];

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The highest version this binary knows (and the database now has).
    pub version: i64,
}

/// Why migrating failed, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MigrationError {
    pub class: ErrorClass,
    pub message: String,
}

fn migrator(list: &[(i64, &'static str, &'static str)]) -> Migrator {
    let migrations: Vec<Migration> = list
        .iter()
        .map(|(version, description, sql)| Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, sqlx::SqlStr::from_static(sql), false))
        .collect();
    Migrator { migrations: Cow::Owned(migrations), table_name: Cow::Borrowed("switchboard_migrations"), ..Migrator::DEFAULT }
}

fn map(e: sqlx::migrate::MigrateError, known: i64) -> MigrationError {
    use sqlx::migrate::MigrateError as M;
    match e {
        M::VersionMissing(v) => MigrationError {
            class: ErrorClass::Conflict,
            message: format!(
                "the database has schema migration {v}, which this binary does not know (it knows up to {known}): it was migrated by a newer Switchboard; run that version or restore a backup"
            ),
        },
        M::VersionMismatch(v) => MigrationError {
            class: ErrorClass::Corrupt,
            message: format!("schema migration {v} in the database differs from the one this binary ships: the schema was edited by hand or by another build"),
        },
        M::Dirty(v) => MigrationError {
            class: ErrorClass::Corrupt,
            message: format!("schema migration {v} was left half-applied; repair the database before starting"),
        },
        M::Execute(e) => MigrationError { class: crate::sql::classify(&e), message: format!("applying schema migrations failed: {e}") },
        other => MigrationError { class: ErrorClass::Unavailable, message: format!("applying schema migrations failed: {other}") },
    }
}

async fn run<'a, A>(list: &[(i64, &'static str, &'static str)], conn: A) -> Result<MigrationReport, MigrationError>
where
    A: sqlx::Acquire<'a>,
    <A::Connection as std::ops::Deref>::Target: sqlx::migrate::Migrate,
{
    let known = list.last().map_or(0, |m| m.0);
    migrator(list).run(conn).await.map_err(|e| map(e, known))?;
    Ok(MigrationReport { version: known })
}

/// Applies the Postgres migrations (idempotent; refuses a newer schema).
pub async fn migrate_postgres(pool: &sqlx::PgPool) -> Result<MigrationReport, MigrationError> {
    run(POSTGRES, pool).await
}

/// Applies the SQLite migrations (idempotent; refuses a newer schema).
pub async fn migrate_sqlite(pool: &sqlx::SqlitePool) -> Result<MigrationReport, MigrationError> {
    run(SQLITE, pool).await
}
