//! `InMemoryAuthenticator`: an authenticator with its own table of the credentials it issued (API
//! keys and login tokens, kept as their SHA-256), revocable, with login expiry judged by the
//! `Clock` port. It needs no identity store; the real, store-backed authenticator is
//! `switchboard_adapters::store_auth::StoreAuthenticator`.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use switchboard_core::crypto::TokenHash;
use switchboard_core::tenancy::Principal;
use switchboard_core::Timestamp;
use switchboard_ports::identity::{Authenticator, AuthenticatorError, Credential};
use switchboard_ports::{Clock, SecretString};

/// One credential as issued: only its hash is kept, never the token.
struct Issued {
    hash: TokenHash,
    principal: Principal,
    /// `Some` for login tokens: refused at or after this time.
    expires_at: Option<Timestamp>,
    revoked: bool,
}

#[derive(Default)]
struct State {
    issued: Vec<Issued>,
    /// Tokens minted so far: the next token is derived from it (deterministic, never repeated).
    minted: u64,
}

/// An in-memory authenticator over its own table of issued credentials.
///
/// - [`issue_api_key`](Self::issue_api_key) returns an `sk_…` token that authenticates as the given
///   principal until [`revoke`](Self::revoke)d.
/// - [`issue_login`](Self::issue_login) returns a token that authenticates as the given principal
///   until `expires_at` by the clock (refused at `expires_at` itself), or until revoked.
/// - Any other token, revoked or expired, is `Unauthorized` with one message for all. Lookups
///   compare the presented token's hash with every issued one in constant time.
///
/// Tokens are derived from a counter (no OS randomness); they are distinct within one authenticator.
pub struct InMemoryAuthenticator {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

fn hash(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

fn unauthorized() -> AuthenticatorError {
    AuthenticatorError::Unauthorized("invalid or expired credential".to_string())
}

impl InMemoryAuthenticator {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        InMemoryAuthenticator {
            clock,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn issue(
        &self,
        prefix: &str,
        principal: Principal,
        expires_at: Option<Timestamp>,
    ) -> SecretString {
        let mut st = self.state();
        st.minted += 1;
        let seed = format!("in-memory-authenticator/{}", st.minted);
        let token = format!("{prefix}{}", hex::encode(Sha256::digest(seed.as_bytes())));
        st.issued.push(Issued {
            hash: hash(&token),
            principal,
            expires_at,
            revoked: false,
        });
        SecretString::new(token)
    }

    /// Issues an API key (`sk_` then 64 hex digits) that authenticates as `principal` (its org,
    /// user, key id and scopes) until revoked.
    pub fn issue_api_key(&self, principal: Principal) -> SecretString {
        self.issue("sk_", principal, None)
    }

    /// Issues a login token (64 hex digits) that authenticates as `principal` until `expires_at`.
    pub fn issue_login(&self, principal: Principal, expires_at: Timestamp) -> SecretString {
        self.issue("", principal, Some(expires_at))
    }

    /// Revokes an issued credential: it is refused from its next use on. Returns whether `token`
    /// was issued here; revoking twice is harmless.
    pub fn revoke(&self, token: &SecretString) -> bool {
        let h = hash(token.expose());
        let mut found = false;
        for issued in self.state().issued.iter_mut() {
            if issued.hash.matches(&h) {
                issued.revoked = true;
                found = true;
            }
        }
        found
    }
}

#[async_trait]
impl Authenticator for InMemoryAuthenticator {
    async fn authenticate(&self, credential: &Credential) -> Result<Principal, AuthenticatorError> {
        let presented = hash(credential.0.expose());
        let now = self.clock.now();
        let st = self.state();
        // Every row is compared, match or not, so the time taken does not depend on where it is.
        let mut found = None;
        for issued in &st.issued {
            if issued.hash.matches(&presented) {
                found = Some(issued);
            }
        }
        match found {
            Some(i) if !i.revoked && i.expires_at.is_none_or(|t| now < t) => {
                Ok(i.principal.clone())
            }
            _ => Err(unauthorized()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemoryClock;
    use std::time::Duration;
    use switchboard_core::tenancy::Scope;
    use switchboard_core::{ApiKeyId, ErrorClass, OrgId, UserId};
    use switchboard_ports::Classify;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::FutureExt::now_or_never(f).expect("in-memory fakes never wait")
    }

    fn principal(key: Option<&str>) -> Principal {
        Principal::from_verified_credential(
            OrgId::parse("o1").unwrap(),
            UserId::parse("u1").unwrap(),
            key.map(|k| ApiKeyId::parse(k).unwrap()),
            vec![Scope::Sessions],
        )
    }

    fn auth(a: &InMemoryAuthenticator, token: &SecretString) -> Result<Principal, ErrorClass> {
        block_on(a.authenticate(&Credential(token.clone()))).map_err(|e| e.class())
    }

    #[test]
    fn issued_keys_authenticate_until_revoked() {
        let clock = InMemoryClock::new();
        let a = InMemoryAuthenticator::new(Arc::new(clock));
        let key = a.issue_api_key(principal(Some("k1")));
        let other = a.issue_api_key(principal(Some("k2")));
        assert!(key.expose().starts_with("sk_") && key.expose() != other.expose());
        assert_eq!(auth(&a, &key), Ok(principal(Some("k1"))));
        assert!(a.revoke(&key));
        assert!(a.revoke(&key), "revoking twice is harmless");
        assert_eq!(auth(&a, &key), Err(ErrorClass::Unauthorized));
        assert_eq!(
            auth(&a, &other),
            Ok(principal(Some("k2"))),
            "only the revoked key stops"
        );
        assert!(!a.revoke(&SecretString::new("sk_never_issued")));
    }

    #[test]
    fn logins_expire_by_the_clock_and_unknown_tokens_are_refused() {
        let clock = InMemoryClock::new();
        let a = InMemoryAuthenticator::new(Arc::new(clock.clone()));
        let expires = clock.now().add(Duration::from_secs(60));
        let login = a.issue_login(principal(None), expires);
        assert!(!login.expose().starts_with("sk_"));
        assert_eq!(auth(&a, &login), Ok(principal(None)));
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            auth(&a, &login),
            Err(ErrorClass::Unauthorized),
            "refused at expires_at"
        );
        for t in [
            "",
            "sk_",
            &login.expose()[1..],
            &login.expose().to_uppercase(),
        ] {
            assert_eq!(
                auth(&a, &SecretString::new(t)),
                Err(ErrorClass::Unauthorized),
                "{t:?}"
            );
        }
    }
}
