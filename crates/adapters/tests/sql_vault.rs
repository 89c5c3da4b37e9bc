//! The sealed BYOK vault on SQLite and Postgres beyond the contract cases: ciphertexts moved between
//! orgs or providers in SQL do not open, rotation re-seals lazily, tampering and a wrong master key
//! are `Corrupt`, the master key file is created privately and refused when unsafe, and the
//! database faults (unavailable at start, read-only file, a connection killed mid-statement) end
//! with the documented class and nothing half-written.
//!
//! Postgres halves run when `DATABASE_URL` is set; without it they print why and stop, except under
//! `CI=true`, where a missing Postgres fails the test.

use base64::Engine;
use sqlx::Row;
use std::os::unix::fs::PermissionsExt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_adapters::sql::scratch::{postgres_gate, ScratchDir, ScratchPostgres};
use switchboard_adapters::sql::vault_keys::{
    key_file_path, ENV_MASTER_KEY, ENV_MASTER_KEY_PREVIOUS,
};
use switchboard_adapters::sql::{
    connect_sqlite, migrate_postgres, migrate_sqlite, Db, MasterKeys, PgSecretVault,
    SqliteSecretVault,
};
use switchboard_core::tenancy::{Principal, TenantContext};
use switchboard_core::{ErrorClass, OrgId, Timestamp, UserId};
use switchboard_fakes::InMemoryClock;
use switchboard_ports::identity::{SecretVault, SecretVaultError};
use switchboard_ports::{Classify, Clock, SecretString};

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

fn tenant(org: &str) -> TenantContext {
    Principal::from_verified_credential(
        OrgId::parse(org).unwrap(),
        UserId::parse("u").unwrap(),
        None,
        vec![],
    )
    .tenant()
}

fn secret(s: &str) -> SecretString {
    SecretString::new(s)
}

fn keys(version: u32, key: [u8; 32]) -> Arc<MasterKeys> {
    Arc::new(MasterKeys::new(version, key).unwrap())
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(InMemoryClock::at(Timestamp::from_millis(1_700_000_000_000)))
}

#[track_caller]
fn class_of<T: std::fmt::Debug>(r: Result<T, SecretVaultError>) -> ErrorClass {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.class(),
    }
}

/// A migrated scratch database of one engine.
struct Store {
    engine: &'static str,
    db: Db,
    /// The Postgres scratch database's URL, for second pools.
    url: Option<String>,
    _guard: Box<dyn std::any::Any + Send>,
}

impl Store {
    async fn sqlite() -> Store {
        let dir = ScratchDir::create("sb-vault-test").unwrap();
        let pool = connect_sqlite(&dir.join("app.db"), 4).await.unwrap();
        migrate_sqlite(&pool).await.unwrap();
        Store {
            engine: "sqlite",
            db: Db::Sqlite(pool),
            url: None,
            _guard: Box::new(dir),
        }
    }

    async fn postgres() -> Store {
        let scratch = ScratchPostgres::create().await.unwrap();
        let pool = scratch.pool(4).await.unwrap();
        migrate_postgres(&pool).await.unwrap();
        Store {
            engine: "postgres",
            db: Db::Postgres(pool),
            url: Some(scratch.url.clone()),
            _guard: Box::new(scratch),
        }
    }

    /// A fresh store of every engine available here.
    async fn all() -> Vec<Store> {
        let mut stores = vec![Store::sqlite().await];
        if postgres_required() {
            stores.push(Store::postgres().await);
        }
        stores
    }

    fn vault(&self, keys: Arc<MasterKeys>) -> Arc<dyn SecretVault> {
        match &self.db {
            Db::Sqlite(pool) => Arc::new(SqliteSecretVault::new(pool.clone(), keys, clock())),
            Db::Postgres(pool) => Arc::new(PgSecretVault::new(pool.clone(), keys, clock())),
        }
    }

    async fn exec(&self, sql: &str) -> u64 {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match &self.db {
            Db::Sqlite(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected(),
            Db::Postgres(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected(),
        }
    }

    /// `(key_version, blob, updated_at)` of a row as stored, `None` when there is no row.
    async fn row(&self, org: &str, provider: &str) -> Option<(i64, Vec<u8>, i64)> {
        const SQL: &str = "SELECT key_version, blob, updated_at FROM provider_credentials WHERE org_id = $1 AND provider = $2";
        macro_rules! fetch {
            ($pool:expr) => {
                sqlx::query(SQL)
                    .bind(org)
                    .bind(provider)
                    .fetch_optional($pool)
                    .await
                    .unwrap()
                    .map(|r| {
                        (
                            r.try_get("key_version").unwrap(),
                            r.try_get("blob").unwrap(),
                            r.try_get("updated_at").unwrap(),
                        )
                    })
            };
        }
        match &self.db {
            Db::Sqlite(pool) => fetch!(pool),
            Db::Postgres(pool) => fetch!(pool),
        }
    }

    async fn count(&self) -> i64 {
        const SQL: &str = "SELECT COUNT(*) AS n FROM provider_credentials";
        match &self.db {
            Db::Sqlite(pool) => sqlx::query(SQL)
                .fetch_one(pool)
                .await
                .unwrap()
                .try_get("n")
                .unwrap(),
            Db::Postgres(pool) => sqlx::query(SQL)
                .fetch_one(pool)
                .await
                .unwrap()
                .try_get("n")
                .unwrap(),
        }
    }
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_org_or_provider_in_sql_does_not_open() {
    for store in Store::all().await {
        let e = store.engine;
        let vault = store.vault(keys(1, [1; 32]));
        let (a, b) = (tenant("org-a"), tenant("org-b"));
        vault
            .put(&a, "openai", &secret("sk-org-a-openai-1111"))
            .await
            .unwrap();
        vault
            .put(&a, "anthropic", &secret("sk-org-a-anthropic-2222"))
            .await
            .unwrap();
        vault
            .put(&b, "mistral", &secret("sk-org-b-mistral-3333"))
            .await
            .unwrap();

        // A copy of org a's row under org b: b's copy fails, a's original still opens.
        store
            .exec(
                "INSERT INTO provider_credentials (org_id, provider, key_version, blob, last4, updated_at) \
                 SELECT 'org-b', provider, key_version, blob, last4, updated_at FROM provider_credentials \
                 WHERE org_id = 'org-a' AND provider = 'openai'",
            )
            .await;
        assert_eq!(
            class_of(vault.open(&b, "openai").await),
            ErrorClass::Corrupt,
            "{e}: copied row"
        );
        assert!(
            vault
                .open(&a, "openai")
                .await
                .unwrap()
                .ct_eq(&secret("sk-org-a-openai-1111")),
            "{e}"
        );
        assert!(
            vault
                .open(&b, "mistral")
                .await
                .unwrap()
                .ct_eq(&secret("sk-org-b-mistral-3333")),
            "{e}: b's own key"
        );

        // The row moved to org b outright: b cannot open it, a no longer has it.
        assert_eq!(store.exec("UPDATE provider_credentials SET org_id = 'org-b' WHERE org_id = 'org-a' AND provider = 'anthropic'").await, 1);
        assert_eq!(
            class_of(vault.open(&b, "anthropic").await),
            ErrorClass::Corrupt,
            "{e}: moved row"
        );
        assert_eq!(
            class_of(vault.open(&a, "anthropic").await),
            ErrorClass::NotFound,
            "{e}"
        );

        // Another provider's row within the same org: the provider is in the AAD.
        assert_eq!(store.exec("UPDATE provider_credentials SET provider = 'groq' WHERE org_id = 'org-b' AND provider = 'mistral'").await, 1);
        assert_eq!(
            class_of(vault.open(&b, "groq").await),
            ErrorClass::Corrupt,
            "{e}: renamed provider"
        );

        // Failed opens wrote nothing.
        assert_eq!(store.count().await, 4, "{e}");
    }
}

#[tokio::test]
async fn rotation_reseals_lazily_under_the_current_version() {
    let (old, new) = ([1u8; 32], [2u8; 32]);
    for store in Store::all().await {
        let e = store.engine;
        let t = tenant("org-rotate");
        let v1 = store.vault(keys(1, old));
        v1.put(&t, "openai", &secret("sk-rotate-me-4444"))
            .await
            .unwrap();
        v1.put(&t, "anthropic", &secret("sk-not-opened-5555"))
            .await
            .unwrap();
        let (version, blob_before, updated_before) =
            store.row("org-rotate", "openai").await.unwrap();
        assert_eq!(version, 1, "{e}");
        let listed_before = v1.list(&t).await.unwrap();

        let rotated = Arc::new(
            MasterKeys::new(2, new)
                .unwrap()
                .with_previous(1, old)
                .unwrap(),
        );
        let v2 = store.vault(rotated);
        assert!(
            v2.open(&t, "openai")
                .await
                .unwrap()
                .ct_eq(&secret("sk-rotate-me-4444")),
            "{e}"
        );
        let (version, blob_after, updated_after) = store.row("org-rotate", "openai").await.unwrap();
        assert_eq!(
            version, 2,
            "{e}: the open re-sealed the row under the current version"
        );
        assert_ne!(blob_after, blob_before, "{e}");
        assert_eq!(
            updated_after, updated_before,
            "{e}: re-sealing is not a new credential"
        );
        assert_eq!(
            v2.list(&t).await.unwrap(),
            listed_before,
            "{e}: the listing is unchanged"
        );
        assert_eq!(
            store.row("org-rotate", "anthropic").await.unwrap().0,
            1,
            "{e}: rows not opened stay as they were"
        );

        // It opens again, now under version 2 alone; the old key alone no longer opens it.
        assert!(
            v2.open(&t, "openai")
                .await
                .unwrap()
                .ct_eq(&secret("sk-rotate-me-4444")),
            "{e}"
        );
        let only_new = store.vault(keys(2, new));
        assert!(
            only_new
                .open(&t, "openai")
                .await
                .unwrap()
                .ct_eq(&secret("sk-rotate-me-4444")),
            "{e}"
        );
        assert_eq!(
            class_of(only_new.open(&t, "anthropic").await),
            ErrorClass::Corrupt,
            "{e}: version 1 is not configured"
        );
        assert_eq!(
            class_of(store.vault(keys(1, old)).open(&t, "openai").await),
            ErrorClass::Corrupt,
            "{e}: version 2 is unknown to the old vault"
        );

        // New puts seal under the current version straight away.
        v2.put(&t, "groq", &secret("sk-fresh-6666")).await.unwrap();
        assert_eq!(store.row("org-rotate", "groq").await.unwrap().0, 2, "{e}");
    }
}

#[tokio::test]
async fn a_failed_reseal_write_back_does_not_fail_the_open() {
    let (old, new) = ([1u8; 32], [2u8; 32]);
    let rotated = || {
        Arc::new(
            MasterKeys::new(2, new)
                .unwrap()
                .with_previous(1, old)
                .unwrap(),
        )
    };
    for store in Store::all().await {
        let e = store.engine;
        let t = tenant("org-ro");
        store
            .vault(keys(1, old))
            .put(&t, "openai", &secret("sk-read-only-7777"))
            .await
            .unwrap();
        let before = store.row("org-ro", "openai").await.unwrap();

        // A vault on a connection that can read but not write (a read-only file or replica).
        let read_only: Arc<dyn SecretVault> = match &store.db {
            Db::Sqlite(pool) => {
                let path = pool.connect_options().get_filename().to_path_buf();
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true);
                let ro = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .unwrap();
                Arc::new(SqliteSecretVault::new(ro, rotated(), clock()))
            }
            Db::Postgres(_) => {
                let options =
                    sqlx::postgres::PgConnectOptions::from_str(store.url.as_deref().unwrap())
                        .unwrap()
                        .options([("default_transaction_read_only", "on")]);
                let ro = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .unwrap();
                Arc::new(PgSecretVault::new(ro, rotated(), clock()))
            }
        };
        assert!(
            read_only
                .open(&t, "openai")
                .await
                .unwrap()
                .ct_eq(&secret("sk-read-only-7777")),
            "{e}"
        );
        assert_eq!(
            store.row("org-ro", "openai").await.unwrap(),
            before,
            "{e}: the row stays under version 1"
        );

        // A writable vault re-seals it at its next open.
        assert!(
            store
                .vault(rotated())
                .open(&t, "openai")
                .await
                .unwrap()
                .ct_eq(&secret("sk-read-only-7777")),
            "{e}"
        );
        assert_eq!(store.row("org-ro", "openai").await.unwrap().0, 2, "{e}");
    }
}

#[tokio::test]
async fn a_tampered_blob_or_version_is_corrupt_and_left_as_it_was() {
    for store in Store::all().await {
        let e = store.engine;
        let t = tenant("org-tamper");
        let vault = store.vault(Arc::new(
            MasterKeys::new(2, [2; 32])
                .unwrap()
                .with_previous(1, [1; 32])
                .unwrap(),
        ));
        vault
            .put(&t, "openai", &secret("sk-tamper-8888"))
            .await
            .unwrap();
        let (_, original, _) = store.row("org-tamper", "openai").await.unwrap();

        let mut flipped = original.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x01;
        for (what, blob) in [
            ("a flipped ciphertext byte", flipped),
            ("a flipped tag byte", {
                let mut b = original.clone();
                *b.last_mut().unwrap() ^= 0x80;
                b
            }),
            ("a flipped nonce byte", {
                let mut b = original.clone();
                b[0] ^= 0x01;
                b
            }),
        ] {
            store
                .exec(&format!(
                    "UPDATE provider_credentials SET blob = {} WHERE org_id = 'org-tamper'",
                    hex_literal(&blob, store.engine)
                ))
                .await;
            assert_eq!(
                class_of(vault.open(&t, "openai").await),
                ErrorClass::Corrupt,
                "{e}: {what}"
            );
            assert_eq!(
                store.row("org-tamper", "openai").await.unwrap().1,
                blob,
                "{e}: a failed open writes nothing"
            );
        }
        store
            .exec(&format!(
                "UPDATE provider_credentials SET blob = {} WHERE org_id = 'org-tamper'",
                hex_literal(&original, store.engine)
            ))
            .await;
        assert!(
            vault
                .open(&t, "openai")
                .await
                .unwrap()
                .ct_eq(&secret("sk-tamper-8888")),
            "{e}: restored"
        );

        // The key version is bound too: relabelling the row as version 1 (a key the vault holds).
        store
            .exec("UPDATE provider_credentials SET key_version = 1 WHERE org_id = 'org-tamper'")
            .await;
        assert_eq!(
            class_of(vault.open(&t, "openai").await),
            ErrorClass::Corrupt,
            "{e}: relabelled version"
        );
        assert_eq!(
            store.row("org-tamper", "openai").await.unwrap().0,
            1,
            "{e}: no re-seal of a blob that did not open"
        );
    }
}

/// A blob literal in the engine's SQL dialect.
fn hex_literal(bytes: &[u8], engine: &str) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match engine {
        "postgres" => format!("'\\x{hex}'::bytea"),
        _ => format!("X'{hex}'"),
    }
}

#[tokio::test]
async fn a_wrong_master_key_is_corrupt_and_never_yields_a_secret() {
    for store in Store::all().await {
        let e = store.engine;
        let t = tenant("org-wrong-key");
        store
            .vault(keys(1, [1; 32]))
            .put(&t, "openai", &secret("sk-right-key-9999"))
            .await
            .unwrap();
        let before = store.row("org-wrong-key", "openai").await.unwrap();
        let wrong = store.vault(keys(1, [9; 32]));
        let err = wrong.open(&t, "openai").await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Corrupt, "{e}");
        assert!(
            !err.to_string().contains("right-key"),
            "{e}: the error leaks the key: {err}"
        );
        // The listing works without opening anything; the row is untouched.
        assert_eq!(wrong.list(&t).await.unwrap()[0].last4, "9999", "{e}");
        assert_eq!(
            store.row("org-wrong-key", "openai").await.unwrap(),
            before,
            "{e}"
        );
        // A sealed blob under a version the vault does not hold is refused at import.
        let sealed = store
            .vault(keys(1, [1; 32]))
            .export_sealed(&t, "openai")
            .await
            .unwrap();
        let newer = store.vault(keys(3, [3; 32]));
        assert_eq!(
            class_of(newer.import_sealed(&tenant("org-other"), &sealed).await),
            ErrorClass::Invalid,
            "{e}"
        );
        assert!(store.row("org-other", "openai").await.is_none(), "{e}");
    }
}

#[tokio::test]
async fn the_database_unavailable_at_start_is_unavailable_promptly() {
    let started = Instant::now();
    let err = PgSecretVault::connect(
        "postgres://postgres@127.0.0.1:1/switchboard",
        keys(1, [1; 32]),
        clock(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    let dir = ScratchDir::create("sb-vault-missing").unwrap();
    let err =
        SqliteSecretVault::connect(&dir.join("no/such/dir/app.db"), keys(1, [1; 32]), clock())
            .await
            .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
}

#[tokio::test]
async fn a_read_only_sqlite_file_refuses_writes_with_nothing_written() {
    let store = Store::sqlite().await;
    let Db::Sqlite(pool) = &store.db else {
        unreachable!()
    };
    let t = tenant("org-ro-file");
    let vault = store.vault(keys(1, [1; 32]));
    vault
        .put(&t, "openai", &secret("sk-before-0001"))
        .await
        .unwrap();
    vault
        .put(&t, "anthropic", &secret("sk-before-0002"))
        .await
        .unwrap();
    let sealed_before = vault.export_sealed(&t, "openai").await.unwrap();
    let listed_before = vault.list(&t).await.unwrap();

    let path = pool.connect_options().get_filename().to_path_buf();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true);
    let ro = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let ro_vault = SqliteSecretVault::new(ro, keys(1, [1; 32]), clock());

    assert_eq!(
        class_of(ro_vault.put(&t, "openai", &secret("sk-after-0003")).await),
        ErrorClass::Unavailable
    );
    assert_eq!(
        class_of(ro_vault.put(&t, "groq", &secret("sk-after-0004")).await),
        ErrorClass::Unavailable
    );
    assert_eq!(
        class_of(ro_vault.delete(&t, "anthropic").await),
        ErrorClass::Unavailable
    );
    assert_eq!(
        class_of(
            ro_vault
                .import_sealed(&tenant("org-x"), &sealed_before)
                .await
        ),
        ErrorClass::Unavailable
    );
    // Reads still work, and nothing changed.
    assert!(ro_vault
        .open(&t, "openai")
        .await
        .unwrap()
        .ct_eq(&secret("sk-before-0001")));
    assert_eq!(vault.list(&t).await.unwrap(), listed_before);
    assert_eq!(
        vault.export_sealed(&t, "openai").await.unwrap(),
        sealed_before
    );
    assert_eq!(store.count().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_connection_killed_mid_write_is_unavailable_with_nothing_written() {
    if !postgres_required() {
        return;
    }
    let store = Store::postgres().await;
    let t = tenant("org-killed");
    let vault = store.vault(keys(1, [1; 32]));
    vault
        .put(&t, "openai", &secret("sk-survivor-1234"))
        .await
        .unwrap();
    let before = store.row("org-killed", "openai").await.unwrap();

    // A second session locks the row, so the vault's upsert waits inside its statement.
    let scratch_url = store.url.clone().unwrap();
    let other = switchboard_adapters::sql::connect_postgres(&scratch_url, 2)
        .await
        .unwrap();
    let mut locker = other.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM provider_credentials WHERE org_id = 'org-killed' AND provider = 'openai' FOR UPDATE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let writer = {
        let (vault, t) = (vault.clone(), t.clone());
        tokio::spawn(async move {
            vault
                .put(&t, "openai", &secret("sk-never-stored-5678"))
                .await
        })
    };

    // Find the blocked upsert's backend (bounded wait for an observable condition) and kill it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        let found: Option<i32> = sqlx::query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' \
             AND query LIKE 'INSERT INTO provider_credentials%'",
        )
        .fetch_optional(&other)
        .await
        .unwrap()
        .map(|r| r.try_get("pid").unwrap());
        if let Some(pid) = found {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the vault's upsert never blocked on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed: bool = sqlx::query("SELECT pg_terminate_backend($1) AS killed")
        .bind(pid)
        .fetch_one(&other)
        .await
        .unwrap()
        .try_get("killed")
        .unwrap();
    assert!(killed);
    let result = writer.await.unwrap();
    assert_eq!(class_of(result), ErrorClass::Unavailable);
    locker.rollback().await.unwrap();

    // Nothing of the killed write is there; the vault keeps working on fresh connections.
    assert_eq!(store.row("org-killed", "openai").await.unwrap(), before);
    assert!(vault
        .open(&t, "openai")
        .await
        .unwrap()
        .ct_eq(&secret("sk-survivor-1234")));
    vault
        .put(&t, "openai", &secret("sk-after-heal-9012"))
        .await
        .unwrap();
    assert!(vault
        .open(&t, "openai")
        .await
        .unwrap()
        .ct_eq(&secret("sk-after-heal-9012")));
    other.close().await;
}

#[test]
fn a_missing_key_file_is_created_private_and_reused() {
    let dir = ScratchDir::create("sb-vault-keyfile").unwrap();
    let data_dir = dir.join("data");
    let path = key_file_path(&data_dir);
    let first = MasterKeys::resolve_with(|_| None, &data_dir).unwrap();
    assert_eq!(first.current_version(), 1);

    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the key file is private"
    );
    assert_eq!(
        std::fs::metadata(&data_dir).unwrap().permissions().mode() & 0o777,
        0o700,
        "a created data dir is private"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    assert_eq!(decoded.len(), 32);
    assert_eq!(text.lines().count(), 1);
    assert!(
        !format!("{first:?}").contains(text.trim()),
        "Debug shows the key"
    );

    // Loading again reads the same key: what one load seals, the other opens.
    let second = MasterKeys::resolve_with(|_| None, &data_dir).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "the file is not rewritten"
    );
    same_key(first, second);
}

#[test]
fn concurrent_first_starts_agree_on_one_key() {
    let dir = ScratchDir::create("sb-vault-keyrace").unwrap();
    let path = dir.join("master.key");
    let barrier = Arc::new(std::sync::Barrier::new(6));
    let loaded: Vec<MasterKeys> = (0..6)
        .map(|_| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                MasterKeys::from_file_or_create(&path).unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("master.key")],
        "no temporary files are left"
    );
    let mut loaded = loaded.into_iter();
    let first = loaded.next().unwrap();
    for other in loaded {
        same_key(first.clone(), other);
    }
}

/// Asserts two key sets hold the same current key, by sealing with one and opening with the other.
fn same_key(a: MasterKeys, b: MasterKeys) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = Store::sqlite().await;
            let t = tenant("org-same");
            store
                .vault(Arc::new(a))
                .put(&t, "openai", &secret("sk-same-key-0000"))
                .await
                .unwrap();
            assert!(store
                .vault(Arc::new(b))
                .open(&t, "openai")
                .await
                .unwrap()
                .ct_eq(&secret("sk-same-key-0000")));
        });
}

#[test]
fn an_unsafe_or_malformed_key_file_is_refused_with_a_clear_error() {
    let dir = ScratchDir::create("sb-vault-badkey").unwrap();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let good = b64(&[5; 32]);

    for mode in [0o644, 0o640, 0o604, 0o660] {
        let path = write("open.key", &good, mode);
        let err = MasterKeys::from_file_or_create(&path).unwrap_err();
        assert_eq!(err.class, ErrorClass::Invalid);
        assert!(
            err.message.contains("chmod 600") && err.message.contains("open.key"),
            "{}",
            err.message
        );
        assert!(!err.message.contains(&good), "the error quotes the key");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            good,
            "a refused key file is left as it was"
        );
    }
    for (name, text, why) in [
        ("short.key", b64(&[5; 16]), "16 bytes"),
        ("long.key", b64(&[5; 33]), "33 bytes"),
        (
            "garbage.key",
            "this is not base64 !!!".to_string(),
            "not valid base64",
        ),
        ("empty.key", String::new(), "empty"),
    ] {
        let path = write(name, &text, 0o600);
        let err = MasterKeys::from_file_or_create(&path).unwrap_err();
        assert_eq!(err.class, ErrorClass::Invalid, "{name}");
        assert!(
            err.message.contains(why) && err.message.contains(name),
            "{name}: {}",
            err.message
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "{name} was rewritten"
        );
    }
    // A private file in the rotation form holds a current and a previous key.
    let rotated = write(
        "rotated.key",
        &format!("2:{}\n1:{}\n", b64(&[2; 32]), b64(&[1; 32])),
        0o600,
    );
    let keys = MasterKeys::from_file(&rotated).unwrap();
    assert_eq!((keys.current_version(), keys.versions()), (2, vec![1, 2]));
}

#[test]
fn the_configured_master_key_wins_over_the_key_file() {
    let dir = ScratchDir::create("sb-vault-env").unwrap();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let (current, previous) = (
        format!("2:{}", b64(&[2; 32])),
        format!("1:{}", b64(&[1; 32])),
    );
    let env = |name: &str| match name {
        ENV_MASTER_KEY => Some(current.clone()),
        ENV_MASTER_KEY_PREVIOUS => Some(previous.clone()),
        _ => None,
    };
    let keys = MasterKeys::resolve_with(env, dir.path()).unwrap();
    assert_eq!((keys.current_version(), keys.versions()), (2, vec![1, 2]));
    assert!(
        !key_file_path(dir.path()).exists(),
        "no key file is made when the key is configured"
    );
    same_key(keys, MasterKeys::new(2, [2; 32]).unwrap());

    let short = b64(&[2; 31]);
    let err =
        MasterKeys::resolve_with(|n| (n == ENV_MASTER_KEY).then(|| short.clone()), dir.path())
            .unwrap_err();
    assert_eq!(err.class, ErrorClass::Invalid);
    assert!(
        err.message.contains(ENV_MASTER_KEY) && !err.message.contains(&short),
        "{}",
        err.message
    );
    assert!(
        !key_file_path(dir.path()).exists(),
        "a bad configured key does not fall back to a key file"
    );
}

#[tokio::test]
async fn vault_debug_never_shows_keys_or_secrets() {
    let store = Store::sqlite().await;
    let Db::Sqlite(pool) = &store.db else {
        unreachable!()
    };
    let vault = SqliteSecretVault::new(pool.clone(), keys(1, [0x5A; 32]), clock());
    vault
        .put(
            &tenant("org-dbg"),
            "openai",
            &secret("sk-debug-visible-0000"),
        )
        .await
        .unwrap();
    let shown = format!("{vault:?}");
    let encoded = base64::engine::general_purpose::STANDARD.encode([0x5A; 32]);
    assert!(
        !shown.contains(&encoded) && !shown.contains("90, 90") && !shown.contains("sk-debug"),
        "{shown}"
    );
    assert!(shown.contains("SqliteSecretVault"), "{shown}");
}
