//! Tenancy by construction: a `SessionKey` can only be made from an authenticated tenant context.

use crate::ids::{ApiKeyId, OrgId, SessionId, UserId};
use serde::{Deserialize, Serialize};

/// What an authenticated principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Create, prompt, watch and close sessions; read runs.
    Sessions,
    /// Write and delete BYOK credentials.
    Credentials,
    /// Create and revoke API keys.
    ApiKeys,
    /// Everything in the org, including membership.
    Admin,
}

impl Scope {
    /// The scopes an org member gets by default.
    pub const MEMBER: &'static [Scope] = &[Scope::Sessions, Scope::Credentials, Scope::ApiKeys];
    /// Every scope.
    pub const ALL: &'static [Scope] = &[
        Scope::Sessions,
        Scope::Credentials,
        Scope::ApiKeys,
        Scope::Admin,
    ];
}

/// Who made a request, as established by an `Authenticator` from a verified credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    org: OrgId,
    user: UserId,
    api_key_id: Option<ApiKeyId>,
    scopes: Vec<Scope>,
}

impl Principal {
    /// Builds a principal. Only an `Authenticator` that has just verified a credential (or the
    /// operator CLI acting on the server's own data) may call this; everything downstream trusts it.
    pub fn from_verified_credential(
        org: OrgId,
        user: UserId,
        api_key_id: Option<ApiKeyId>,
        scopes: Vec<Scope>,
    ) -> Self {
        Principal {
            org,
            user,
            api_key_id,
            scopes,
        }
    }

    pub fn org(&self) -> &OrgId {
        &self.org
    }

    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The API key used, when the credential was one (None for a login session).
    pub fn api_key_id(&self) -> Option<&ApiKeyId> {
        self.api_key_id.as_ref()
    }

    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Whether the principal holds `scope` (Admin holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// The tenant this principal acts for.
    pub fn tenant(&self) -> TenantContext {
        TenantContext {
            org: self.org.clone(),
        }
    }

    /// Who to attribute work to in run records and audit entries.
    pub fn attribution(&self) -> Attribution {
        Attribution {
            user_id: self.user.clone(),
            api_key_id: self.api_key_id.clone(),
        }
    }
}

/// The tenant a request acts within. Obtained only from a [`Principal`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantContext {
    org: OrgId,
}

impl TenantContext {
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// The key of one of this tenant's sessions. The org part always comes from the tenant, so a
    /// request can never name another org's actor.
    pub fn session(&self, session: SessionId) -> SessionKey {
        SessionKey {
            org: self.org.clone(),
            session,
        }
    }
}

/// Who a run is attributed to: the prompting user and the API key they used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    pub user_id: UserId,
    pub api_key_id: Option<ApiKeyId>,
}

/// `{org_id}:{session_id}`: the address of one session actor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SessionKey {
    org: OrgId,
    session: SessionId,
}

impl SessionKey {
    /// The key named by a sandbox dial-back route. It only locates the actor: the actor then checks
    /// the sandbox token against its stored hash before anything is accepted.
    pub fn for_sandbox_dial_back(org: OrgId, session: SessionId) -> Self {
        SessionKey { org, session }
    }

    /// A key read back from the host's own storage, which only ever held keys built from tenants.
    pub fn from_host_storage(org: OrgId, session: SessionId) -> Self {
        SessionKey { org, session }
    }

    pub fn org(&self) -> &OrgId {
        &self.org
    }

    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// The tenant that owns this session, for work the actor does on the tenant's behalf (opening
    /// its BYOK key for a run, recording its runs). Every actor was created from a tenant context;
    /// a key built for a sandbox dial-back reaches an actor only after the sandbox token is checked.
    pub fn tenant(&self) -> TenantContext {
        TenantContext {
            org: self.org.clone(),
        }
    }

    /// Whether this key belongs to `tenant`.
    pub fn belongs_to(&self, tenant: &TenantContext) -> bool {
        self.org == tenant.org
    }
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.org, self.session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_tenant_org() {
        let p = Principal::from_verified_credential(
            OrgId::parse("o1").unwrap(),
            UserId::parse("u1").unwrap(),
            None,
            Scope::MEMBER.to_vec(),
        );
        let key = p.tenant().session(SessionId::parse("s1").unwrap());
        assert_eq!(key.to_string(), "o1:s1");
        assert!(key.belongs_to(&p.tenant()));
        let other = Principal::from_verified_credential(
            OrgId::parse("o2").unwrap(),
            UserId::parse("u2").unwrap(),
            None,
            vec![],
        );
        assert!(!key.belongs_to(&other.tenant()));
        assert!(!other.has(Scope::Sessions));
        assert!(p.has(Scope::Sessions) && !p.has(Scope::Admin));
    }
}
