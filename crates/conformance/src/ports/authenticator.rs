//! Contract cases, fault catalog, `Faulty` wrapper and disruption cases for `Authenticator`.

use super::identity_store::{
    api_key_row, at, disruption_case, expect_fault, login_row, new_token, seed_member,
};
use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, FaultPlan, Faulty};
use crate::harness::{self, BoxFut, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::tenancy::{Principal, Scope};
use switchboard_core::ErrorClass;
use switchboard_fakes::authenticator::InMemoryAuthenticator;
use switchboard_fakes::identity_store::InMemoryIdentityStore;
use switchboard_fakes::InMemoryClock;
use switchboard_ports::identity::{
    Authenticator, AuthenticatorError, Credential, IdentityStore, Role,
};
use switchboard_ports::{Clock, PortId, SecretString};

/// An authenticator with the identity store it reads (to create orgs, users, keys and logins) and
/// the clock it reads (to expire logins).
pub struct Fixture {
    pub identity: Arc<dyn IdentityStore>,
    pub authenticator: Arc<dyn Authenticator>,
    pub clock: InMemoryClock,
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
    let (org, user) = seed_member(&*f.identity, Role::Owner).await?;
    let token = new_token("sk_");
    let key = api_key_row(
        &org,
        &user,
        &token,
        vec![Scope::Sessions, Scope::Credentials],
    );
    ok!(f.identity.create_api_key(&key).await);
    // A second org's key must not be confused with this one.
    let (other_org, other_user) = seed_member(&*f.identity, Role::Owner).await?;
    ok!(f
        .identity
        .create_api_key(&api_key_row(
            &other_org,
            &other_user,
            &new_token("sk_"),
            vec![Scope::Admin]
        ))
        .await);

    let p: Principal = ok!(f.authenticator.authenticate(&credential(&token)).await);
    ensure_eq!(p.org(), &org);
    ensure_eq!(p.user(), &user);
    ensure_eq!(p.api_key_id(), Some(&key.id));
    ensure_eq!(
        sorted(p.scopes()),
        sorted(&key.scopes),
        "the key's own scopes"
    );
    ensure!(
        !p.has(Scope::Admin),
        "a key without Admin does not get it from its owner's role"
    );
    Ok(())
}

async fn login_token_authenticates(f: Fixture) -> CaseResult {
    let (org, user) = seed_member(&*f.identity, Role::Member).await?;
    let token = new_token("");
    ok!(f
        .identity
        .create_login(&login_row(
            &org,
            &user,
            &token,
            f.clock.now(),
            Duration::from_secs(3600)
        ))
        .await);

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
    let (org, user) = seed_member(&*f.identity, Role::Owner).await?;
    let token = new_token("sk_");
    ok!(f
        .identity
        .create_api_key(&api_key_row(&org, &user, &token, vec![Scope::Sessions]))
        .await);
    let login = new_token("");
    ok!(f
        .identity
        .create_login(&login_row(
            &org,
            &user,
            &login,
            f.clock.now(),
            Duration::from_secs(3600)
        ))
        .await);

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
    let (org, user) = seed_member(&*f.identity, Role::Owner).await?;
    let token = new_token("sk_");
    let key = api_key_row(&org, &user, &token, vec![Scope::Sessions]);
    ok!(f.identity.create_api_key(&key).await);
    ok!(f.authenticator.authenticate(&credential(&token)).await);

    let p = Principal::from_verified_credential(org.clone(), user.clone(), None, Vec::new());
    ok!(f
        .identity
        .revoke_api_key(&p.tenant(), &key.id, f.clock.now())
        .await);
    expect_class!(
        f.authenticator.authenticate(&credential(&token)).await,
        ErrorClass::Unauthorized
    );
    expect_class!(
        f.authenticator.authenticate(&credential(&token)).await,
        ErrorClass::Unauthorized
    );
    Ok(())
}

async fn expired_login_unauthorized(f: Fixture) -> CaseResult {
    let (org, user) = seed_member(&*f.identity, Role::Member).await?;
    let token = new_token("");
    let ttl = Duration::from_secs(3600);
    ok!(f
        .identity
        .create_login(&login_row(&org, &user, &token, f.clock.now(), ttl))
        .await);

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
    let identity: Arc<dyn IdentityStore> = Arc::new(InMemoryIdentityStore::new());
    let authenticator = Arc::new(InMemoryAuthenticator::new(
        identity.clone(),
        Arc::new(clock.clone()),
    ));
    Fixture {
        identity,
        authenticator,
        clock,
    }
}

/// Every implementation of `Authenticator`. The store-backed adapter over the database stores
/// arrives with them (see `WAIVERS`).
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![Implementation::new("in_memory", ImplKind::Fake, || async {
        Ok(in_memory_fixture())
    })]
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

/// Each fault twice: injected in front of the authenticator, and injected into every call of the
/// identity store behind the real (fake) authenticator, which must pass the class on unchanged.
fn disruption_flow(entry: CatalogEntry) -> BoxFut<'static, CaseResult> {
    Box::pin(async move {
        let fault = entry.fault;
        let clock = InMemoryClock::at(at(0));
        let inner_store: Arc<dyn IdentityStore> = Arc::new(InMemoryIdentityStore::new());
        let store_plan = FaultPlan::off();
        let store: Arc<dyn IdentityStore> =
            Arc::new(Faulty::new(inner_store.clone(), store_plan.clone()));
        let auth_plan = FaultPlan::always(entry.op, fault);
        let inner_auth: Arc<dyn Authenticator> =
            Arc::new(InMemoryAuthenticator::new(store, Arc::new(clock.clone())));
        let auth = Faulty::new(inner_auth, auth_plan.clone());

        let (org, user) = seed_member(&*inner_store, Role::Member).await?;
        let key_token = new_token("sk_");
        let key = api_key_row(&org, &user, &key_token, vec![Scope::Sessions]);
        ok!(inner_store.create_api_key(&key).await);
        let login_token = new_token("");
        ok!(inner_store
            .create_login(&login_row(
                &org,
                &user,
                &login_token,
                clock.now(),
                Duration::from_secs(3600)
            ))
            .await);

        let check_admitted = |p: Principal, key: bool| -> CaseResult {
            ensure_eq!((p.org(), p.user()), (&org, &user), "the principal");
            ensure_eq!(
                p.api_key_id().is_some(),
                key,
                "key id present for keys only"
            );
            Ok(())
        };

        if fault == Fault::Slow {
            check_admitted(ok!(auth.authenticate(&credential(&key_token)).await), true)?;
            auth_plan.heal();
            store_plan.set(FaultPlan::always("*", Fault::Slow));
            check_admitted(ok!(auth.authenticate(&credential(&key_token)).await), true)?;
            check_admitted(
                ok!(auth.authenticate(&credential(&login_token)).await),
                false,
            )?;
            return Ok(());
        }

        // In front of the authenticator.
        expect_fault(
            "authenticate (faulty authenticator)",
            auth.authenticate(&credential(&key_token)).await,
            fault,
        )?;
        auth_plan.heal();
        // Behind it: the store fails every call.
        store_plan.set(FaultPlan::always("*", fault));
        expect_fault(
            "authenticate an API key (faulty store)",
            auth.authenticate(&credential(&key_token)).await,
            fault,
        )?;
        expect_fault(
            "authenticate a login (faulty store)",
            auth.authenticate(&credential(&login_token)).await,
            fault,
        )?;
        // Nothing changed behind the failure.
        ensure_eq!(
            ok!(inner_store.find_api_key(&key.hash).await)
                .meta
                .revoked_at,
            None,
            "the key is unchanged"
        );

        store_plan.heal();
        check_admitted(ok!(auth.authenticate(&credential(&key_token)).await), true)?;
        check_admitted(
            ok!(auth.authenticate(&credential(&login_token)).await),
            false,
        )?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Outcome;
    use switchboard_core::crypto::TokenHash;
    use switchboard_core::{ApiKeyId, LoginId, OrgId, TenantContext, Timestamp, UserId};
    use switchboard_ports::identity::{
        ApiKeyMeta, ApiKeyRecord, LoginSession, Membership, NewApiKey, Org, User,
    };
    use switchboard_ports::IdentityStoreError;

    #[test]
    fn contract_cases_pass() {
        Report::run(suite().trials).assert_all_passed();
    }

    #[test]
    fn every_catalog_entry_has_a_passing_disruption() {
        let cases = disruptions();
        assert_eq!(
            cases.iter().map(|c| c.entry.clone()).collect::<Vec<_>>(),
            CATALOG.iter().map(|e| e.name()).collect::<Vec<_>>()
        );
        for c in cases {
            let entry = c.entry.clone();
            assert_eq!((c.run)(), Outcome::Passed, "{entry}");
        }
    }

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
            let clock = InMemoryClock::at(at(0));
            let identity: Arc<dyn IdentityStore> = Arc::new(InMemoryIdentityStore::new());
            let authenticator = Arc::new(InMemoryAuthenticator::new(
                Arc::new(Forgetful(identity.clone())),
                Arc::new(clock.clone()),
            ));
            Ok(Fixture {
                identity,
                authenticator,
                clock,
            })
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
}
