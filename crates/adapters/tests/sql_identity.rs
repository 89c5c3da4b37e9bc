//! Fault injection on the SQL identity stores: a database that is not there at start, a connection
//! killed in the middle of a multi-row write (Postgres `pg_terminate_backend`), unique violations,
//! a read-only and a full SQLite file. Each shows the caller's error class and that nothing was
//! half-written.

use sqlx::sqlite::SqliteConnectOptions;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_adapters::sql::scratch::{postgres_gate, ScratchDir, ScratchPostgres};
use switchboard_adapters::sql::{connect_sqlite, migrate_postgres, migrate_sqlite};
use switchboard_adapters::sql::{PgIdentityStore, SqliteIdentityStore};
use switchboard_adapters::store_auth::hash_token;
use switchboard_core::tenancy::{Principal, Scope, TenantContext};
use switchboard_core::{ApiKeyId, ErrorClass, LoginId, OrgId, Timestamp, UserId};
use switchboard_ports::identity::{
    IdentityStore, IdentityStoreError, LoginSession, Membership, NewApiKey, Org, Role, User,
};
use switchboard_ports::Classify;

fn postgres_required() -> bool {
    match postgres_gate() {
        Ok(()) => true,
        Err(reason) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("Postgres is required under CI: {reason}")
        }
        Err(reason) => {
            eprintln!("NOT RUN: this Postgres fault test needs a server: {reason}");
            false
        }
    }
}

fn class<T: std::fmt::Debug>(r: Result<T, IdentityStoreError>) -> ErrorClass {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.class(),
    }
}

fn tenant(org: &OrgId) -> TenantContext {
    Principal::from_verified_credential(org.clone(), UserId::parse("t").unwrap(), None, Vec::new())
        .tenant()
}

fn org(id: &str) -> Org {
    Org {
        id: OrgId::parse(id).unwrap(),
        name: "Acme".to_string(),
        created_at: Timestamp::from_millis(1),
    }
}

fn user(id: &str, email: &str) -> User {
    User {
        id: UserId::parse(id).unwrap(),
        email: email.to_string(),
        password_hash: None,
        created_at: Timestamp::from_millis(1),
    }
}

fn key(id: &str, org: &Org, user: &User, token: &str) -> NewApiKey {
    NewApiKey {
        id: ApiKeyId::parse(id).unwrap(),
        org: org.id.clone(),
        user: user.id.clone(),
        name: "ci".to_string(),
        prefix: token.chars().take(7).collect(),
        hash: hash_token(token),
        scopes: vec![Scope::Sessions],
        created_at: Timestamp::from_millis(2),
    }
}

fn login(id: &str, org: &Org, user: &User, token: &str) -> LoginSession {
    LoginSession {
        id: LoginId::parse(id).unwrap(),
        org: org.id.clone(),
        user: user.id.clone(),
        hash: hash_token(token),
        created_at: Timestamp::from_millis(2),
        expires_at: Timestamp::from_millis(3_600_000),
    }
}

/// An org with one owner, ready for keys and logins.
async fn seeded(store: &dyn IdentityStore) -> (Org, User) {
    let (o, u) = (org("o1"), user("u1", "Ann@Example.com"));
    store.create_org(&o).await.unwrap();
    store.create_user(&u).await.unwrap();
    store
        .add_member(&Membership {
            org: o.id.clone(),
            user: u.id.clone(),
            role: Role::Owner,
        })
        .await
        .unwrap();
    (o, u)
}

/// Unique violations are `Conflict` and a refused multi-row write leaves none of its rows: a login
/// whose token hash an API key already uses is refused after its `login_sessions` row was inserted
/// in the same transaction, and that row is gone.
async fn unique_violations_conflict_and_leave_nothing(store: &dyn IdentityStore) {
    let (o, u) = seeded(store).await;
    assert_eq!(
        class(store.create_org(&o).await),
        ErrorClass::Conflict,
        "same org id"
    );
    assert_eq!(
        class(store.create_user(&user("u2", "ann@EXAMPLE.COM")).await),
        ErrorClass::Conflict,
        "same email in another case"
    );
    assert_eq!(
        store.user_by_email("ann@example.com").await.unwrap(),
        u,
        "the first user keeps the email"
    );
    let member = Membership {
        org: o.id.clone(),
        user: u.id.clone(),
        role: Role::Member,
    };
    assert_eq!(
        class(store.add_member(&member).await),
        ErrorClass::Conflict,
        "same member"
    );

    let k = key("k1", &o, &u, "sk_one");
    store.create_api_key(&k).await.unwrap();
    assert_eq!(
        class(store.create_api_key(&k).await),
        ErrorClass::Conflict,
        "same key id"
    );
    assert_eq!(
        class(store.create_api_key(&key("k2", &o, &u, "sk_one")).await),
        ErrorClass::Conflict,
        "same token hash"
    );
    assert_eq!(
        class(store.create_login(&login("l1", &o, &u, "sk_one")).await),
        ErrorClass::Conflict,
        "a login with a key's token hash"
    );
    assert_eq!(
        class(store.find_login(&hash_token("sk_one")).await),
        ErrorClass::NotFound,
        "no half-written login"
    );
    assert_eq!(
        class(store.delete_login(&LoginId::parse("l1").unwrap()).await),
        ErrorClass::NotFound
    );
    let keys = store.list_api_keys(&tenant(&o.id)).await.unwrap();
    assert_eq!(
        keys.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        vec!["k1"],
        "one key, untouched"
    );
    assert_eq!(
        store.memberships(&u.id).await.unwrap(),
        vec![Membership {
            role: Role::Owner,
            ..member
        }]
    );

    // Unknown org or user: NotFound, as in the fake, and nothing written.
    assert_eq!(
        class(
            store
                .create_api_key(&key("k3", &org("nope"), &u, "sk_three"))
                .await
        ),
        ErrorClass::NotFound
    );
    assert_eq!(
        class(store.find_api_key(&hash_token("sk_three")).await),
        ErrorClass::NotFound
    );
    // A freed hash can be used again: deleting a login frees its token hash in the same statement.
    store
        .create_login(&login("l2", &o, &u, "tok_two"))
        .await
        .unwrap();
    store
        .delete_login(&LoginId::parse("l2").unwrap())
        .await
        .unwrap();
    store
        .create_api_key(&key("k4", &o, &u, "tok_two"))
        .await
        .unwrap();
}

#[tokio::test]
async fn sqlite_unique_violations_conflict_and_leave_nothing() {
    let dir = ScratchDir::create("sb-identity-faults").unwrap();
    let store = SqliteIdentityStore::open(&dir.join("app.db"), 4)
        .await
        .unwrap();
    unique_violations_conflict_and_leave_nothing(&store).await;
}

#[tokio::test]
async fn postgres_unique_violations_conflict_and_leave_nothing() {
    if !postgres_required() {
        return;
    }
    let db = ScratchPostgres::create().await.unwrap();
    let store = PgIdentityStore::connect(&db.url, 4).await.unwrap();
    unique_violations_conflict_and_leave_nothing(&store).await;
}

#[tokio::test]
async fn postgres_unreachable_at_start_is_unavailable_promptly() {
    // Nothing listens on port 1: the connection is refused.
    let started = Instant::now();
    let err = PgIdentityStore::connect("postgres://postgres@127.0.0.1:1/switchboard", 2)
        .await
        .expect_err("no server there");
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sqlite_unopenable_file_is_unavailable_at_start() {
    let dir = ScratchDir::create("sb-identity-faults").unwrap();
    let missing_dir = dir.join("no-such-dir").join("app.db");
    let err = SqliteIdentityStore::open(&missing_dir, 1)
        .await
        .expect_err("the directory is missing");
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    assert!(!missing_dir.exists(), "nothing was created");
}

/// Counts rows of `table` whose `column` is `value`.
async fn sqlite_count(pool: &sqlx::SqlitePool, table: &str, column: &str, value: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {table} WHERE {column} = $1"
    )))
    .bind(value)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn pg_count(pool: &sqlx::PgPool, table: &str, column: &str, value: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {table} WHERE {column} = $1"
    )))
    .bind(value)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn read_only_sqlite_file_is_unavailable_and_nothing_is_written() {
    let dir = ScratchDir::create("sb-identity-faults").unwrap();
    let path = dir.join("app.db");
    let rw = connect_sqlite(&path, 1).await.unwrap();
    migrate_sqlite(&rw).await.unwrap();
    let (o, u) = seeded(&SqliteIdentityStore::new(rw.clone())).await;
    SqliteIdentityStore::new(rw.clone())
        .create_api_key(&key("k1", &o, &u, "sk_one"))
        .await
        .unwrap();
    rw.close().await;

    let ro =
        sqlx::SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path).read_only(true))
            .await
            .unwrap();
    let store = SqliteIdentityStore::new(ro.clone());
    assert_eq!(store.org(&o.id).await.unwrap(), o, "reads still work");
    assert_eq!(
        class(store.create_user(&user("u2", "bo@example.com")).await),
        ErrorClass::Unavailable
    );
    assert_eq!(
        class(store.create_api_key(&key("k2", &o, &u, "sk_two")).await),
        ErrorClass::Unavailable,
        "a two-row write"
    );
    assert_eq!(
        class(store.create_login(&login("l1", &o, &u, "tok")).await),
        ErrorClass::Unavailable
    );
    assert_eq!(
        class(
            store
                .revoke_api_key(
                    &tenant(&o.id),
                    &ApiKeyId::parse("k1").unwrap(),
                    Timestamp::from_millis(9)
                )
                .await
        ),
        ErrorClass::Unavailable
    );
    ro.close().await;

    let rw = connect_sqlite(&path, 1).await.unwrap();
    let store = SqliteIdentityStore::new(rw.clone());
    assert_eq!(
        class(store.user_by_email("bo@example.com").await),
        ErrorClass::NotFound
    );
    assert_eq!(sqlite_count(&rw, "api_keys", "id", "k2").await, 0);
    assert_eq!(
        sqlite_count(&rw, "token_hashes", "api_key_id", "k2").await,
        0
    );
    assert_eq!(sqlite_count(&rw, "login_sessions", "id", "l1").await, 0);
    assert_eq!(
        store
            .find_api_key(&hash_token("sk_one"))
            .await
            .unwrap()
            .meta
            .revoked_at,
        None
    );
}

#[tokio::test]
async fn full_sqlite_file_is_unavailable_and_nothing_is_written() {
    let dir = ScratchDir::create("sb-identity-faults").unwrap();
    let pool = connect_sqlite(&dir.join("app.db"), 1).await.unwrap();
    migrate_sqlite(&pool).await.unwrap();
    let store = SqliteIdentityStore::new(pool.clone());
    let (o, u) = seeded(&store).await;
    // The one pooled connection may not grow the file past its current size: the disk is "full".
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA max_page_count = {pages}"
    )))
    .execute(&pool)
    .await
    .unwrap();

    let big = "x".repeat(256 * 1024);
    let mut fat_key = key("k1", &o, &u, "sk_one");
    fat_key.name = big.clone();
    assert_eq!(
        class(store.create_api_key(&fat_key).await),
        ErrorClass::Unavailable,
        "a two-row write"
    );
    let mut fat_user = user("u2", "bo@example.com");
    fat_user.password_hash = Some(big);
    assert_eq!(
        class(store.create_user(&fat_user).await),
        ErrorClass::Unavailable
    );

    assert_eq!(sqlite_count(&pool, "api_keys", "id", "k1").await, 0);
    assert_eq!(
        sqlite_count(&pool, "token_hashes", "api_key_id", "k1").await,
        0
    );
    assert_eq!(
        class(store.user_by_email("bo@example.com").await),
        ErrorClass::NotFound
    );
    // Room again: the same writes succeed.
    sqlx::query("PRAGMA max_page_count = 1073741823")
        .execute(&pool)
        .await
        .unwrap();
    store.create_api_key(&fat_key).await.unwrap();
    assert_eq!(
        store.find_api_key(&fat_key.hash).await.unwrap().meta.id,
        fat_key.id
    );
}

/// A key's two rows (`api_keys`, `token_hashes`) are written in one transaction. Another session
/// holds a lock on `token_hashes`, so the store's transaction stops after its first row; its
/// backend is then terminated. The caller gets `Unavailable`, neither row exists, and a retry
/// writes both exactly once.
#[tokio::test]
async fn postgres_connection_killed_mid_transaction_is_unavailable_and_nothing_is_written() {
    if !postgres_required() {
        return;
    }
    let db = ScratchPostgres::create().await.unwrap();
    let pool = db.pool(4).await.unwrap();
    migrate_postgres(&pool).await.unwrap();
    let store = Arc::new(PgIdentityStore::new(pool.clone()));
    let (o, u) = seeded(&*store).await;
    let k = key("k1", &o, &u, "sk_one");

    let admin = db.pool(2).await.unwrap();
    let mut blocker = admin.begin().await.unwrap();
    sqlx::query("LOCK TABLE token_hashes IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let writer = {
        let (store, k) = (store.clone(), k.clone());
        tokio::spawn(async move { store.create_api_key(&k).await })
    };
    // Wait (bounded) until the store's transaction has written its first row and waits on the lock.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
             AND query LIKE 'INSERT INTO token_hashes%'",
        )
        .fetch_optional(&admin)
        .await
        .unwrap();
        if let Some(pid) = waiting {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the store's write never reached its second row"
        );
        tokio::task::yield_now().await;
    };
    let in_flight: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_locks WHERE pid = $1 AND relation = 'api_keys'::regclass AND mode = 'RowExclusiveLock'",
    )
    .bind(pid)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(
        in_flight, 1,
        "the first row was written inside the open transaction"
    );

    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(killed);
    let err = writer
        .await
        .unwrap()
        .expect_err("the connection died before commit");
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    blocker.rollback().await.unwrap();

    assert_eq!(
        pg_count(&pool, "api_keys", "id", "k1").await,
        0,
        "no key row"
    );
    assert_eq!(
        pg_count(&pool, "token_hashes", "api_key_id", "k1").await,
        0,
        "no hash row"
    );
    assert_eq!(
        class(store.find_api_key(&k.hash).await),
        ErrorClass::NotFound
    );

    // The pool replaced the dead connection; the retry writes both rows once.
    store.create_api_key(&k).await.unwrap();
    assert_eq!(pg_count(&pool, "api_keys", "id", "k1").await, 1);
    assert_eq!(pg_count(&pool, "token_hashes", "api_key_id", "k1").await, 1);
    assert_eq!(store.find_api_key(&k.hash).await.unwrap().meta.id, k.id);
}

/// A single-statement write whose backend is terminated while it waits (on a row lock held by
/// another session) is `Unavailable` and does not happen; the revocation time stays unset.
#[tokio::test]
async fn postgres_connection_killed_during_a_revoke_is_unavailable_and_the_key_is_unchanged() {
    if !postgres_required() {
        return;
    }
    let db = ScratchPostgres::create().await.unwrap();
    let pool = db.pool(4).await.unwrap();
    migrate_postgres(&pool).await.unwrap();
    let store = Arc::new(PgIdentityStore::new(pool.clone()));
    let (o, u) = seeded(&*store).await;
    let k = key("k1", &o, &u, "sk_one");
    store.create_api_key(&k).await.unwrap();

    let admin = db.pool(2).await.unwrap();
    let mut blocker = admin.begin().await.unwrap();
    sqlx::query("SELECT id FROM api_keys WHERE id = 'k1' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let revoker = {
        let (store, org) = (store.clone(), o.id.clone());
        tokio::spawn(async move {
            store
                .revoke_api_key(
                    &tenant(&org),
                    &ApiKeyId::parse("k1").unwrap(),
                    Timestamp::from_millis(60),
                )
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'UPDATE api_keys%'",
        )
        .fetch_optional(&admin)
        .await
        .unwrap();
        if let Some(pid) = waiting {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the revoke never reached the row"
        );
        tokio::task::yield_now().await;
    };
    let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&admin)
        .await
        .unwrap();
    let err = revoker.await.unwrap().expect_err("the connection died");
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    blocker.rollback().await.unwrap();

    assert_eq!(
        store.find_api_key(&k.hash).await.unwrap().meta.revoked_at,
        None,
        "not revoked"
    );
    store
        .revoke_api_key(&tenant(&o.id), &k.id, Timestamp::from_millis(61))
        .await
        .unwrap();
    store
        .revoke_api_key(&tenant(&o.id), &k.id, Timestamp::from_millis(99))
        .await
        .unwrap();
    assert_eq!(
        store.find_api_key(&k.hash).await.unwrap().meta.revoked_at,
        Some(Timestamp::from_millis(61)),
        "revoking again keeps the first time"
    );
}
