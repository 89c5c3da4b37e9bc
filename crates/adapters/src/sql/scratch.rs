//! Scratch databases for tests and conformance fixtures: a fresh Postgres database (created from
//! `DATABASE_URL`, dropped when the guard drops) or a fresh SQLite file in a temp dir, so that
//! every case runs in its own namespace, in parallel, and leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether Postgres trials can run here: `Err(reason)` when `DATABASE_URL` is not set.
pub fn postgres_gate() -> Result<(), String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => Ok(()),
        Ok(_) => Err("DATABASE_URL is not a postgres:// URL".into()),
        Err(_) => Err("DATABASE_URL is not set (run `. scripts/setup.sh`)".into()),
    }
}

/// A fresh Postgres database, dropped (with its connections) when this guard drops.
pub struct ScratchPostgres {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl ScratchPostgres {
    /// Creates `sbt_<pid>_<n>_<nanos>` on the server of `DATABASE_URL`.
    pub async fn create() -> Result<Self, String> {
        postgres_gate()?;
        let admin_url = std::env::var("DATABASE_URL").expect("checked by the gate");
        let name = unique("sbt");
        let admin = super::connect_postgres(&admin_url, 1)
            .await
            .map_err(|e| format!("cannot reach Postgres at DATABASE_URL: {e}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        admin.close().await;
        let url = with_database(&admin_url, &name);
        Ok(ScratchPostgres {
            url,
            name,
            admin_url,
        })
    }

    /// A pool on the scratch database.
    pub async fn pool(&self, max_connections: u32) -> Result<sqlx::PgPool, String> {
        super::connect_postgres(&self.url, max_connections)
            .await
            .map_err(|e| e.to_string())
    }
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let head = path_start.map_or(base, |i| &base[..i]);
    match query {
        Some(q) => format!("{head}/{name}?{q}"),
        None => format!("{head}/{name}"),
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside any async context we can rely on: use a private runtime on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let admin = super::connect_postgres(&admin_url, 1).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&admin)
                .await
                .ok()?;
                admin.close().await;
                Some(())
            })
        })
        .join();
    }
}

/// Marks `db` as migrated by a newer Switchboard: records schema migration `version`, which this
/// binary does not ship, as applied (for tests of the newer-schema refusal).
pub async fn record_unknown_migration(db: &super::Db, version: i64) -> Result<(), String> {
    const INSERT: &str = "INSERT INTO switchboard_migrations (version, description, success, checksum, execution_time) VALUES ($1, 'from the future', TRUE, $2, 0)";
    let checksum: Vec<u8> = vec![0];
    match db {
        super::Db::Sqlite(pool) => sqlx::query(INSERT)
            .bind(version)
            .bind(checksum)
            .execute(pool)
            .await
            .map(|_| ()),
        super::Db::Postgres(pool) => sqlx::query(INSERT)
            .bind(version)
            .bind(checksum)
            .execute(pool)
            .await
            .map(|_| ()),
    }
    .map_err(|e| format!("cannot record migration {version}: {e}"))
}

/// A fresh directory under the system temp dir, removed when this guard drops.
pub struct ScratchDir {
    pub path: PathBuf,
}

impl ScratchDir {
    pub fn create(prefix: &str) -> Result<Self, String> {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Make anything a test made read-only writable again, so it can be removed.
        let _ = make_writable(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn make_writable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)?;
    let mut perms = meta.permissions();
    perms.set_mode(perms.mode() | 0o700);
    std::fs::set_permissions(path, perms)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            make_writable(&entry?.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
