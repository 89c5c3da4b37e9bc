//! Contract cases, fault catalog, `Faulty` wrapper and disruption cases for `IdentityStore`; also
//! the small helpers (unique ids, tenants, token hashes, disruption runner) shared by the identity
//! and record planes' modules.

use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, FaultPlan, Faulty};
use crate::harness::{
    self, BoxFut, Case, CaseResult, ImplKind, Implementation, Outcome, Report, CASE_TIMEOUT,
};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_adapters::sql::scratch::{postgres_gate, ScratchDir, ScratchPostgres};
use switchboard_adapters::sql::{PgIdentityStore, SqliteIdentityStore};
use switchboard_adapters::store_auth::{hash_token, StoreAuthenticator};
use switchboard_core::crypto::TokenHash;
use switchboard_core::tenancy::{Principal, Scope, TenantContext};
use switchboard_core::{ApiKeyId, ErrorClass, LoginId, OrgId, Timestamp, UserId};
use switchboard_fakes::identity_store::InMemoryIdentityStore;
use switchboard_fakes::InMemoryClock;
use switchboard_ports::identity::{
    ApiKeyMeta, ApiKeyRecord, Authenticator, Credential, IdentityStore, IdentityStoreError,
    LoginSession, Membership, NewApiKey, Org, Role, User,
};
use switchboard_ports::{Classify, PortId, SecretString};

// ---------------------------------------------------------------------------------------------
// Helpers shared by the identity and record planes' modules.
// ---------------------------------------------------------------------------------------------

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A name no other case in this process uses: `prefix-pid-n`.
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn new_org_id() -> OrgId {
    OrgId::parse(unique("org")).expect("a valid org id")
}

pub(crate) fn new_user_id() -> UserId {
    UserId::parse(unique("user")).expect("a valid user id")
}

/// The tenant context of `org`, as an authenticator would produce it.
pub(crate) fn tenant(org: &OrgId) -> TenantContext {
    Principal::from_verified_credential(
        org.clone(),
        UserId::parse("conformance").expect("a valid user id"),
        None,
        Vec::new(),
    )
    .tenant()
}

/// A fixed instant (2026-01-01T00:00:00Z) plus `secs` seconds.
pub(crate) fn at(secs: u64) -> Timestamp {
    Timestamp::from_millis(1_767_225_600_000 + secs * 1000)
}

/// SHA-256 of a token, as the shell stores it.
pub(crate) fn token_hash(token: &str) -> TokenHash {
    hash_token(token)
}

/// A fresh bearer token: `prefix` then 64 hex digits (deterministic per process, distinct per call).
pub(crate) fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", hex_of(&token_hash(&unique("token")).0))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `result` failed with the class `fault` makes callers see.
pub(crate) fn expect_fault<T: std::fmt::Debug, E: Classify + std::fmt::Display>(
    what: &str,
    result: Result<T, E>,
    fault: Fault,
) -> CaseResult {
    let want = fault
        .class()
        .ok_or_else(|| format!("{what}: {fault:?} has no error class"))?;
    match result {
        Ok(v) => Err(format!(
            "{what} succeeded with {v:?} under {fault:?}; expected a {want:?} error"
        )),
        Err(e) if e.class() == want => Ok(()),
        Err(e) => Err(format!(
            "{what} failed as {:?} ({e}) under {fault:?}; expected {want:?}",
            e.class()
        )),
    }
}

/// Runs a disruption flow for one catalog entry on its own runtime, as the runner does for trials.
pub(crate) fn disruption_case(
    port: PortId,
    entry: &CatalogEntry,
    flow: fn(CatalogEntry) -> BoxFut<'static, CaseResult>,
) -> DisruptionCase {
    let entry = *entry;
    DisruptionCase {
        port,
        entry: entry.name(),
        run: Box::new(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                harness::block_on(
                    async move { tokio::time::timeout(CASE_TIMEOUT, flow(entry)).await },
                )
            }));
            match ran {
                Ok(Ok(Ok(()))) => Outcome::Passed,
                Ok(Ok(Err(msg))) => Outcome::Failed(msg),
                Ok(Err(_)) => {
                    Outcome::Failed(format!("disruption did not finish within {CASE_TIMEOUT:?}"))
                }
                Err(p) => Outcome::Failed(harness::panic_message(&p)),
            }
        }),
    }
}

/// Creates an org, a user and the user's membership with `role`.
pub(crate) async fn seed_member(
    store: &dyn IdentityStore,
    role: Role,
) -> Result<(OrgId, UserId), String> {
    let org = Org {
        id: new_org_id(),
        name: "Acme".to_string(),
        created_at: at(0),
    };
    let user = User {
        id: new_user_id(),
        email: format!("{}@example.com", unique("someone")),
        password_hash: None,
        created_at: at(0),
    };
    ok!(store.create_org(&org).await);
    ok!(store.create_user(&user).await);
    ok!(store
        .add_member(&Membership {
            org: org.id.clone(),
            user: user.id.clone(),
            role
        })
        .await);
    Ok((org.id, user.id))
}

/// A new API key row for `token`.
pub(crate) fn api_key_row(
    org: &OrgId,
    user: &UserId,
    token: &str,
    scopes: Vec<Scope>,
) -> NewApiKey {
    NewApiKey {
        id: ApiKeyId::parse(unique("key")).expect("a valid key id"),
        org: org.clone(),
        user: user.clone(),
        name: "ci".to_string(),
        prefix: token.chars().take(7).collect(),
        hash: token_hash(token),
        scopes,
        created_at: at(1),
    }
}

/// A login session row for `token`, expiring `ttl` after `created_at`.
pub(crate) fn login_row(
    org: &OrgId,
    user: &UserId,
    token: &str,
    created_at: Timestamp,
    ttl: Duration,
) -> LoginSession {
    LoginSession {
        id: LoginId::parse(unique("login")).expect("a valid login id"),
        org: org.clone(),
        user: user.clone(),
        hash: token_hash(token),
        created_at,
        expires_at: created_at.add(ttl),
    }
}

/// Keeps a scratch database (a temp dir or a Postgres database) alive while a fixture uses it.
pub(crate) type Scratch = Arc<dyn std::any::Any + Send + Sync>;

/// A migrated `SqliteIdentityStore` on a fresh file, and the guard of its directory.
pub(crate) async fn sqlite_identity_store() -> Result<(Arc<dyn IdentityStore>, Scratch), String> {
    let dir = ScratchDir::create("sb-identity")?;
    let store = SqliteIdentityStore::open(&dir.join("app.db"), 4)
        .await
        .map_err(|e| e.to_string())?;
    Ok((Arc::new(store), Arc::new(dir)))
}

/// A migrated `PgIdentityStore` on a fresh database, and the guard that drops it.
pub(crate) async fn postgres_identity_store() -> Result<(Arc<dyn IdentityStore>, Scratch), String> {
    let db = ScratchPostgres::create().await?;
    let store = PgIdentityStore::connect(&db.url, 4)
        .await
        .map_err(|e| e.to_string())?;
    Ok((Arc::new(store), Arc::new(db)))
}

/// A timeout for waiting on something a case expects to happen promptly.
pub(crate) async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| format!("{what} did not happen within 10s"))
}

// ---------------------------------------------------------------------------------------------
// The IdentityStore suite.
// ---------------------------------------------------------------------------------------------

/// A fresh, empty identity store; `scratch` keeps its database alive for the whole case.
pub struct Fixture {
    pub store: Arc<dyn IdentityStore>,
    pub scratch: Option<Scratch>,
}

/// One case per `# Contract` bullet of `IdentityStore`.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "create_org_and_find",
            run: |f| Box::pin(create_org_and_find(f)),
        },
        Case {
            name: "user_email_unique",
            run: |f| Box::pin(user_email_unique(f)),
        },
        Case {
            name: "membership_roles",
            run: |f| Box::pin(membership_roles(f)),
        },
        Case {
            name: "api_key_stored_hashed",
            run: |f| Box::pin(api_key_stored_hashed(f)),
        },
        Case {
            name: "api_key_listing_is_tenant_scoped",
            run: |f| Box::pin(api_key_listing_is_tenant_scoped(f)),
        },
        Case {
            name: "api_key_revoke",
            run: |f| Box::pin(api_key_revoke(f)),
        },
        Case {
            name: "login_session_round_trip",
            run: |f| Box::pin(login_session_round_trip(f)),
        },
    ]
}

async fn create_org_and_find(f: Fixture) -> CaseResult {
    let org = Org {
        id: new_org_id(),
        name: "Acme Corp".to_string(),
        created_at: at(0),
    };
    ok!(f.store.create_org(&org).await);
    ensure_eq!(
        ok!(f.store.org(&org.id).await),
        org,
        "the org reads back equal"
    );
    expect_class!(f.store.org(&new_org_id()).await, ErrorClass::NotFound);
    Ok(())
}

async fn user_email_unique(f: Fixture) -> CaseResult {
    let email = format!("{}@Example.com", unique("ann"));
    let first = User {
        id: new_user_id(),
        email: email.clone(),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string()),
        created_at: at(0),
    };
    ok!(f.store.create_user(&first).await);
    let same_email = User {
        id: new_user_id(),
        email: email.to_uppercase(),
        password_hash: None,
        created_at: at(1),
    };
    expect_class!(f.store.create_user(&same_email).await, ErrorClass::Conflict);
    let lower = User {
        id: new_user_id(),
        email: email.to_lowercase(),
        password_hash: None,
        created_at: at(1),
    };
    expect_class!(f.store.create_user(&lower).await, ErrorClass::Conflict);
    ensure_eq!(
        ok!(f.store.user_by_email(&email).await),
        first,
        "the first user keeps the email"
    );
    Ok(())
}

async fn membership_roles(f: Fixture) -> CaseResult {
    let (org1, user) = seed_member(&*f.store, Role::Admin).await?;
    let org2 = Org {
        id: new_org_id(),
        name: "Second".to_string(),
        created_at: at(0),
    };
    ok!(f.store.create_org(&org2).await);
    ok!(f
        .store
        .add_member(&Membership {
            org: org2.id.clone(),
            user: user.clone(),
            role: Role::Member
        })
        .await);

    let mut want = vec![
        Membership {
            org: org1.clone(),
            user: user.clone(),
            role: Role::Admin,
        },
        Membership {
            org: org2.id.clone(),
            user: user.clone(),
            role: Role::Member,
        },
    ];
    want.sort_by(|a, b| a.org.cmp(&b.org));
    let mut got = ok!(f.store.memberships(&user).await);
    got.sort_by(|a, b| a.org.cmp(&b.org));
    ensure_eq!(got, want, "memberships list both orgs with their roles");

    expect_class!(
        f.store
            .add_member(&Membership {
                org: org1.clone(),
                user: user.clone(),
                role: Role::Member
            })
            .await,
        ErrorClass::Conflict
    );
    let mut after = ok!(f.store.memberships(&user).await);
    after.sort_by(|a, b| a.org.cmp(&b.org));
    ensure_eq!(after, want, "a refused second membership changes nothing");
    Ok(())
}

async fn api_key_stored_hashed(f: Fixture) -> CaseResult {
    let (org, user) = seed_member(&*f.store, Role::Member).await?;
    let token = new_token("sk_");
    let key = api_key_row(
        &org,
        &user,
        &token,
        vec![Scope::Sessions, Scope::Credentials],
    );
    ok!(f.store.create_api_key(&key).await);

    let found: ApiKeyRecord = ok!(f.store.find_api_key(&token_hash(&token)).await);
    ensure_eq!(found.meta.id, key.id);
    ensure_eq!(found.org, org);
    ensure_eq!(found.user, user);
    ensure_eq!(found.meta.prefix, key.prefix);
    ensure_eq!(found.meta.name, key.name);
    ensure_eq!(found.meta.created_at, key.created_at);
    ensure_eq!(found.meta.revoked_at, None);
    ensure_eq!(found.scopes, key.scopes);
    ensure!(
        found.hash.matches(&key.hash),
        "the stored hash is the key's hash"
    );

    expect_class!(
        f.store
            .find_api_key(&token_hash(&format!("{token}x")))
            .await,
        ErrorClass::NotFound
    );
    expect_class!(
        f.store.find_api_key(&token_hash(&new_token("sk_"))).await,
        ErrorClass::NotFound
    );
    Ok(())
}

async fn api_key_listing_is_tenant_scoped(f: Fixture) -> CaseResult {
    let (org_a, user_a) = seed_member(&*f.store, Role::Owner).await?;
    let (org_b, user_b) = seed_member(&*f.store, Role::Owner).await?;
    let a1 = api_key_row(&org_a, &user_a, &new_token("sk_"), vec![Scope::Sessions]);
    let a2 = api_key_row(&org_a, &user_a, &new_token("sk_"), vec![Scope::ApiKeys]);
    let b1 = api_key_row(&org_b, &user_b, &new_token("sk_"), vec![Scope::Sessions]);
    for k in [&a1, &a2, &b1] {
        ok!(f.store.create_api_key(k).await);
    }
    let ids = |v: Vec<ApiKeyMeta>| v.into_iter().map(|m| m.id).collect::<BTreeSet<_>>();
    ensure_eq!(
        ids(ok!(f.store.list_api_keys(&tenant(&org_a)).await)),
        BTreeSet::from([a1.id.clone(), a2.id.clone()])
    );
    ensure_eq!(
        ids(ok!(f.store.list_api_keys(&tenant(&org_b)).await)),
        BTreeSet::from([b1.id.clone()])
    );
    ensure!(
        ok!(f.store.list_api_keys(&tenant(&new_org_id())).await).is_empty(),
        "an org without keys lists none"
    );
    Ok(())
}

async fn api_key_revoke(f: Fixture) -> CaseResult {
    let (org_a, user_a) = seed_member(&*f.store, Role::Owner).await?;
    let (org_b, user_b) = seed_member(&*f.store, Role::Owner).await?;
    let (token_a, token_b) = (new_token("sk_"), new_token("sk_"));
    let ka = api_key_row(&org_a, &user_a, &token_a, vec![Scope::Sessions]);
    let kb = api_key_row(&org_b, &user_b, &token_b, vec![Scope::Sessions]);
    ok!(f.store.create_api_key(&ka).await);
    ok!(f.store.create_api_key(&kb).await);

    ok!(f
        .store
        .revoke_api_key(&tenant(&org_a), &ka.id, at(60))
        .await);
    let listed = ok!(f.store.list_api_keys(&tenant(&org_a)).await);
    ensure_eq!(
        listed
            .iter()
            .find(|m| m.id == ka.id)
            .and_then(|m| m.revoked_at),
        Some(at(60)),
        "the listing shows the revocation"
    );
    ensure_eq!(
        ok!(f.store.find_api_key(&token_hash(&token_a)).await)
            .meta
            .revoked_at,
        Some(at(60))
    );

    expect_class!(
        f.store
            .revoke_api_key(&tenant(&org_a), &kb.id, at(61))
            .await,
        ErrorClass::NotFound
    );
    ensure_eq!(
        ok!(f.store.find_api_key(&token_hash(&token_b)).await)
            .meta
            .revoked_at,
        None,
        "another org's key keeps working"
    );
    Ok(())
}

async fn login_session_round_trip(f: Fixture) -> CaseResult {
    let (org, user) = seed_member(&*f.store, Role::Member).await?;
    let token = new_token("");
    let login = login_row(&org, &user, &token, at(0), Duration::from_secs(3600));
    ok!(f.store.create_login(&login).await);
    ensure_eq!(
        ok!(f.store.find_login(&token_hash(&token)).await),
        login,
        "the login reads back by its hash"
    );
    expect_class!(
        f.store.find_login(&token_hash(&new_token(""))).await,
        ErrorClass::NotFound
    );
    ok!(f.store.delete_login(&login.id).await);
    expect_class!(
        f.store.find_login(&token_hash(&token)).await,
        ErrorClass::NotFound
    );
    Ok(())
}

/// Every implementation of `IdentityStore`: the fake, and the SQL stores on SQLite and Postgres
/// (each fixture on its own scratch database).
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(Fixture {
                store: Arc::new(InMemoryIdentityStore::new()),
                scratch: None,
            })
        }),
        Implementation::new("sqlite", ImplKind::Adapter, || async {
            let (store, scratch) = sqlite_identity_store().await?;
            Ok(Fixture {
                store,
                scratch: Some(scratch),
            })
        }),
        Implementation::new("postgres", ImplKind::Adapter, || async {
            let (store, scratch) = postgres_identity_store().await?;
            Ok(Fixture {
                store,
                scratch: Some(scratch),
            })
        })
        .gated(postgres_gate),
    ]
}

/// The fault catalog of `IdentityStore`.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "find_api_key",
        outcome: "API-key authentication answers Unavailable (503), admits nobody, and works again once the store heals",
    },
    CatalogEntry { fault: Fault::Timeout, op: "find_api_key", outcome: "API-key authentication answers Timeout and admits nobody; nothing is changed" },
    CatalogEntry { fault: Fault::Corrupt, op: "find_api_key", outcome: "API-key authentication fails Corrupt and admits nobody: a damaged key row is never trusted" },
    CatalogEntry { fault: Fault::Slow, op: "find_api_key", outcome: "a slow lookup still finds the same key row and admits the same principal" },
    CatalogEntry { fault: Fault::Unavailable, op: "find_login", outcome: "login-token authentication answers Unavailable and admits nobody until the store heals" },
    CatalogEntry { fault: Fault::Timeout, op: "find_login", outcome: "login-token authentication answers Timeout and admits nobody; nothing is changed" },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "create_api_key",
        outcome: "key creation fails with no key row written; a retry after the store heals creates exactly one",
    },
    CatalogEntry {
        fault: Fault::LostAnswer,
        op: "create_api_key",
        outcome: "the key row is written once; a retry with the same id is Conflict and the one row authenticates",
    },
    CatalogEntry { fault: Fault::Timeout, op: "revoke_api_key", outcome: "the revoke fails and the key is unchanged; a retry after healing revokes it" },
    CatalogEntry {
        fault: Fault::LostAnswer,
        op: "revoke_api_key",
        outcome: "the key is revoked once; a retry succeeds and keeps the first revocation time",
    },
    CatalogEntry { fault: Fault::Unavailable, op: "create_user", outcome: "sign-up fails with no user written; a retry after healing creates exactly one" },
];

#[async_trait]
impl IdentityStore for Faulty<dyn IdentityStore> {
    async fn create_org(&self, org: &Org) -> Result<(), IdentityStoreError> {
        self.call("create_org", || self.inner.create_org(org)).await
    }
    async fn org(&self, id: &OrgId) -> Result<Org, IdentityStoreError> {
        self.call("org", || self.inner.org(id)).await
    }
    async fn create_user(&self, user: &User) -> Result<(), IdentityStoreError> {
        self.call("create_user", || self.inner.create_user(user))
            .await
    }
    async fn user_by_email(&self, email: &str) -> Result<User, IdentityStoreError> {
        self.call("user_by_email", || self.inner.user_by_email(email))
            .await
    }
    async fn add_member(&self, membership: &Membership) -> Result<(), IdentityStoreError> {
        self.call("add_member", || self.inner.add_member(membership))
            .await
    }
    async fn memberships(&self, user: &UserId) -> Result<Vec<Membership>, IdentityStoreError> {
        self.call("memberships", || self.inner.memberships(user))
            .await
    }
    async fn create_api_key(&self, key: &NewApiKey) -> Result<(), IdentityStoreError> {
        self.call("create_api_key", || self.inner.create_api_key(key))
            .await
    }
    async fn find_api_key(&self, hash: &TokenHash) -> Result<ApiKeyRecord, IdentityStoreError> {
        self.call("find_api_key", || self.inner.find_api_key(hash))
            .await
    }
    async fn list_api_keys(
        &self,
        tenant: &TenantContext,
    ) -> Result<Vec<ApiKeyMeta>, IdentityStoreError> {
        self.call("list_api_keys", || self.inner.list_api_keys(tenant))
            .await
    }
    async fn revoke_api_key(
        &self,
        tenant: &TenantContext,
        id: &ApiKeyId,
        at: Timestamp,
    ) -> Result<(), IdentityStoreError> {
        self.call("revoke_api_key", || {
            self.inner.revoke_api_key(tenant, id, at)
        })
        .await
    }
    async fn create_login(&self, login: &LoginSession) -> Result<(), IdentityStoreError> {
        self.call("create_login", || self.inner.create_login(login))
            .await
    }
    async fn find_login(&self, hash: &TokenHash) -> Result<LoginSession, IdentityStoreError> {
        self.call("find_login", || self.inner.find_login(hash))
            .await
    }
    async fn delete_login(&self, id: &LoginId) -> Result<(), IdentityStoreError> {
        self.call("delete_login", || self.inner.delete_login(id))
            .await
    }
}

/// The suite of `IdentityStore`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::IdentityStore, cases(), implementations(), CATALOG)
}

/// Runs every contract case against an implementation: the adapter author's entry point.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    Report::run(harness::trials(
        PortId::IdentityStore,
        &Implementation::new(name, ImplKind::Adapter, make),
        &cases(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Disruptions: each catalogued fault through `Faulty` around the fake.
// ---------------------------------------------------------------------------------------------

/// One disruption case per catalog entry.
pub fn disruptions() -> Vec<DisruptionCase> {
    CATALOG
        .iter()
        .map(|e| disruption_case(PortId::IdentityStore, e, disruption_flow))
        .collect()
}

/// The un-faulted store, the faulty view of it, its plan, and the store-backed authenticator
/// reading through the faulty view.
struct Rig {
    inner: Arc<dyn IdentityStore>,
    faulty: Arc<Faulty<dyn IdentityStore>>,
    plan: FaultPlan,
    auth: StoreAuthenticator,
}

fn rig(plan: FaultPlan) -> Rig {
    let inner: Arc<dyn IdentityStore> = Arc::new(InMemoryIdentityStore::new());
    let faulty = Arc::new(Faulty::new(inner.clone(), plan.clone()));
    let auth = StoreAuthenticator::new(faulty.clone(), Arc::new(InMemoryClock::at(at(0))));
    Rig {
        inner,
        faulty,
        plan,
        auth,
    }
}

fn disruption_flow(entry: CatalogEntry) -> BoxFut<'static, CaseResult> {
    Box::pin(async move {
        match (entry.fault, entry.op) {
            (fault, "find_api_key") => find_api_key_disrupted(fault).await,
            (fault, "find_login") => find_login_disrupted(fault).await,
            (Fault::Unavailable, "create_api_key") => create_api_key_refused().await,
            (Fault::LostAnswer, "create_api_key") => create_api_key_answer_lost().await,
            (Fault::Timeout, "revoke_api_key") => revoke_refused().await,
            (Fault::LostAnswer, "revoke_api_key") => revoke_answer_lost().await,
            (Fault::Unavailable, "create_user") => create_user_refused().await,
            _ => Err(format!("no disruption flow written for {}", entry.name())),
        }
    })
}

async fn find_api_key_disrupted(fault: Fault) -> CaseResult {
    let r = rig(FaultPlan::always("find_api_key", fault));
    let (org, user) = seed_member(&*r.inner, Role::Member).await?;
    let token = new_token("sk_");
    let key = api_key_row(&org, &user, &token, vec![Scope::Sessions]);
    ok!(r.inner.create_api_key(&key).await);
    let credential = Credential(SecretString::new(token.clone()));

    if fault == Fault::Slow {
        ensure_eq!(
            ok!(r.faulty.find_api_key(&token_hash(&token)).await),
            ok!(r.inner.find_api_key(&token_hash(&token)).await)
        );
        let p = ok!(r.auth.authenticate(&credential).await);
        ensure_eq!(p.api_key_id(), Some(&key.id));
        return Ok(());
    }
    expect_fault(
        "find_api_key",
        r.faulty.find_api_key(&token_hash(&token)).await,
        fault,
    )?;
    expect_fault(
        "authenticate",
        r.auth.authenticate(&credential).await,
        fault,
    )?;
    ensure_eq!(
        ok!(r.inner.find_api_key(&token_hash(&token)).await)
            .meta
            .revoked_at,
        None,
        "the key is unchanged"
    );

    r.plan.heal();
    let p = ok!(r.auth.authenticate(&credential).await);
    ensure_eq!(
        (p.org(), p.api_key_id()),
        (&org, Some(&key.id)),
        "the key authenticates after healing"
    );
    Ok(())
}

async fn find_login_disrupted(fault: Fault) -> CaseResult {
    let r = rig(FaultPlan::always("find_login", fault));
    let (org, user) = seed_member(&*r.inner, Role::Member).await?;
    let token = new_token("");
    ok!(r
        .inner
        .create_login(&login_row(
            &org,
            &user,
            &token,
            at(0),
            Duration::from_secs(3600)
        ))
        .await);
    let credential = Credential(SecretString::new(token.clone()));

    expect_fault(
        "find_login",
        r.faulty.find_login(&token_hash(&token)).await,
        fault,
    )?;
    expect_fault(
        "authenticate",
        r.auth.authenticate(&credential).await,
        fault,
    )?;
    ok!(r.inner.find_login(&token_hash(&token)).await);

    r.plan.heal();
    let p = ok!(r.auth.authenticate(&credential).await);
    ensure_eq!(
        (p.org(), p.user()),
        (&org, &user),
        "the login authenticates after healing"
    );
    Ok(())
}

async fn create_api_key_refused() -> CaseResult {
    let r = rig(FaultPlan::always("create_api_key", Fault::Unavailable));
    let (org, user) = seed_member(&*r.inner, Role::Owner).await?;
    let token = new_token("sk_");
    let key = api_key_row(&org, &user, &token, vec![Scope::Sessions]);
    expect_fault(
        "create_api_key",
        r.faulty.create_api_key(&key).await,
        Fault::Unavailable,
    )?;
    expect_class!(r.inner.find_api_key(&key.hash).await, ErrorClass::NotFound);
    ensure!(
        ok!(r.inner.list_api_keys(&tenant(&org)).await).is_empty(),
        "no key row after a refused create"
    );

    r.plan.heal();
    ok!(r.faulty.create_api_key(&key).await);
    ensure_eq!(
        ok!(r.inner.list_api_keys(&tenant(&org)).await).len(),
        1,
        "exactly one key after the retry"
    );
    ok!(r
        .auth
        .authenticate(&Credential(SecretString::new(token)))
        .await);
    Ok(())
}

async fn create_api_key_answer_lost() -> CaseResult {
    let r = rig(FaultPlan::times("create_api_key", Fault::LostAnswer, 1));
    let (org, user) = seed_member(&*r.inner, Role::Owner).await?;
    let token = new_token("sk_");
    let key = api_key_row(&org, &user, &token, vec![Scope::Sessions]);
    expect_fault(
        "create_api_key",
        r.faulty.create_api_key(&key).await,
        Fault::LostAnswer,
    )?;
    ensure_eq!(
        ok!(r.inner.find_api_key(&key.hash).await).meta.id,
        key.id,
        "the write happened"
    );
    expect_class!(r.faulty.create_api_key(&key).await, ErrorClass::Conflict);
    ensure_eq!(
        ok!(r.inner.list_api_keys(&tenant(&org)).await).len(),
        1,
        "the retry did not duplicate the key"
    );
    let p = ok!(r
        .auth
        .authenticate(&Credential(SecretString::new(token)))
        .await);
    ensure_eq!(p.api_key_id(), Some(&key.id));
    Ok(())
}

async fn revoke_refused() -> CaseResult {
    let r = rig(FaultPlan::always("revoke_api_key", Fault::Timeout));
    let (org, user) = seed_member(&*r.inner, Role::Owner).await?;
    let token = new_token("sk_");
    let key = api_key_row(&org, &user, &token, vec![Scope::Sessions]);
    ok!(r.inner.create_api_key(&key).await);
    expect_fault(
        "revoke_api_key",
        r.faulty
            .revoke_api_key(&tenant(&org), &key.id, at(10))
            .await,
        Fault::Timeout,
    )?;
    ensure_eq!(
        ok!(r.inner.find_api_key(&key.hash).await).meta.revoked_at,
        None,
        "a failed revoke changes nothing"
    );

    r.plan.heal();
    ok!(r
        .faulty
        .revoke_api_key(&tenant(&org), &key.id, at(11))
        .await);
    ensure_eq!(
        ok!(r.inner.find_api_key(&key.hash).await).meta.revoked_at,
        Some(at(11))
    );
    expect_class!(
        r.auth
            .authenticate(&Credential(SecretString::new(token)))
            .await,
        ErrorClass::Unauthorized
    );
    Ok(())
}

async fn revoke_answer_lost() -> CaseResult {
    let r = rig(FaultPlan::times("revoke_api_key", Fault::LostAnswer, 1));
    let (org, user) = seed_member(&*r.inner, Role::Owner).await?;
    let token = new_token("sk_");
    let key = api_key_row(&org, &user, &token, vec![Scope::Sessions]);
    ok!(r.inner.create_api_key(&key).await);
    expect_fault(
        "revoke_api_key",
        r.faulty
            .revoke_api_key(&tenant(&org), &key.id, at(10))
            .await,
        Fault::LostAnswer,
    )?;
    ensure_eq!(
        ok!(r.inner.find_api_key(&key.hash).await).meta.revoked_at,
        Some(at(10)),
        "the revoke happened"
    );
    ok!(r
        .faulty
        .revoke_api_key(&tenant(&org), &key.id, at(20))
        .await);
    ensure_eq!(
        ok!(r.inner.find_api_key(&key.hash).await).meta.revoked_at,
        Some(at(10)),
        "the retry keeps the first time"
    );
    expect_class!(
        r.auth
            .authenticate(&Credential(SecretString::new(token)))
            .await,
        ErrorClass::Unauthorized
    );
    Ok(())
}

async fn create_user_refused() -> CaseResult {
    let r = rig(FaultPlan::always("create_user", Fault::Unavailable));
    let user = User {
        id: new_user_id(),
        email: format!("{}@example.com", unique("bo")),
        password_hash: None,
        created_at: at(0),
    };
    expect_fault(
        "create_user",
        r.faulty.create_user(&user).await,
        Fault::Unavailable,
    )?;
    expect_class!(
        r.inner.user_by_email(&user.email).await,
        ErrorClass::NotFound
    );

    r.plan.heal();
    ok!(r.faulty.create_user(&user).await);
    ensure_eq!(ok!(r.inner.user_by_email(&user.email).await), user);
    expect_class!(r.faulty.create_user(&user).await, ErrorClass::Conflict);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that compares emails case-sensitively and lets any org revoke any key.
    #[derive(Default)]
    struct Lax {
        inner: InMemoryIdentityStore,
        key_owners: std::sync::Mutex<std::collections::HashMap<ApiKeyId, OrgId>>,
    }

    #[async_trait]
    impl IdentityStore for Lax {
        async fn create_org(&self, org: &Org) -> Result<(), IdentityStoreError> {
            self.inner.create_org(org).await
        }
        async fn org(&self, id: &OrgId) -> Result<Org, IdentityStoreError> {
            self.inner.org(id).await
        }
        async fn create_user(&self, user: &User) -> Result<(), IdentityStoreError> {
            // Case-sensitive: store the email hex-encoded, which case folding leaves distinct.
            self.inner
                .create_user(&User {
                    email: hex_of(user.email.as_bytes()),
                    ..user.clone()
                })
                .await
        }
        async fn user_by_email(&self, email: &str) -> Result<User, IdentityStoreError> {
            let u = self.inner.user_by_email(&hex_of(email.as_bytes())).await?;
            Ok(User {
                email: email.to_string(),
                ..u
            })
        }
        async fn add_member(&self, m: &Membership) -> Result<(), IdentityStoreError> {
            self.inner.add_member(m).await
        }
        async fn memberships(&self, user: &UserId) -> Result<Vec<Membership>, IdentityStoreError> {
            self.inner.memberships(user).await
        }
        async fn create_api_key(&self, key: &NewApiKey) -> Result<(), IdentityStoreError> {
            self.inner.create_api_key(key).await?;
            self.key_owners
                .lock()
                .unwrap()
                .insert(key.id.clone(), key.org.clone());
            Ok(())
        }
        async fn find_api_key(&self, hash: &TokenHash) -> Result<ApiKeyRecord, IdentityStoreError> {
            self.inner.find_api_key(hash).await
        }
        async fn list_api_keys(
            &self,
            t: &TenantContext,
        ) -> Result<Vec<ApiKeyMeta>, IdentityStoreError> {
            self.inner.list_api_keys(t).await
        }
        async fn revoke_api_key(
            &self,
            _: &TenantContext,
            id: &ApiKeyId,
            at: Timestamp,
        ) -> Result<(), IdentityStoreError> {
            let owner = self.key_owners.lock().unwrap().get(id).cloned();
            match owner {
                Some(org) => self.inner.revoke_api_key(&tenant(&org), id, at).await,
                None => Err(IdentityStoreError::NotFound(id.to_string())),
            }
        }
        async fn create_login(&self, login: &LoginSession) -> Result<(), IdentityStoreError> {
            self.inner.create_login(login).await
        }
        async fn find_login(&self, hash: &TokenHash) -> Result<LoginSession, IdentityStoreError> {
            self.inner.find_login(hash).await
        }
        async fn delete_login(&self, id: &LoginId) -> Result<(), IdentityStoreError> {
            self.inner.delete_login(id).await
        }
    }

    #[test]
    fn check_reports_a_case_sensitive_store_that_revokes_across_orgs() {
        let report = check("lax", || async {
            Ok(Fixture {
                store: Arc::new(Lax::default()),
                scratch: None,
            })
        });
        let failed: Vec<&str> = report.failures().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            failed,
            vec![
                "identity_store::lax::user_email_unique",
                "identity_store::lax::api_key_revoke"
            ]
        );
    }
}
