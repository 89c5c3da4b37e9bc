//! `InMemoryIdentityStore`: orgs, users, memberships, API keys and login sessions kept in memory,
//! with the uniqueness and tenant rules of the real stores.

use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use switchboard_core::crypto::TokenHash;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{ApiKeyId, LoginId, OrgId, Timestamp, UserId};
use switchboard_ports::identity::{
    ApiKeyMeta, ApiKeyRecord, IdentityStore, IdentityStoreError, LoginSession, Membership,
    NewApiKey, Org, User,
};

#[derive(Default)]
struct State {
    orgs: HashMap<OrgId, Org>,
    users: HashMap<UserId, User>,
    /// Lower-cased email → user: emails are unique case-insensitively.
    emails: HashMap<String, UserId>,
    /// (org, user) → membership.
    memberships: BTreeMap<(OrgId, UserId), Membership>,
    api_keys: BTreeMap<ApiKeyId, ApiKeyRecord>,
    logins: BTreeMap<LoginId, LoginSession>,
}

impl State {
    fn require_org(&self, org: &OrgId) -> Result<(), IdentityStoreError> {
        if self.orgs.contains_key(org) {
            Ok(())
        } else {
            Err(IdentityStoreError::NotFound(format!("org {org}")))
        }
    }

    fn require_user(&self, user: &UserId) -> Result<(), IdentityStoreError> {
        if self.users.contains_key(user) {
            Ok(())
        } else {
            Err(IdentityStoreError::NotFound(format!("user {user}")))
        }
    }

    /// Whether any stored API key or login already uses `hash`.
    fn hash_taken(&self, hash: &TokenHash) -> bool {
        // Every row is compared, match or not, so the time taken does not depend on where it is.
        let mut taken = false;
        for k in self.api_keys.values() {
            taken |= k.hash.matches(hash);
        }
        for l in self.logins.values() {
            taken |= l.hash.matches(hash);
        }
        taken
    }
}

/// An identity store in memory. Referential rules follow a relational schema: members, keys and
/// logins need an existing org and user (`NotFound` otherwise); ids, emails (case-insensitive),
/// memberships and token hashes are unique (`Conflict`).
#[derive(Default)]
pub struct InMemoryIdentityStore {
    state: Mutex<State>,
}

impl InMemoryIdentityStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Finds the one value whose hash matches, comparing against every row in constant time.
fn find_by_hash<'a, T>(
    rows: impl Iterator<Item = &'a T>,
    hash: &TokenHash,
    hash_of: impl Fn(&T) -> &TokenHash,
) -> Option<&'a T>
where
    T: 'a,
{
    let mut found = None;
    for row in rows {
        if hash_of(row).matches(hash) {
            found = Some(row);
        }
    }
    found
}

#[async_trait]
impl IdentityStore for InMemoryIdentityStore {
    async fn create_org(&self, org: &Org) -> Result<(), IdentityStoreError> {
        let mut st = self.state();
        if st.orgs.contains_key(&org.id) {
            return Err(IdentityStoreError::Conflict(format!(
                "org {} exists",
                org.id
            )));
        }
        st.orgs.insert(org.id.clone(), org.clone());
        Ok(())
    }

    async fn org(&self, id: &OrgId) -> Result<Org, IdentityStoreError> {
        self.state()
            .orgs
            .get(id)
            .cloned()
            .ok_or_else(|| IdentityStoreError::NotFound(format!("org {id}")))
    }

    async fn create_user(&self, user: &User) -> Result<(), IdentityStoreError> {
        let mut st = self.state();
        if st.users.contains_key(&user.id) {
            return Err(IdentityStoreError::Conflict(format!(
                "user {} exists",
                user.id
            )));
        }
        let email = user.email.to_lowercase();
        if st.emails.contains_key(&email) {
            return Err(IdentityStoreError::Conflict(
                "a user with this email exists".to_string(),
            ));
        }
        st.emails.insert(email, user.id.clone());
        st.users.insert(user.id.clone(), user.clone());
        Ok(())
    }

    async fn user_by_email(&self, email: &str) -> Result<User, IdentityStoreError> {
        let st = self.state();
        st.emails
            .get(&email.to_lowercase())
            .and_then(|id| st.users.get(id))
            .cloned()
            .ok_or_else(|| IdentityStoreError::NotFound("no user with this email".to_string()))
    }

    async fn add_member(&self, membership: &Membership) -> Result<(), IdentityStoreError> {
        let mut st = self.state();
        st.require_org(&membership.org)?;
        st.require_user(&membership.user)?;
        let key = (membership.org.clone(), membership.user.clone());
        if st.memberships.contains_key(&key) {
            return Err(IdentityStoreError::Conflict(format!(
                "{} is already a member of {}",
                membership.user, membership.org
            )));
        }
        st.memberships.insert(key, membership.clone());
        Ok(())
    }

    async fn memberships(&self, user: &UserId) -> Result<Vec<Membership>, IdentityStoreError> {
        Ok(self
            .state()
            .memberships
            .values()
            .filter(|m| &m.user == user)
            .cloned()
            .collect())
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<(), IdentityStoreError> {
        let mut st = self.state();
        st.require_org(&key.org)?;
        st.require_user(&key.user)?;
        if st.api_keys.contains_key(&key.id) {
            return Err(IdentityStoreError::Conflict(format!(
                "api key {} exists",
                key.id
            )));
        }
        if st.hash_taken(&key.hash) {
            return Err(IdentityStoreError::Conflict(
                "token hash already in use".to_string(),
            ));
        }
        let record = ApiKeyRecord {
            meta: ApiKeyMeta {
                id: key.id.clone(),
                name: key.name.clone(),
                prefix: key.prefix.clone(),
                created_at: key.created_at,
                revoked_at: None,
            },
            org: key.org.clone(),
            user: key.user.clone(),
            hash: key.hash.clone(),
            scopes: key.scopes.clone(),
        };
        st.api_keys.insert(key.id.clone(), record);
        Ok(())
    }

    async fn find_api_key(&self, hash: &TokenHash) -> Result<ApiKeyRecord, IdentityStoreError> {
        let st = self.state();
        find_by_hash(st.api_keys.values(), hash, |k| &k.hash)
            .cloned()
            .ok_or_else(|| IdentityStoreError::NotFound("no api key with this hash".to_string()))
    }

    async fn list_api_keys(
        &self,
        tenant: &TenantContext,
    ) -> Result<Vec<ApiKeyMeta>, IdentityStoreError> {
        let st = self.state();
        let mut keys: Vec<ApiKeyMeta> = st
            .api_keys
            .values()
            .filter(|k| &k.org == tenant.org())
            .map(|k| k.meta.clone())
            .collect();
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    async fn revoke_api_key(
        &self,
        tenant: &TenantContext,
        id: &ApiKeyId,
        at: Timestamp,
    ) -> Result<(), IdentityStoreError> {
        let mut st = self.state();
        match st.api_keys.get_mut(id) {
            Some(k) if &k.org == tenant.org() => {
                // Revoking twice keeps the first time: a retried revoke is harmless.
                k.meta.revoked_at.get_or_insert(at);
                Ok(())
            }
            // Another org's key answers exactly like a missing one.
            _ => Err(IdentityStoreError::NotFound(format!("api key {id}"))),
        }
    }

    async fn create_login(&self, login: &LoginSession) -> Result<(), IdentityStoreError> {
        let mut st = self.state();
        st.require_org(&login.org)?;
        st.require_user(&login.user)?;
        if st.logins.contains_key(&login.id) {
            return Err(IdentityStoreError::Conflict(format!(
                "login {} exists",
                login.id
            )));
        }
        if st.hash_taken(&login.hash) {
            return Err(IdentityStoreError::Conflict(
                "token hash already in use".to_string(),
            ));
        }
        st.logins.insert(login.id.clone(), login.clone());
        Ok(())
    }

    async fn find_login(&self, hash: &TokenHash) -> Result<LoginSession, IdentityStoreError> {
        let st = self.state();
        find_by_hash(st.logins.values(), hash, |l| &l.hash)
            .cloned()
            .ok_or_else(|| IdentityStoreError::NotFound("no login with this hash".to_string()))
    }

    async fn delete_login(&self, id: &LoginId) -> Result<(), IdentityStoreError> {
        match self.state().logins.remove(id) {
            Some(_) => Ok(()),
            None => Err(IdentityStoreError::NotFound(format!("login {id}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::tenancy::Scope;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::FutureExt::now_or_never(f).expect("in-memory fakes never wait")
    }

    #[test]
    fn rows_need_their_org_and_user_and_hashes_are_unique_across_keys_and_logins() {
        let store = InMemoryIdentityStore::new();
        let (org, user) = (OrgId::parse("o1").unwrap(), UserId::parse("u1").unwrap());
        let key = NewApiKey {
            id: ApiKeyId::parse("k1").unwrap(),
            org: org.clone(),
            user: user.clone(),
            name: "n".to_string(),
            prefix: "sk_abcd".to_string(),
            hash: TokenHash([1; 32]),
            scopes: vec![Scope::Sessions],
            created_at: Timestamp::EPOCH,
        };
        assert!(matches!(
            block_on(store.create_api_key(&key)),
            Err(IdentityStoreError::NotFound(_))
        ));
        block_on(store.create_org(&Org {
            id: org.clone(),
            name: "o".to_string(),
            created_at: Timestamp::EPOCH,
        }))
        .unwrap();
        block_on(store.create_user(&User {
            id: user.clone(),
            email: "a@b.c".to_string(),
            password_hash: None,
            created_at: Timestamp::EPOCH,
        }))
        .unwrap();
        block_on(store.create_api_key(&key)).unwrap();
        let login = LoginSession {
            id: LoginId::parse("l1").unwrap(),
            org,
            user,
            hash: TokenHash([1; 32]),
            created_at: Timestamp::EPOCH,
            expires_at: Timestamp::from_millis(1),
        };
        assert!(matches!(
            block_on(store.create_login(&login)),
            Err(IdentityStoreError::Conflict(_))
        ));
        assert!(matches!(
            block_on(store.delete_login(&login.id)),
            Err(IdentityStoreError::NotFound(_))
        ));
    }
}
