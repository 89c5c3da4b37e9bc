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
    (
        1,
        "identity",
        include_str!("../../migrations/postgres/0001_identity.sql"),
    ),
    (
        2,
        "vault",
        include_str!("../../migrations/postgres/0002_vault.sql"),
    ),
    (
        3,
        "run ledger",
        include_str!("../../migrations/postgres/0003_run_ledger.sql"),
    ),
    (
        4,
        "audit",
        include_str!("../../migrations/postgres/0004_audit.sql"),
    ),
];

/// `(version, description, sql)` of every SQLite migration, in order.
pub const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "identity",
        include_str!("../../migrations/sqlite/0001_identity.sql"),
    ),
    (
        2,
        "vault",
        include_str!("../../migrations/sqlite/0002_vault.sql"),
    ),
    (
        3,
        "run ledger",
        include_str!("../../migrations/sqlite/0003_run_ledger.sql"),
    ),
    (
        4,
        "audit",
        include_str!("../../migrations/sqlite/0004_audit.sql"),
    ),
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
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sqlx::SqlStr::from_static(sql),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        table_name: Cow::Borrowed("switchboard_migrations"),
        ..Migrator::DEFAULT
    }
}

fn newer(version: i64, known: i64) -> MigrationError {
    MigrationError {
        class: ErrorClass::Conflict,
        message: format!(
            "the database has schema migration {version}, which this binary does not know (it knows up to {known}): it was migrated by a newer Switchboard; run that version or restore a backup"
        ),
    }
}

fn edited(version: i64) -> MigrationError {
    MigrationError {
        class: ErrorClass::Corrupt,
        message: format!("schema migration {version} in the database differs from the one this binary ships: the schema was edited by hand or by another build"),
    }
}

fn dirty(version: i64) -> MigrationError {
    MigrationError {
        class: ErrorClass::Corrupt,
        message: format!(
            "schema migration {version} was left half-applied; repair the database before starting"
        ),
    }
}

fn map(e: sqlx::migrate::MigrateError, known: i64) -> MigrationError {
    use sqlx::migrate::MigrateError as M;
    match e {
        M::VersionMissing(v) => newer(v, known),
        M::VersionMismatch(v) => edited(v),
        M::Dirty(v) => dirty(v),
        M::Execute(e) => MigrationError {
            class: crate::sql::classify(&e),
            message: format!("applying schema migrations failed: {e}"),
        },
        other => MigrationError {
            class: ErrorClass::Unavailable,
            message: format!("applying schema migrations failed: {other}"),
        },
    }
}

async fn run<'a, A>(
    list: &[(i64, &'static str, &'static str)],
    conn: A,
) -> Result<MigrationReport, MigrationError>
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

/// How a database's schema compares with the migrations this binary ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// Every migration this binary ships is applied, unchanged.
    Current { version: i64 },
    /// These shipped migrations are not applied yet (`switchboard migrate` applies them);
    /// `version` is the highest applied one, if any.
    Behind {
        version: Option<i64>,
        missing: Vec<i64>,
    },
}

/// One row of the migrations table.
struct Applied {
    version: i64,
    success: bool,
    checksum: Vec<u8>,
}

/// Compares the applied rows with `list`, refusing what `migrate` would refuse, with its classes.
fn compare(
    list: &[(i64, &'static str, &'static str)],
    applied: &[Applied],
) -> Result<SchemaState, MigrationError> {
    let known = list.last().map_or(0, |m| m.0);
    let shipped = migrator(list);
    for row in applied {
        if !row.success {
            return Err(dirty(row.version));
        }
        let Some(migration) = shipped.migrations.iter().find(|m| m.version == row.version) else {
            return Err(newer(row.version, known));
        };
        if migration.checksum.as_ref() != row.checksum.as_slice() {
            return Err(edited(row.version));
        }
    }
    let missing: Vec<i64> = list
        .iter()
        .map(|m| m.0)
        .filter(|v| !applied.iter().any(|a| a.version == *v))
        .collect();
    if missing.is_empty() {
        Ok(SchemaState::Current { version: known })
    } else {
        Ok(SchemaState::Behind {
            version: applied.iter().map(|a| a.version).max(),
            missing,
        })
    }
}

fn unreadable(e: sqlx::Error) -> MigrationError {
    MigrationError {
        class: crate::sql::classify(&e),
        message: format!("reading the applied schema migrations failed: {e}"),
    }
}

fn applied_row<R: sqlx::Row>(row: &R) -> Result<Applied, sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    Ok(Applied {
        version: row.try_get("version")?,
        success: row.try_get("success")?,
        checksum: row.try_get("checksum")?,
    })
}

/// The schema state of `db` compared with the migrations this binary ships, read without changing
/// anything (for `switchboard doctor`): a database never migrated is `Behind` with every version
/// missing. Errors are the ones `migrate` would refuse with — a newer schema (`Conflict`), an edited
/// or half-applied migration (`Corrupt`) — or the database's own (`Unavailable`, …).
pub async fn inspect(db: &crate::sql::Db) -> Result<SchemaState, MigrationError> {
    const SELECT: &str =
        "SELECT version, success, checksum FROM switchboard_migrations ORDER BY version";
    match db {
        crate::sql::Db::Sqlite(pool) => {
            let exists: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'switchboard_migrations'")
                .fetch_one(pool)
                .await
                .map_err(unreadable)?;
            let rows = if exists == 0 {
                Vec::new()
            } else {
                sqlx::query(SELECT)
                    .fetch_all(pool)
                    .await
                    .map_err(unreadable)?
            };
            let applied = rows
                .iter()
                .map(applied_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(unreadable)?;
            compare(SQLITE, &applied)
        }
        crate::sql::Db::Postgres(pool) => {
            let exists: bool =
                sqlx::query_scalar("SELECT to_regclass('switchboard_migrations') IS NOT NULL")
                    .fetch_one(pool)
                    .await
                    .map_err(unreadable)?;
            let rows = if exists {
                sqlx::query(SELECT)
                    .fetch_all(pool)
                    .await
                    .map_err(unreadable)?
            } else {
                Vec::new()
            };
            let applied = rows
                .iter()
                .map(applied_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(unreadable)?;
            compare(POSTGRES, &applied)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::scratch::{record_unknown_migration, ScratchDir};
    use crate::sql::{connect_sqlite, Db};

    #[tokio::test]
    async fn inspecting_reads_the_schema_state_without_migrating() {
        let dir = ScratchDir::create("sb-inspect").unwrap();
        let pool = connect_sqlite(&dir.join("app.db"), 1).await.unwrap();
        let db = Db::Sqlite(pool.clone());
        let all: Vec<i64> = SQLITE.iter().map(|m| m.0).collect();
        assert_eq!(
            inspect(&db).await.unwrap(),
            SchemaState::Behind {
                version: None,
                missing: all.clone()
            }
        );
        assert_eq!(
            inspect(&db).await.unwrap(),
            SchemaState::Behind {
                version: None,
                missing: all
            },
            "inspecting migrated nothing"
        );
        let report = migrate_sqlite(&pool).await.unwrap();
        assert_eq!(
            inspect(&db).await.unwrap(),
            SchemaState::Current {
                version: report.version
            }
        );
        sqlx::query("DELETE FROM switchboard_migrations WHERE version = ?")
            .bind(report.version)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(
            inspect(&db).await.unwrap(),
            SchemaState::Behind {
                version: Some(report.version - 1),
                missing: vec![report.version]
            }
        );
        record_unknown_migration(&db, 9999).await.unwrap();
        let newer = inspect(&db).await.unwrap_err();
        assert_eq!(newer.class, ErrorClass::Conflict);
        assert_eq!(
            newer.class,
            migrate_sqlite(&pool).await.unwrap_err().class,
            "the class `migrate` refuses with"
        );
    }

    #[tokio::test]
    async fn an_edited_or_half_applied_migration_is_corrupt() {
        let dir = ScratchDir::create("sb-inspect").unwrap();
        let pool = connect_sqlite(&dir.join("app.db"), 1).await.unwrap();
        let db = Db::Sqlite(pool.clone());
        migrate_sqlite(&pool).await.unwrap();
        sqlx::query("UPDATE switchboard_migrations SET checksum = X'00' WHERE version = 1")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(inspect(&db).await.unwrap_err().class, ErrorClass::Corrupt);
        migrate_sqlite(&pool).await.unwrap_err();
        sqlx::query("DELETE FROM switchboard_migrations WHERE version = 1")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE switchboard_migrations SET success = FALSE WHERE version = 2")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(inspect(&db).await.unwrap_err().class, ErrorClass::Corrupt);
    }
}
