//! The shared database of a deployment: Postgres when `DATABASE_URL` is set, else the embedded
//! SQLite file `<data dir>/switchboard.db`. Opening it applies the migrations.

use std::path::Path;
use switchboard_adapters::sql::{self, Db};

/// The embedded default's database file under the data directory.
pub const SQLITE_FILE: &str = "switchboard.db";

/// Opens the deployment's database and brings its schema up to date. Errors are sentences for an
/// operator (they name what was tried).
pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<(Db, String), String> {
    match database_url {
        Some(url) => {
            let pool = sql::connect_postgres(url, 10)
                .await
                .map_err(|e| format!("cannot connect to Postgres (DATABASE_URL): {e}"))?;
            let report = sql::migrate_postgres(&pool)
                .await
                .map_err(|e| e.to_string())?;
            Ok((
                Db::Postgres(pool),
                format!("Postgres schema at version {}", report.version),
            ))
        }
        None => {
            std::fs::create_dir_all(data_dir).map_err(|e| {
                format!(
                    "cannot create the data directory {}: {e}",
                    data_dir.display()
                )
            })?;
            let file = data_dir.join(SQLITE_FILE);
            let pool = sql::connect_sqlite(&file, 4)
                .await
                .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
            let report = sql::migrate_sqlite(&pool)
                .await
                .map_err(|e| e.to_string())?;
            Ok((
                Db::Sqlite(pool),
                format!(
                    "SQLite schema at version {} in {}",
                    report.version,
                    file.display()
                ),
            ))
        }
    }
}

/// `switchboard migrate`: applies the migrations and says what the schema is now.
pub async fn migrate(data_dir: &Path, database_url: Option<&str>) -> Result<String, String> {
    open(data_dir, database_url)
        .await
        .map(|(_, said)| format!("migrated: {said}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_adapters::sql::scratch::ScratchDir;

    #[tokio::test]
    async fn migrate_is_idempotent_on_the_embedded_default() {
        let dir = ScratchDir::create("sb-server-migrate").unwrap();
        let first = migrate(dir.path(), None).await.unwrap();
        let again = migrate(dir.path(), None).await.unwrap();
        assert_eq!(first, again);
        assert!(dir.join(SQLITE_FILE).exists());
    }

    #[tokio::test]
    async fn an_unreachable_postgres_is_a_clear_error() {
        let dir = ScratchDir::create("sb-server-migrate").unwrap();
        let err = open(dir.path(), Some("postgres://postgres@127.0.0.1:1/none"))
            .await
            .unwrap_err();
        assert!(err.contains("cannot connect to Postgres"), "{err}");
    }
}
