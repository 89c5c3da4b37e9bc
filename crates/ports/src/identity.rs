//! Identity plane: who is calling (`Authenticator`), the orgs, users and keys behind it
//! (`IdentityStore`), and the tenant's sealed provider keys (`SecretVault`).

use crate::secret::SecretString;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use switchboard_core::crypto::TokenHash;
use switchboard_core::tenancy::{Principal, Scope, TenantContext};
use switchboard_core::{ApiKeyId, LoginId, OrgId, Timestamp, UserId};

crate::port_error!(
    /// Errors of [`IdentityStore`].
    IdentityStoreError,
    "identity store"
);
crate::port_error!(
    /// Errors of [`Authenticator`].
    AuthenticatorError,
    "authenticator"
);
crate::port_error!(
    /// Errors of [`SecretVault`].
    SecretVaultError,
    "secret vault"
);

/// An organisation (tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    pub created_at: Timestamp,
}

/// A user. `password_hash` is an argon2id PHC string, absent for key-only users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub password_hash: Option<String>,
    pub created_at: Timestamp,
}

/// A user's role within an org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    /// The scopes a principal with this role holds.
    pub fn scopes(self) -> Vec<Scope> {
        match self {
            Role::Owner | Role::Admin => Scope::ALL.to_vec(),
            Role::Member => Scope::MEMBER.to_vec(),
        }
    }
}

/// A user's membership of an org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub org: OrgId,
    pub user: UserId,
    pub role: Role,
}

/// A new API key as stored: only its SHA-256 and its visible prefix, never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub org: OrgId,
    pub user: UserId,
    pub name: String,
    /// The first characters of the key, shown in listings (`sk_AbCd`).
    pub prefix: String,
    pub hash: TokenHash,
    pub scopes: Vec<Scope>,
    pub created_at: Timestamp,
}

/// An API key's public metadata (`GET /v1/api-keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyMeta {
    pub id: ApiKeyId,
    pub name: String,
    pub prefix: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// An API key row found by its hash, for authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub meta: ApiKeyMeta,
    pub org: OrgId,
    pub user: UserId,
    pub hash: TokenHash,
    pub scopes: Vec<Scope>,
}

/// A login session as stored: the token only as its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSession {
    pub id: LoginId,
    pub org: OrgId,
    pub user: UserId,
    pub hash: TokenHash,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// Orgs, users, memberships, API keys and login sessions.
///
/// Ids, hashes and timestamps are minted by the caller; the store keeps them. Secrets never reach
/// the store in clear.
///
/// # Contract
/// - `create_org_and_find`: a created org can be read back by id; an unknown id is `NotFound`.
/// - `user_email_unique`: a second user with the same email (case-insensitive) is `Conflict`.
/// - `membership_roles`: `add_member` records the role; `memberships` lists a user's orgs; adding the
///   same member twice is `Conflict`.
/// - `api_key_stored_hashed`: `find_api_key` by hash returns the row with org, user, prefix and
///   scopes; no other hash finds it.
/// - `api_key_listing_is_tenant_scoped`: `list_api_keys` shows only the tenant's keys.
/// - `api_key_revoke`: `revoke_api_key` sets `revoked_at`; revoking another org's key is `NotFound`
///   and leaves it working.
/// - `login_session_round_trip`: a login session is found by its hash until deleted.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    async fn create_org(&self, org: &Org) -> Result<(), IdentityStoreError>;
    async fn org(&self, id: &OrgId) -> Result<Org, IdentityStoreError>;
    async fn create_user(&self, user: &User) -> Result<(), IdentityStoreError>;
    async fn user_by_email(&self, email: &str) -> Result<User, IdentityStoreError>;
    async fn add_member(&self, membership: &Membership) -> Result<(), IdentityStoreError>;
    async fn memberships(&self, user: &UserId) -> Result<Vec<Membership>, IdentityStoreError>;
    async fn create_api_key(&self, key: &NewApiKey) -> Result<(), IdentityStoreError>;
    async fn find_api_key(&self, hash: &TokenHash) -> Result<ApiKeyRecord, IdentityStoreError>;
    async fn list_api_keys(
        &self,
        tenant: &TenantContext,
    ) -> Result<Vec<ApiKeyMeta>, IdentityStoreError>;
    async fn revoke_api_key(
        &self,
        tenant: &TenantContext,
        id: &ApiKeyId,
        at: Timestamp,
    ) -> Result<(), IdentityStoreError>;
    async fn create_login(&self, login: &LoginSession) -> Result<(), IdentityStoreError>;
    async fn find_login(&self, hash: &TokenHash) -> Result<LoginSession, IdentityStoreError>;
    async fn delete_login(&self, id: &LoginId) -> Result<(), IdentityStoreError>;
}

/// A bearer credential as presented: an API key (`sk_…`) or a login session token.
#[derive(Debug, Clone)]
pub struct Credential(pub SecretString);

/// Turns a presented credential into a [`Principal`].
///
/// # Contract
/// - `api_key_authenticates`: a live API key yields the principal of its org and user, with its key
///   id and scopes.
/// - `login_token_authenticates`: a live login token yields its org and user, no key id.
/// - `unknown_credential_unauthorized`: an unknown or malformed token is `Unauthorized`.
/// - `revoked_key_unauthorized`: a key revoked after it was used stops working at its next use.
/// - `expired_login_unauthorized`: a login token past `expires_at` (by the `Clock`) is `Unauthorized`.
#[async_trait]
pub trait Authenticator: Send + Sync {
    async fn authenticate(&self, credential: &Credential) -> Result<Principal, AuthenticatorError>;
}

/// A provider credential as listed (`GET /v1/credentials`): never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialMeta {
    pub provider: String,
    pub last4: String,
    pub updated_at: Timestamp,
}

/// A sealed secret as stored: opaque bytes plus what they are bound to. Exported and imported for
/// backups; binding to the org is cryptographic, so a blob moved to another org does not open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    pub provider: String,
    pub key_version: u32,
    pub last4: String,
    pub blob: Vec<u8>,
    pub updated_at: Timestamp,
}

/// BYOK provider keys, sealed per tenant.
///
/// # Contract
/// - `put_then_open`: a stored key opens to the same value for the same tenant and provider.
/// - `list_shows_last4_only`: `list` shows provider, last four characters and time, never the key.
/// - `overwrite_replaces`: a second `put` for the same provider replaces the first.
/// - `delete_removes`: after `delete`, `open` is `NotFound`; deleting a missing key is `NotFound`.
/// - `tenant_isolation`: another tenant's `open` of the same provider is `NotFound`.
/// - `cross_tenant_blob_refused`: a sealed blob exported from one org and imported into another
///   fails to open (`Corrupt`), and the importing org's other keys are unaffected.
/// - `invalid_provider_refused`: an empty or malformed provider name is `Invalid`.
#[async_trait]
pub trait SecretVault: Send + Sync {
    async fn put(
        &self,
        tenant: &TenantContext,
        provider: &str,
        secret: &SecretString,
    ) -> Result<CredentialMeta, SecretVaultError>;
    async fn open(
        &self,
        tenant: &TenantContext,
        provider: &str,
    ) -> Result<SecretString, SecretVaultError>;
    async fn list(&self, tenant: &TenantContext) -> Result<Vec<CredentialMeta>, SecretVaultError>;
    async fn delete(&self, tenant: &TenantContext, provider: &str) -> Result<(), SecretVaultError>;
    async fn export_sealed(
        &self,
        tenant: &TenantContext,
        provider: &str,
    ) -> Result<SealedSecret, SecretVaultError>;
    async fn import_sealed(
        &self,
        tenant: &TenantContext,
        sealed: &SealedSecret,
    ) -> Result<(), SecretVaultError>;
}

/// Checks a provider name: 1-64 characters of `[a-z0-9_.-]` (the part of a model ref before `/`).
pub fn valid_provider(provider: &str) -> bool {
    !provider.is_empty()
        && provider.len() <= 64
        && provider
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}
