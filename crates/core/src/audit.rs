//! Audit entries: security-relevant actions, recorded by the `AuditLog` port.

use crate::ids::{OrgId, UserId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    Login,
    LoginFailed,
    ApiKeyCreated,
    ApiKeyRevoked,
    CredentialWritten,
    CredentialDeleted,
    CrossTenantDenied,
    SandboxTokenRejected,
    SessionCreated,
    SessionClosed,
}

/// Whether the action was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Allowed,
    Denied,
}

/// One audit record. `target` names the object acted on (a key id, a provider, a session key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: Timestamp,
    pub org: Option<OrgId>,
    pub actor: Option<UserId>,
    pub action: AuditAction,
    pub target: String,
    pub outcome: AuditOutcome,
}
