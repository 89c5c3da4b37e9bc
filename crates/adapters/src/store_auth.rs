//! `StoreAuthenticator`: the real `Authenticator`. A bearer token is hashed (SHA-256) and looked up
//! in an `IdentityStore` (any engine), the stored hash is compared in constant time, and expiry is
//! judged by the `Clock` port.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use switchboard_core::crypto::TokenHash;
use switchboard_core::tenancy::Principal;
use switchboard_core::ErrorClass;
use switchboard_ports::identity::{
    Authenticator, AuthenticatorError, Credential, IdentityStore, IdentityStoreError,
};
use switchboard_ports::{Classify, Clock, FromClass};

/// The prefix of every API key; any other token is taken for a login session token.
pub const API_KEY_PREFIX: &str = "sk_";

/// The longest token accepted; longer ones are malformed.
pub const MAX_TOKEN_LEN: usize = 512;

/// SHA-256 of a bearer token, as the identity store keeps it.
pub fn hash_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// Authenticates bearer tokens against an [`IdentityStore`].
///
/// - `sk_…` tokens are API keys: live keys yield their org, user, key id and the key's own scopes;
///   revoked keys are `Unauthorized` from their next use on (every call reads the store).
/// - Other tokens are login session tokens: live logins yield their org and user with the scopes of
///   the user's role in that org; a login at or past `expires_at` (by the clock), or whose user is no
///   longer a member, is `Unauthorized`.
/// - Unknown and malformed tokens are `Unauthorized`, all with the same message. A store that cannot
///   answer yields its own class (`Unavailable`, `Timeout`, …), never a principal and never a
///   misleading `Unauthorized`.
pub struct StoreAuthenticator {
    identity: Arc<dyn IdentityStore>,
    clock: Arc<dyn Clock>,
}

impl StoreAuthenticator {
    pub fn new(identity: Arc<dyn IdentityStore>, clock: Arc<dyn Clock>) -> Self {
        StoreAuthenticator { identity, clock }
    }
}

fn unauthorized() -> AuthenticatorError {
    // One message for every refusal, so the answer does not tell which part was wrong.
    AuthenticatorError::Unauthorized("invalid or expired credential".to_string())
}

/// Maps a store failure: a missing row is an unknown credential; an infrastructure failure keeps
/// its class so the caller can answer 503 rather than 401.
fn from_store(e: IdentityStoreError) -> AuthenticatorError {
    match e.class() {
        ErrorClass::NotFound | ErrorClass::Unauthorized | ErrorClass::Invalid => unauthorized(),
        ErrorClass::Conflict => {
            AuthenticatorError::Corrupt(format!("identity store: {}", e.message()))
        }
        class => AuthenticatorError::from_class(class, format!("identity store: {}", e.message())),
    }
}

fn well_formed(token: &str) -> bool {
    !token.is_empty() && token.len() <= MAX_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_graphic())
}

#[async_trait]
impl Authenticator for StoreAuthenticator {
    async fn authenticate(&self, credential: &Credential) -> Result<Principal, AuthenticatorError> {
        let token = credential.0.expose();
        if !well_formed(token) {
            return Err(unauthorized());
        }
        let hash = hash_token(token);
        if let Some(rest) = token.strip_prefix(API_KEY_PREFIX) {
            if rest.is_empty() {
                return Err(unauthorized());
            }
            let key = self
                .identity
                .find_api_key(&hash)
                .await
                .map_err(from_store)?;
            if !key.hash.matches(&hash) || key.meta.revoked_at.is_some() {
                return Err(unauthorized());
            }
            return Ok(Principal::from_verified_credential(
                key.org,
                key.user,
                Some(key.meta.id),
                key.scopes,
            ));
        }
        let login = self.identity.find_login(&hash).await.map_err(from_store)?;
        if !login.hash.matches(&hash) || self.clock.now() >= login.expires_at {
            return Err(unauthorized());
        }
        let memberships = self
            .identity
            .memberships(&login.user)
            .await
            .map_err(from_store)?;
        let role = memberships
            .iter()
            .find(|m| m.org == login.org)
            .map(|m| m.role)
            .ok_or_else(unauthorized)?;
        Ok(Principal::from_verified_credential(
            login.org,
            login.user,
            None,
            role.scopes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_sha256() {
        assert_eq!(
            hex::encode(hash_token("abc").0),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_tokens_are_refused_before_any_lookup() {
        for t in [
            "",
            " ",
            "sk_ abc",
            "tab\there",
            "ünï",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(!well_formed(t), "{t:?}");
        }
        assert!(well_formed("sk_0123abcd") && well_formed(&"x".repeat(MAX_TOKEN_LEN)));
    }

    #[test]
    fn store_failures_keep_their_class_and_missing_rows_are_unauthorized() {
        for (class, want) in [
            (ErrorClass::NotFound, ErrorClass::Unauthorized),
            (ErrorClass::Invalid, ErrorClass::Unauthorized),
            (ErrorClass::Conflict, ErrorClass::Corrupt),
            (ErrorClass::Unavailable, ErrorClass::Unavailable),
            (ErrorClass::Timeout, ErrorClass::Timeout),
            (ErrorClass::Corrupt, ErrorClass::Corrupt),
        ] {
            let e = from_store(IdentityStoreError::from_class(class, "x".to_string()));
            assert_eq!(e.class(), want, "{class:?}");
        }
    }
}
