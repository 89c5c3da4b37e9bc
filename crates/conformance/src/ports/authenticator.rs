//! Contract cases, fault catalog, `Faulty` wrapper and disruption cases for `Authenticator`.
//!
//! Cases make their credentials through the fixture's [`CredentialIssuer`]: once over an
//! `IdentityStore` (for the real `StoreAuthenticator` on each store engine), once over the
//! in-memory fake's own table of issued credentials.

use super::identity_store::{
    at, disruption_case, expect_fault, login_row, new_token, postgres_identity_store, seed_member,
    sqlite_identity_store, tenant, unique, Scratch,
};
use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, FaultPlan, Faulty};
use crate::harness::{self, BoxFut, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_adapters::sql::scratch::postgres_gate;
use switchboard_adapters::store_auth::StoreAuthenticator;
use switchboard_core::tenancy::{Principal, Scope};
use switchboard_core::{ApiKeyId, ErrorClass, OrgId, Timestamp, UserId};
use switchboard_fakes::authenticator::InMemoryAuthenticator;
use switchboard_fakes::identity_store::InMemoryIdentityStore;
use switchboard_fakes::InMemoryClock;
use switchboard_ports::identity::{
    Authenticator, AuthenticatorError, Credential, IdentityStore, Role,
};
use switchboard_ports::{Clock, PortId, SecretString};

/// An API key as issued to a case: its token is shown once, here.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub org: OrgId,
    pub id: ApiKeyId,
    pub token: String,
}

/// Makes the members and credentials a case authenticates with, wherever the implementation under
/// test keeps them. Errors are failure messages.
#[async_trait]
pub trait CredentialIssuer: Send + Sync {
    /// A fresh org and a fresh user who is its member with `role`.
    async fn member(&self, role: Role) -> Result<(OrgId, UserId), String>;
    /// A live API key of `user` in `org` carrying exactly `scopes`.
    async fn api_key(
        &self,
        org: &OrgId,
        user: &UserId,
        scopes: Vec<Scope>,
    ) -> Result<IssuedKey, String>;
    /// A login token of `user` in `org` (scopes of the user's role there), live until `expires_at`.
    async fn login(
        &self,
        org: &OrgId,
        user: &UserId,
        expires_at: Timestamp,
    ) -> Result<String, String>;
    /// Revokes `key` at `at`.
    async fn revoke_api_key(&self, key: &IssuedKey, at: Timestamp) -> Result<(), String>;
}

/// Issues credentials by writing them to an identity store, as the server does: what
/// `StoreAuthenticator` reads.
pub struct StoreIssuer {
    pub store: Arc<dyn IdentityStore>,
    pub clock: InMemoryClock,
}

#[async_trait]
impl CredentialIssuer for StoreIssuer {
    async fn member(&self, role: Role) -> Result<(OrgId, UserId), String> {
        seed_member(&*self.store, role).await
    }

    async fn api_key(
        &self,
        org: &OrgId,
        user: &UserId,
        scopes: Vec<Scope>,
    ) -> Result<IssuedKey, String> {
        let token = new_token("sk_");
        let row = super::identity_store::api_key_row(org, user, &token, scopes);
        ok!(self.store.create_api_key(&row).await);
        Ok(IssuedKey {
            org: org.clone(),
            id: row.id,
            token,
        })
    }

    async fn login(
        &self,
        org: &OrgId,
        user: &UserId,
        expires_at: Timestamp,
    ) -> Result<String, String> {
        let token = new_token("");
        let now = self.clock.now();
        let mut row = login_row(org, user, &token, now, Duration::ZERO);
        row.expires_at = expires_at;
        ok!(self.store.create_login(&row).await);
        Ok(token)
    }

    async fn revoke_api_key(&self, key: &IssuedKey, at: Timestamp) -> Result<(), String> {
        ok!(self
            .store
            .revoke_api_key(&tenant(&key.org), &key.id, at)
            .await);
        Ok(())
    }
}

/// Issues credentials from the in-memory fake's own table; it remembers each member's role to give
/// their logins the role's scopes.
pub struct FakeIssuer {
    pub authenticator: Arc<InMemoryAuthenticator>,
    roles: Mutex<HashMap<(OrgId, UserId), Role>>,
}

impl FakeIssuer {
    pub fn new(authenticator: Arc<InMemoryAuthenticator>) -> Self {
        FakeIssuer {
            authenticator,
            roles: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl CredentialIssuer for FakeIssuer {
    async fn member(&self, role: Role) -> Result<(OrgId, UserId), String> {
        let (org, user) = (
            super::identity_store::new_org_id(),
            super::identity_store::new_user_id(),
        );
        self.roles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((org.clone(), user.clone()), role);
        Ok((org, user))
    }

    async fn api_key(
        &self,
        org: &OrgId,
        user: &UserId,
        scopes: Vec<Scope>,
    ) -> Result<IssuedKey, String> {
        let id = ApiKeyId::parse(unique("key")).map_err(|e| e.to_string())?;
        let principal = Principal::from_verified_credential(
            org.clone(),
            user.clone(),
            Some(id.clone()),
            scopes,
        );
        let token = self.authenticator.issue_api_key(principal);
        Ok(IssuedKey {
            org: org.clone(),
            id,
            token: token.expose().to_string(),
        })
    }

    async fn login(
        &self,
        org: &OrgId,
        user: &UserId,
        expires_at: Timestamp,
    ) -> Result<String, String> {
        let role = self
            .roles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(org.clone(), user.clone()))
            .copied()
            .ok_or_else(|| format!("{user} is not a member of {org}"))?;
        let principal =
            Principal::from_verified_credential(org.clone(), user.clone(), None, role.scopes());
        Ok(self
            .authenticator
            .issue_login(principal, expires_at)
            .expose()
            .to_string())
    }

    async fn revoke_api_key(&self, key: &IssuedKey, _at: Timestamp) -> Result<(), String> {
        ensure!(
            self.authenticator
                .revoke(&SecretString::new(key.token.clone())),
            "key {} was not issued by this authenticator",
            key.id
        );
        Ok(())
    }
}

/// An authenticator, the issuer of the credentials it accepts, and the clock it reads (to expire
/// logins). `scratch` keeps a scratch database alive for the whole case.
pub struct Fixture {
    pub authenticator: Arc<dyn Authenticator>,
    pub provision: Arc<dyn CredentialIssuer>,
    pub clock: InMemoryClock,
    pub scratch: Option<Scratch>,
}

fn credential(token: &str) -> Credential {
    Credential(SecretString::new(token))
}

fn sorted(scopes: &[Scope]) -> Vec<Scope> {
    let mut v = scopes.to_vec();
    v.sort();
    v
}

/// One case per `# Contract` bullet of `Authenticator`.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "api_key_authenticates",
            run: |f| Box::pin(api_key_authenticates(f)),
        },
        Case {
            name: "login_token_authenticates",
            run: |f| Box::pin(login_token_authenticates(f)),
        },
        Case {
            name: "unknown_credential_unauthorized",
            run: |f| Box::pin(unknown_credential_unauthorized(f)),
        },
        Case {
            name: "revoked_key_unauthorized",
            run: |f| Box::pin(revoked_key_unauthorized(f)),
        },
        Case {
            name: "expired_login_unauthorized",
            run: |f| Box::pin(expired_login_unauthorized(f)),
        },
    ]
}

async fn api_key_authenticates(f: Fixture) -> CaseResult {
    let (org, user) = f.provision.member(Role::Owner).await?;
    let scopes = vec![Scope::Sessions, Scope::Credentials];
    let key = f.provision.api_key(&org, &user, scopes.clone()).await?;
    // A second org's key must not be confused with this one.
    let (other_org, other_user) = f.provision.member(Role::Owner).await?;
    f.provision
        .api_key(&other_org, &other_user, vec![Scope::Admin])
        .await?;

    let p: Principal = ok!(f.authenticator.authenticate(&credential(&key.token)).await);
    ensure_eq!(p.org(), &org);
    ensure_eq!(p.user(), &user);
    ensure_eq!(p.api_key_id(), Some(&key.id));
    ensure_eq!(sorted(p.scopes()), sorted(&scopes), "the key's own scopes");
    ensure!(
        !p.has(Scope::Admin),
        "a key without Admin does not get it from its owner's role"
    );
    Ok(())
}

async fn login_token_authenticates(f: Fixture) -> CaseResult {
    let (org, user) = f.provision.member(Role::Member).await?;
    let token = f
        .provision
        .login(&org, &user, f.clock.now().add(Duration::from_secs(3600)))
        .await?;

    let p = ok!(f.authenticator.authenticate(&credential(&token)).await);
    ensure_eq!(p.org(), &org);
    ensure_eq!(p.user(), &user);
    ensure_eq!(p.api_key_id(), None, "a login carries no key id");
    ensure_eq!(
        sorted(p.scopes()),
        sorted(&Role::Member.scopes()),
        "a member's scopes"
    );
    Ok(())
}

async fn unknown_credential_unauthorized(f: Fixture) -> CaseResult {
    let (org, user) = f.provision.member(Role::Owner).await?;
    let token = f
        .provision
        .api_key(&org, &user, vec![Scope::Sessions])
        .await?
        .token;
    let login = f
        .provision
        .login(&org, &user, f.clock.now().add(Duration::from_secs(3600)))
        .await?;

    let near_miss = format!(
        "{}{}",
        &token[..token.len() - 1],
        if token.ends_with('0') { '1' } else { '0' }
    );
    let unknown = [
        new_token("sk_"),
        new_token(""),
        near_miss,
        format!("{token} "),
        token.to_uppercase(),
        login[1..].to_string(),
        String::new(),
        "sk_".to_string(),
        "not a token".to_string(),
        "sk_\n".to_string(),
        "x".repeat(10_000),
    ];
    for t in unknown {
        let shown: String = t.chars().take(24).collect();
        match f.authenticator.authenticate(&credential(&t)).await {
            Ok(p) => return Err(format!("token {shown:?} authenticated as {p:?}")),
            Err(e) => ensure_eq!(
                switchboard_ports::Classify::class(&e),
                ErrorClass::Unauthorized,
                "token {shown:?} ({e})"
            ),
        }
    }
    // The real ones still work: the refusals above were about the tokens, not the store.
    ok!(f.authenticator.authenticate(&credential(&token)).await);
    ok!(f.authenticator.authenticate(&credential(&login)).await);
    Ok(())
}

async fn revoked_key_unauthorized(f: Fixture) -> CaseResult {
    let (org, user) = f.provision.member(Role::Owner).await?;
    let key = f
        .provision
        .api_key(&org, &user, vec![Scope::Sessions])
        .await?;
    let other = f
        .provision
        .api_key(&org, &user, vec![Scope::Sessions])
        .await?;
    ok!(f.authenticator.authenticate(&credential(&key.token)).await);

    f.provision.revoke_api_key(&key, f.clock.now()).await?;
    expect_class!(
        f.authenticator.authenticate(&credential(&key.token)).await,
        ErrorClass::Unauthorized
    );
    expect_class!(
        f.authenticator.authenticate(&credential(&key.token)).await,
        ErrorClass::Unauthorized
    );
    let p = ok!(f
        .authenticator
        .authenticate(&credential(&other.token))
        .await);
    ensure_eq!(
        p.api_key_id(),
        Some(&other.id),
        "only the revoked key stops working"
    );
    Ok(())
}

async fn expired_login_unauthorized(f: Fixture) -> CaseResult {
    let (org, user) = f.provision.member(Role::Member).await?;
    let ttl = Duration::from_secs(3600);
    let token = f
        .provision
        .login(&org, &user, f.clock.now().add(ttl))
        .await?;

    f.clock.advance(ttl - Duration::from_secs(1));
    ok!(f.authenticator.authenticate(&credential(&token)).await);
    f.clock.advance(Duration::from_secs(2));
    expect_class!(
        f.authenticator.authenticate(&credential(&token)).await,
        ErrorClass::Unauthorized
    );
    Ok(())
}

fn in_memory_fixture() -> Fixture {
    let clock = InMemoryClock::at(at(0));
    let authenticator = Arc::new(InMemoryAuthenticator::new(Arc::new(clock.clone())));
    Fixture {
        authenticator: authenticator.clone(),
        provision: Arc::new(FakeIssuer::new(authenticator)),
        clock,
        scratch: None,
    }
}

/// `StoreAuthenticator` over `store`, on a fresh clock.
pub fn store_fixture(store: Arc<dyn IdentityStore>, scratch: Option<Scratch>) -> Fixture {
    let clock = InMemoryClock::at(at(0));
    Fixture {
        authenticator: Arc::new(StoreAuthenticator::new(
            store.clone(),
            Arc::new(clock.clone()),
        )),
        provision: Arc::new(StoreIssuer {
            store,
            clock: clock.clone(),
        }),
        clock,
        scratch,
    }
}

/// Every implementation of `Authenticator`: the fake over its own table, and the real
/// `StoreAuthenticator` over the SQLite and Postgres identity stores.
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(in_memory_fixture())
        }),
        Implementation::new("store_over_sqlite", ImplKind::Adapter, || async {
            let (store, scratch) = sqlite_identity_store().await?;
            Ok(store_fixture(store, Some(scratch)))
        }),
        Implementation::new("store_over_postgres", ImplKind::Adapter, || async {
            let (store, scratch) = postgres_identity_store().await?;
            Ok(store_fixture(store, Some(scratch)))
        })
        .gated(postgres_gate),
    ]
}

/// The fault catalog of `Authenticator`.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "authenticate",
        outcome: "the request is refused with 503 (never admitted, never a misleading 401) and is admitted once the identity store heals",
    },
    CatalogEntry { fault: Fault::Timeout, op: "authenticate", outcome: "the request is refused with a timeout and admitted by nobody; a retry after healing succeeds" },
    CatalogEntry { fault: Fault::Corrupt, op: "authenticate", outcome: "the request is refused: a damaged identity answer never yields a principal" },
    CatalogEntry { fault: Fault::Slow, op: "authenticate", outcome: "a slow check yields the same principal as a fast one" },
];

#[async_trait]
impl Authenticator for Faulty<dyn Authenticator> {
    async fn authenticate(&self, credential: &Credential) -> Result<Principal, AuthenticatorError> {
        self.call("authenticate", || self.inner.authenticate(credential))
            .await
    }
}

/// The suite of `Authenticator`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::Authenticator, cases(), implementations(), CATALOG)
}

/// Runs every contract case against an implementation: the adapter author's entry point.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    Report::run(harness::trials(
        PortId::Authenticator,
        &Implementation::new(name, ImplKind::Adapter, make),
        &cases(),
    ))
}

/// One disruption case per catalog entry.
pub fn disruptions() -> Vec<DisruptionCase> {
    CATALOG
        .iter()
        .map(|e| disruption_case(PortId::Authenticator, e, disruption_flow))
        .collect()
}

/// Checks that `got` is the principal of `user` in `org`, with a key id for keys only.
fn admitted(got: Principal, org: &OrgId, user: &UserId, key: bool) -> CaseResult {
    ensure_eq!((got.org(), got.user()), (org, user), "the principal");
    ensure_eq!(
        got.api_key_id().is_some(),
        key,
        "key id present for keys only"
    );
    Ok(())
}

/// Each fault twice: injected in front of the fake authenticator, and injected into every call of
/// the identity store behind the real `StoreAuthenticator`, which must pass the class on unchanged.
fn disruption_flow(entry: CatalogEntry) -> BoxFut<'static, CaseResult> {
    Box::pin(async move {
        let fault = entry.fault;
        let clock = InMemoryClock::at(at(0));
        let hour = clock.now().add(Duration::from_secs(3600));

        // In front of the fake.
        let fake = Arc::new(InMemoryAuthenticator::new(Arc::new(clock.clone())));
        let issuer = FakeIssuer::new(fake.clone());
        let plan = FaultPlan::always(entry.op, fault);
        let auth = Faulty::new(fake.clone() as Arc<dyn Authenticator>, plan.clone());
        let (org, user) = issuer.member(Role::Member).await?;
        let key = issuer.api_key(&org, &user, vec![Scope::Sessions]).await?;
        let login = issuer.login(&org, &user, hour).await?;
        if fault == Fault::Slow {
            admitted(
                ok!(auth.authenticate(&credential(&key.token)).await),
                &org,
                &user,
                true,
            )?;
            admitted(
                ok!(auth.authenticate(&credential(&login)).await),
                &org,
                &user,
                false,
            )?;
        } else {
            expect_fault(
                "authenticate a key (faulty fake)",
                auth.authenticate(&credential(&key.token)).await,
                fault,
            )?;
            expect_fault(
                "authenticate a login (faulty fake)",
                auth.authenticate(&credential(&login)).await,
                fault,
            )?;
            // Nothing changed behind the failure: the un-faulted fake still admits both.
            ok!(fake.authenticate(&credential(&key.token)).await);
            ok!(fake.authenticate(&credential(&login)).await);
            plan.heal();
            admitted(
                ok!(auth.authenticate(&credential(&key.token)).await),
                &org,
                &user,
                true,
            )?;
            admitted(
                ok!(auth.authenticate(&credential(&login)).await),
                &org,
                &user,
                false,
            )?;
        }

        // Behind the store-backed authenticator: the store fails every call.
        let inner_store: Arc<dyn IdentityStore> = Arc::new(InMemoryIdentityStore::new());
        let store_plan = FaultPlan::off();
        let store: Arc<dyn IdentityStore> =
            Arc::new(Faulty::new(inner_store.clone(), store_plan.clone()));
        let auth = StoreAuthenticator::new(store, Arc::new(clock.clone()));
        let issuer = StoreIssuer {
            store: inner_store.clone(),
            clock: clock.clone(),
        };
        let (org, user) = issuer.member(Role::Member).await?;
        let key = issuer.api_key(&org, &user, vec![Scope::Sessions]).await?;
        let login = issuer.login(&org, &user, hour).await?;
        store_plan.set(FaultPlan::always("*", fault));
        if fault == Fault::Slow {
            admitted(
                ok!(auth.authenticate(&credential(&key.token)).await),
                &org,
                &user,
                true,
            )?;
            admitted(
                ok!(auth.authenticate(&credential(&login)).await),
                &org,
                &user,
                false,
            )?;
            return Ok(());
        }
        expect_fault(
            "authenticate a key (faulty store)",
            auth.authenticate(&credential(&key.token)).await,
            fault,
        )?;
        expect_fault(
            "authenticate a login (faulty store)",
            auth.authenticate(&credential(&login)).await,
            fault,
        )?;
        let row = ok!(inner_store
            .find_api_key(&super::identity_store::token_hash(&key.token))
            .await);
        ensure_eq!(row.meta.revoked_at, None, "the key is unchanged");
        store_plan.heal();
        admitted(
            ok!(auth.authenticate(&credential(&key.token)).await),
            &org,
            &user,
            true,
        )?;
        admitted(
            ok!(auth.authenticate(&credential(&login)).await),
            &org,
            &user,
            false,
        )?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use switchboard_core::crypto::TokenHash;
    use switchboard_core::{LoginId, TenantContext};
    use switchboard_ports::identity::{
        ApiKeyMeta, ApiKeyRecord, LoginSession, Membership, NewApiKey, Org, User,
    };
    use switchboard_ports::IdentityStoreError;

    /// An identity store view that loses `revoked_at` and `expires_at` on the way to the authenticator.
    struct Forgetful(Arc<dyn IdentityStore>);

    #[async_trait]
    impl IdentityStore for Forgetful {
        async fn create_org(&self, org: &Org) -> Result<(), IdentityStoreError> {
            self.0.create_org(org).await
        }
        async fn org(&self, id: &OrgId) -> Result<Org, IdentityStoreError> {
            self.0.org(id).await
        }
        async fn create_user(&self, user: &User) -> Result<(), IdentityStoreError> {
            self.0.create_user(user).await
        }
        async fn user_by_email(&self, email: &str) -> Result<User, IdentityStoreError> {
            self.0.user_by_email(email).await
        }
        async fn add_member(&self, m: &Membership) -> Result<(), IdentityStoreError> {
            self.0.add_member(m).await
        }
        async fn memberships(&self, user: &UserId) -> Result<Vec<Membership>, IdentityStoreError> {
            self.0.memberships(user).await
        }
        async fn create_api_key(&self, key: &NewApiKey) -> Result<(), IdentityStoreError> {
            self.0.create_api_key(key).await
        }
        async fn find_api_key(&self, hash: &TokenHash) -> Result<ApiKeyRecord, IdentityStoreError> {
            let mut k = self.0.find_api_key(hash).await?;
            k.meta.revoked_at = None;
            Ok(k)
        }
        async fn list_api_keys(
            &self,
            t: &TenantContext,
        ) -> Result<Vec<ApiKeyMeta>, IdentityStoreError> {
            self.0.list_api_keys(t).await
        }
        async fn revoke_api_key(
            &self,
            t: &TenantContext,
            id: &ApiKeyId,
            at: Timestamp,
        ) -> Result<(), IdentityStoreError> {
            self.0.revoke_api_key(t, id, at).await
        }
        async fn create_login(&self, login: &LoginSession) -> Result<(), IdentityStoreError> {
            self.0.create_login(login).await
        }
        async fn find_login(&self, hash: &TokenHash) -> Result<LoginSession, IdentityStoreError> {
            let mut l = self.0.find_login(hash).await?;
            l.expires_at = Timestamp::from_millis(u64::MAX);
            Ok(l)
        }
        async fn delete_login(&self, id: &LoginId) -> Result<(), IdentityStoreError> {
            self.0.delete_login(id).await
        }
    }

    #[test]
    fn check_reports_an_authenticator_that_ignores_revocation_and_expiry() {
        let report = check("forgetful", || async {
            let identity: Arc<dyn IdentityStore> = Arc::new(InMemoryIdentityStore::new());
            let mut f = store_fixture(identity.clone(), None);
            // Issued into the real store, read back through the forgetful view.
            f.authenticator = Arc::new(StoreAuthenticator::new(
                Arc::new(Forgetful(identity)),
                Arc::new(f.clock.clone()),
            ));
            Ok(f)
        });
        let failed: Vec<&str> = report.failures().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            failed,
            vec![
                "authenticator::forgetful::revoked_key_unauthorized",
                "authenticator::forgetful::expired_login_unauthorized"
            ]
        );
    }

    #[test]
    fn check_reports_a_fake_that_admits_any_well_formed_key() {
        /// Admits every `sk_` token as one fixed principal.
        struct Gullible;
        #[async_trait]
        impl Authenticator for Gullible {
            async fn authenticate(&self, c: &Credential) -> Result<Principal, AuthenticatorError> {
                match c.0.expose().strip_prefix("sk_") {
                    Some(rest) if !rest.is_empty() => Ok(Principal::from_verified_credential(
                        OrgId::parse("o").unwrap(),
                        UserId::parse("u").unwrap(),
                        None,
                        vec![Scope::Admin],
                    )),
                    _ => Err(AuthenticatorError::Unauthorized("no".to_string())),
                }
            }
        }
        let report = check("gullible", || async {
            let mut f = in_memory_fixture();
            f.authenticator = Arc::new(Gullible);
            Ok(f)
        });
        let failed: Vec<&str> = report.failures().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            failed,
            vec![
                "authenticator::gullible::api_key_authenticates",
                "authenticator::gullible::login_token_authenticates",
                "authenticator::gullible::unknown_credential_unauthorized",
                "authenticator::gullible::revoked_key_unauthorized",
                "authenticator::gullible::expired_login_unauthorized",
            ]
        );
    }
}
