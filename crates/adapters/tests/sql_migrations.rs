//! The embedded migrations apply on SQLite and Postgres, are idempotent, and a database migrated
//! by a newer binary is refused with a `Conflict`-classed error naming the unknown version.

use switchboard_adapters::sql::scratch::{postgres_gate, ScratchDir, ScratchPostgres};
use switchboard_adapters::sql::{connect_sqlite, migrate_postgres, migrate_sqlite};
use switchboard_core::ErrorClass;

fn postgres_required() -> bool {
    match postgres_gate() {
        Ok(()) => true,
        Err(reason) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("Postgres is required under CI: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping the Postgres half: {reason}");
            false
        }
    }
}

#[tokio::test]
async fn sqlite_migrations_apply_idempotently_and_refuse_a_newer_schema() {
    let dir = ScratchDir::create("sb-migrate").unwrap();
    let pool = connect_sqlite(&dir.join("app.db"), 2).await.unwrap();
    let first = migrate_sqlite(&pool).await.unwrap();
    let again = migrate_sqlite(&pool).await.unwrap();
    assert_eq!(first, again);
    sqlx::query("INSERT INTO switchboard_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'from the future', TRUE, X'00', 0)")
        .execute(&pool)
        .await
        .unwrap();
    let err = migrate_sqlite(&pool).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Conflict);
    assert!(err.message.contains("9999"), "{}", err.message);
}

#[tokio::test]
async fn postgres_migrations_apply_idempotently_and_refuse_a_newer_schema() {
    if !postgres_required() {
        return;
    }
    let db = ScratchPostgres::create().await.unwrap();
    let pool = db.pool(2).await.unwrap();
    let first = migrate_postgres(&pool).await.unwrap();
    assert_eq!(migrate_postgres(&pool).await.unwrap(), first);
    sqlx::query("INSERT INTO switchboard_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'from the future', TRUE, '\\x00', 0)")
        .execute(&pool)
        .await
        .unwrap();
    let err = migrate_postgres(&pool).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Conflict);
    pool.close().await;
}
