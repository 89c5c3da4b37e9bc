//! The operations behind the HTTP API of PROTOCOL.md, over `Arc<dyn Port>`s: authenticate, check
//! scopes, parse, mint ids, call the ports, map errors to `{"error": {"code", "message"}}` statuses.
//! The HTTP layer is a thin adapter over this; the walking skeleton drives it directly.

use crate::mint;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use switchboard_core::audit::{AuditAction, AuditEntry, AuditOutcome};
use switchboard_core::protocol::RepoSpec;
use switchboard_core::run::RunRecord;
use switchboard_core::session::SessionInfo;
use switchboard_core::tenancy::{Principal, Scope};
use switchboard_core::{ApiKeyId, ClientMsgId, ErrorClass, ModelRef, OrgId, RunId, SessionId, UserId};
use switchboard_ports::identity::{Credential, CredentialMeta, Membership, NewApiKey, Org, Role, User};
use switchboard_ports::record::RunQuery;
use switchboard_ports::session::{ClientLink, CreateSession, EventPage, PromptRequest, Queued};
use switchboard_ports::{AuditLog, Authenticator, Classify, Clock, IdentityStore, RunLedger, SecretString, SecretVault, SessionHost};

/// An API error: HTTP status, stable snake_case code, human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        ApiError { status, code: code.to_string(), message: message.into() }
    }

    /// From any classified port error.
    pub fn from_port<E: Classify + std::fmt::Display>(e: E) -> Self {
        let class = e.class();
        ApiError::new(class.http_status(), class.code(), e.to_string())
    }

    pub fn class_not_found(what: &str) -> Self {
        ApiError::new(404, ErrorClass::NotFound.code(), format!("{what} not found"))
    }

    /// The JSON body of PROTOCOL.md: `{"error": {"code", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

/// What `switchboard admin create-org` prints: one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedOrg {
    pub org_id: OrgId,
    pub user_id: UserId,
    pub api_key: String,
}

/// `POST /v1/sessions` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateSessionBody {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub repo: Option<RepoSpec>,
}

/// `POST /v1/sessions/{id}/prompts` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptBody {
    pub text: String,
    #[serde(default)]
    pub client_msg_id: Option<ClientMsgId>,
}

/// The agent a session runs when the request names none.
pub const DEFAULT_AGENT: &str = "opencode";

/// The application: every port the API needs.
#[derive(Clone)]
pub struct App {
    pub identity: Arc<dyn IdentityStore>,
    pub authenticator: Arc<dyn Authenticator>,
    pub vault: Arc<dyn SecretVault>,
    pub host: Arc<dyn SessionHost>,
    pub ledger: Arc<dyn RunLedger>,
    pub audit: Arc<dyn AuditLog>,
    pub clock: Arc<dyn Clock>,
}

fn require(principal: &Principal, scope: Scope) -> Result<(), ApiError> {
    if principal.has(scope) {
        Ok(())
    } else {
        Err(ApiError::new(403, "forbidden", format!("this credential lacks the {scope:?} scope")))
    }
}

/// A session id from a path: anything unparseable is simply not found.
fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw).map_err(|_| ApiError::class_not_found("session"))
}

impl App {
    /// Creates an org with an owner and a first API key (the operator CLI).
    pub async fn create_org(&self, name: &str, email: Option<&str>) -> Result<CreatedOrg, ApiError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(ApiError::new(400, "invalid", "an org name is 1-200 characters"));
        }
        let now = self.clock.now();
        let org = OrgId::parse(format!("org_{}", mint::uuid_v7())).expect("a minted org id is valid");
        let user = UserId::parse(format!("usr_{}", mint::uuid_v7())).expect("a minted user id is valid");
        let email = email.map(str::to_string).unwrap_or_else(|| format!("owner@{}.invalid", org));
        self.identity.create_org(&Org { id: org.clone(), name: name.to_string(), created_at: now }).await.map_err(ApiError::from_port)?;
        self.identity
            .create_user(&User { id: user.clone(), email, password_hash: None, created_at: now })
            .await
            .map_err(ApiError::from_port)?;
        self.identity.add_member(&Membership { org: org.clone(), user: user.clone(), role: Role::Owner }).await.map_err(ApiError::from_port)?;
        let owner = Principal::from_verified_credential(org.clone(), user.clone(), None, Role::Owner.scopes());
        let key = self.issue_api_key(&owner, "first key").await?;
        Ok(CreatedOrg { org_id: org, user_id: user, api_key: key.1.expose().to_string() })
    }

    /// `POST /v1/api-keys`: a new key for the caller, shown once.
    pub async fn issue_api_key(&self, principal: &Principal, name: &str) -> Result<(ApiKeyId, SecretString), ApiError> {
        require(principal, Scope::ApiKeys)?;
        let key = mint::secret("sk_");
        let id = ApiKeyId::parse(format!("key_{}", mint::uuid_v7())).expect("a minted key id is valid");
        let now = self.clock.now();
        self.identity
            .create_api_key(&NewApiKey {
                id: id.clone(),
                org: principal.org().clone(),
                user: principal.user().clone(),
                name: name.to_string(),
                prefix: mint::visible_prefix(&key),
                hash: mint::hash(&key),
                scopes: principal.scopes().to_vec(),
                created_at: now,
            })
            .await
            .map_err(ApiError::from_port)?;
        self.audit_best_effort(principal, AuditAction::ApiKeyCreated, id.as_str()).await;
        Ok((id, key))
    }

    /// `Authorization: Bearer <token>` → the principal. Anything else is 401.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::new(401, ErrorClass::Unauthorized.code(), "a bearer credential is required"))?;
        self.authenticator.authenticate(&Credential(SecretString::new(token))).await.map_err(ApiError::from_port)
    }

    /// `PUT /v1/credentials/{provider}`.
    pub async fn put_credential(&self, principal: &Principal, provider: &str, api_key: &str) -> Result<CredentialMeta, ApiError> {
        require(principal, Scope::Credentials)?;
        if api_key.trim().is_empty() {
            return Err(ApiError::new(400, "invalid", "api_key is required"));
        }
        let meta = self.vault.put(&principal.tenant(), provider, &SecretString::new(api_key)).await.map_err(ApiError::from_port)?;
        self.audit_best_effort(principal, AuditAction::CredentialWritten, provider).await;
        Ok(meta)
    }

    /// `GET /v1/credentials`.
    pub async fn credentials(&self, principal: &Principal) -> Result<Vec<CredentialMeta>, ApiError> {
        require(principal, Scope::Credentials)?;
        self.vault.list(&principal.tenant()).await.map_err(ApiError::from_port)
    }

    /// `POST /v1/sessions`. The model is required and must name its provider (422 otherwise).
    pub async fn create_session(&self, principal: &Principal, body: CreateSessionBody) -> Result<SessionInfo, ApiError> {
        require(principal, Scope::Sessions)?;
        let model = ModelRef::parse(body.model.as_deref().unwrap_or("")).map_err(|e| ApiError::new(422, "invalid_model", e.to_string()))?;
        let agent = body.agent.unwrap_or_else(|| DEFAULT_AGENT.to_string());
        let session_id = SessionId::parse(format!("ses_{}", mint::uuid_v7())).expect("a minted session id is valid");
        self.host
            .create(principal, CreateSession { session_id, model, agent, repo: body.repo })
            .await
            .map_err(ApiError::from_port)
    }

    /// `GET /v1/sessions/{id}`.
    pub async fn session(&self, principal: &Principal, id: &str) -> Result<SessionInfo, ApiError> {
        require(principal, Scope::Sessions)?;
        self.host.info(&principal.tenant(), &session_id(id)?).await.map_err(ApiError::from_port)
    }

    /// `GET /v1/sessions`.
    pub async fn sessions(&self, principal: &Principal) -> Result<Vec<SessionInfo>, ApiError> {
        require(principal, Scope::Sessions)?;
        self.host.list(&principal.tenant()).await.map_err(ApiError::from_port)
    }

    /// `POST /v1/sessions/{id}/prompts` → 202 `{run_id, position}`.
    pub async fn prompt(&self, principal: &Principal, id: &str, body: PromptBody) -> Result<Queued, ApiError> {
        require(principal, Scope::Sessions)?;
        let run_id = RunId::parse(format!("run_{}", mint::uuid_v7())).expect("a minted run id is valid");
        self.host
            .prompt(principal, &session_id(id)?, PromptRequest { run_id, text: body.text, client_msg_id: body.client_msg_id })
            .await
            .map_err(ApiError::from_port)
    }

    /// `POST /v1/sessions/{id}/cancel`.
    pub async fn cancel(&self, principal: &Principal, id: &str, run_id: Option<&str>) -> Result<(), ApiError> {
        require(principal, Scope::Sessions)?;
        let run = run_id.map(|r| RunId::parse(r).map_err(|_| ApiError::class_not_found("run"))).transpose()?;
        self.host.cancel(&principal.tenant(), &session_id(id)?, run).await.map_err(ApiError::from_port)
    }

    /// `DELETE /v1/sessions/{id}`.
    pub async fn close(&self, principal: &Principal, id: &str) -> Result<(), ApiError> {
        require(principal, Scope::Sessions)?;
        self.host.close(&principal.tenant(), &session_id(id)?).await.map_err(ApiError::from_port)
    }

    /// `GET /v1/sessions/{id}/events?after=&limit=`.
    pub async fn events(&self, principal: &Principal, id: &str, after: u64, limit: usize) -> Result<EventPage, ApiError> {
        require(principal, Scope::Sessions)?;
        self.host.events(&principal.tenant(), &session_id(id)?, after, limit.clamp(1, 1000)).await.map_err(ApiError::from_port)
    }

    /// `GET /v1/sessions/{id}/ws?after=`: a client link (the WebSocket endpoint pumps it).
    pub async fn attach(&self, principal: &Principal, id: &str, after: Option<u64>) -> Result<ClientLink, ApiError> {
        require(principal, Scope::Sessions)?;
        self.host.attach_client(principal, &session_id(id)?, after).await.map_err(ApiError::from_port)
    }

    /// `GET /v1/runs/{run_id}`: the run record with its events, from the ledger.
    pub async fn run(&self, principal: &Principal, run_id: &str) -> Result<RunRecord, ApiError> {
        require(principal, Scope::Sessions)?;
        let run = RunId::parse(run_id).map_err(|_| ApiError::class_not_found("run"))?;
        self.ledger.get(&principal.tenant(), &run).await.map_err(ApiError::from_port)
    }

    /// `GET /v1/runs?session_id=&limit=`: summaries, newest first.
    pub async fn runs(&self, principal: &Principal, session: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, ApiError> {
        require(principal, Scope::Sessions)?;
        let session_id = session.map(session_id).transpose()?;
        let query = RunQuery { session_id, limit: limit.clamp(1, 1000), ..RunQuery::default() };
        self.ledger.list(&principal.tenant(), &query).await.map_err(ApiError::from_port)
    }

    /// Audit entries are best effort here: a failing audit log never fails the request it records.
    async fn audit_best_effort(&self, principal: &Principal, action: AuditAction, target: &str) {
        let entry = AuditEntry {
            at: self.clock.now(),
            org: Some(principal.org().clone()),
            actor: Some(principal.user().clone()),
            action,
            target: target.to_string(),
            outcome: AuditOutcome::Allowed,
        };
        if let Err(e) = self.audit.append(&entry).await {
            tracing::warn!(error = %e, "audit entry not written");
        }
    }
}
