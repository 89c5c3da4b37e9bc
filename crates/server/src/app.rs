//! The operations behind the HTTP API of PROTOCOL.md, over `Arc<dyn Port>`s: authenticate, check
//! scopes, parse, mint ids, call the ports, map errors to `{"error": {"code", "message"}}` statuses.
//! The HTTP layer is a thin adapter over this; the walking skeleton drives it directly.

use crate::mint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use switchboard_core::audit::{AuditAction, AuditEntry, AuditOutcome};
use switchboard_core::environment::Environment;
use switchboard_core::protocol::PermissionDecision;
use switchboard_core::protocol::RepoSpec;
use switchboard_core::run::RunRecord;
use switchboard_core::session::{PermissionMode, PermissionPolicy, SessionInfo};
use switchboard_core::tenancy::{Principal, Scope};
use switchboard_core::{
    ApiKeyId, ClientMsgId, ErrorClass, ModelRef, OrgId, RunId, SessionId, UserId,
};
use switchboard_core::{LoginId, Timestamp};
use switchboard_ports::identity::{
    ApiKeyMeta, Credential, CredentialMeta, LoginSession, Membership, NewApiKey, Org, Role, User,
};
use switchboard_ports::record::RunQuery;
use switchboard_ports::session::{ClientLink, CreateSession, EventPage, PromptRequest, Queued};
use switchboard_ports::{
    AuditLog, Authenticator, Classify, Clock, IdentityStore, RepoHost, RunLedger, SecretString,
    SecretVault, SessionHost,
};

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
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// From any classified port error.
    pub fn from_port<E: Classify + std::fmt::Display>(e: E) -> Self {
        let class = e.class();
        ApiError::new(class.http_status(), class.code(), e.to_string())
    }

    pub fn class_not_found(what: &str) -> Self {
        ApiError::new(
            404,
            ErrorClass::NotFound.code(),
            format!("{what} not found"),
        )
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
    /// The session's permission policy (default: the server's).
    #[serde(default)]
    pub permissions: Option<PermissionsBody>,
}

/// `POST /v1/sessions` `"permissions"`: `{"default"?, "tools"?: {"<tool>": mode}, "ask_default"?}`,
/// modes `auto`, `ask` or `deny`, `ask_default` one of the decisions `allow_once`, `allow_always`,
/// `deny`. Omitted fields take the server policy's values. Read as strings so that a bad value is
/// answered with a message naming it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PermissionsBody {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
    #[serde(default)]
    pub ask_default: Option<String>,
}

/// The most tools a permission policy may name.
pub const MAX_POLICY_TOOLS: usize = 100;

/// The longest tool name a permission policy may hold, in characters.
pub const MAX_TOOL_NAME_CHARS: usize = 200;

impl PermissionsBody {
    /// The policy this body asks for, on top of `base` (the server's). A value that is not a mode
    /// or a decision, an empty or overlong tool name, or too many tools is 422
    /// `invalid_permissions`, naming the field.
    pub fn to_policy(&self, base: &PermissionPolicy) -> Result<PermissionPolicy, ApiError> {
        let invalid = |message: String| ApiError::new(422, "invalid_permissions", message);
        let mode = |field: &str, raw: &str| -> Result<PermissionMode, ApiError> {
            match raw {
                "auto" => Ok(PermissionMode::Auto),
                "ask" => Ok(PermissionMode::Ask),
                "deny" => Ok(PermissionMode::Deny),
                other => Err(invalid(format!(
                    "{field} is {other:?}; a permission mode is \"auto\", \"ask\" or \"deny\""
                ))),
            }
        };
        let default = match &self.default {
            Some(raw) => mode("permissions.default", raw)?,
            None => base.default,
        };
        if self.tools.len() > MAX_POLICY_TOOLS {
            return Err(invalid(format!(
                "permissions.tools names {} tools; at most {MAX_POLICY_TOOLS}",
                self.tools.len()
            )));
        }
        let mut per_tool = BTreeMap::new();
        for (tool, raw) in &self.tools {
            let chars = tool.chars().count();
            if tool.trim().is_empty() || chars > MAX_TOOL_NAME_CHARS {
                return Err(invalid(format!(
                    "permissions.tools: a tool name is 1-{MAX_TOOL_NAME_CHARS} characters, not blank"
                )));
            }
            per_tool.insert(
                tool.clone(),
                mode(&format!("permissions.tools.{tool}"), raw)?,
            );
        }
        let ask_default = match self.ask_default.as_deref() {
            None => base.ask_default,
            Some("allow_once") => PermissionDecision::AllowOnce,
            Some("allow_always") => PermissionDecision::AllowAlways,
            Some("deny") => PermissionDecision::Deny,
            Some(other) => {
                return Err(invalid(format!(
                    "permissions.ask_default is {other:?}; it is one of \"allow_once\", \"allow_always\", \"deny\""
                )))
            }
        };
        Ok(PermissionPolicy {
            default,
            per_tool,
            ask_default,
        })
    }
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

/// How long a login session token (`POST /v1/auth/login`, `POST /v1/auth/signup`) stays valid.
pub const LOGIN_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// The shortest password `POST /v1/auth/signup` accepts, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// The longest password accepted (argon2 hashes anything, but a megabyte password is an attack).
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// `POST /v1/auth/signup` body.
#[derive(Debug, Clone, Deserialize)]
pub struct SignupBody {
    pub email: String,
    #[serde(deserialize_with = "secret_string")]
    pub password: SecretString,
    pub org_name: String,
}

/// What a signup made: the user, its org (the user is its owner) and a login token.
#[derive(Debug, Clone)]
pub struct SignedUp {
    pub user_id: UserId,
    pub org_id: OrgId,
    pub token: SecretString,
    pub expires_at: Timestamp,
}

/// `POST /v1/auth/login` body. `org_id` picks one of the user's orgs (default: the first).
#[derive(Debug, Clone, Deserialize)]
pub struct LoginBody {
    pub email: String,
    #[serde(deserialize_with = "secret_string")]
    pub password: SecretString,
    #[serde(default)]
    pub org_id: Option<String>,
}

/// A login session token, shown once.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    pub token: SecretString,
    pub expires_at: Timestamp,
    pub org_id: OrgId,
    pub user_id: UserId,
}

/// A freshly minted API key (`POST /v1/api-keys`): the key itself is shown this once.
#[derive(Debug, Clone)]
pub struct IssuedApiKey {
    pub id: ApiKeyId,
    pub name: String,
    pub key: SecretString,
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at: Timestamp,
}

/// `POST /v1/environment/detect` body: a file list, or a repository to list.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DetectBody {
    #[serde(default)]
    pub files: Option<Vec<String>>,
    #[serde(default)]
    pub repo: Option<RepoSpec>,
}

/// What detection found: the environment (none when no ecosystem is recognised) and how many
/// files counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub environment: Option<Environment>,
    pub file_count: u64,
}

/// The largest file list `POST /v1/environment/detect` accepts.
pub const MAX_DETECT_FILES: usize = 100_000;

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
    /// The permission policy of sessions created without one (the server's).
    pub permission_policy: PermissionPolicy,
    /// Lists repositories for `POST /v1/environment/detect` `{"repo"}`; `None`: not configured.
    pub repo_host: Option<Arc<dyn RepoHost>>,
}

fn require(principal: &Principal, scope: Scope) -> Result<(), ApiError> {
    if principal.has(scope) {
        Ok(())
    } else {
        Err(ApiError::new(
            403,
            "forbidden",
            format!("this credential lacks the {scope:?} scope"),
        ))
    }
}

/// The prefix of login session tokens (anything not `sk_` is taken for one by the authenticator).
pub const LOGIN_TOKEN_PREFIX: &str = "sl_";

/// Reads a JSON string straight into a [`SecretString`] (passwords never sit in a plain `String`
/// that a `Debug` could print).
fn secret_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    String::deserialize(d).map(SecretString::new)
}

/// A plausible email address, trimmed: something@something, at most 320 characters.
fn valid_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim();
    let ok = email.len() <= 320
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        });
    if ok {
        Ok(email.to_string())
    } else {
        Err(ApiError::new(
            400,
            "invalid",
            "email must be an address like name@example.com",
        ))
    }
}

/// A valid argon2id hash of a password nobody knows, checked when the email is unknown so that a
/// refused login takes as long either way.
fn dummy_password_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        switchboard_adapters::password::hash_password(&mint::secret("unknown-user-"))
    })
}

/// A session id from a path: anything unparseable is simply not found.
fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw).map_err(|_| ApiError::class_not_found("session"))
}

impl App {
    /// Creates an org with an owner and a first API key (the operator CLI).
    pub async fn create_org(
        &self,
        name: &str,
        email: Option<&str>,
    ) -> Result<CreatedOrg, ApiError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(ApiError::new(
                400,
                "invalid",
                "an org name is 1-200 characters",
            ));
        }
        let now = self.clock.now();
        let org =
            OrgId::parse(format!("org_{}", mint::uuid_v7())).expect("a minted org id is valid");
        let user =
            UserId::parse(format!("usr_{}", mint::uuid_v7())).expect("a minted user id is valid");
        let email = email
            .map(str::to_string)
            .unwrap_or_else(|| format!("owner@{}.invalid", org));
        self.identity
            .create_org(&Org {
                id: org.clone(),
                name: name.to_string(),
                created_at: now,
            })
            .await
            .map_err(ApiError::from_port)?;
        self.identity
            .create_user(&User {
                id: user.clone(),
                email,
                password_hash: None,
                created_at: now,
            })
            .await
            .map_err(ApiError::from_port)?;
        self.identity
            .add_member(&Membership {
                org: org.clone(),
                user: user.clone(),
                role: Role::Owner,
            })
            .await
            .map_err(ApiError::from_port)?;
        let owner = Principal::from_verified_credential(
            org.clone(),
            user.clone(),
            None,
            Role::Owner.scopes(),
        );
        let key = self.issue_api_key(&owner, "first key").await?;
        Ok(CreatedOrg {
            org_id: org,
            user_id: user,
            api_key: key.1.expose().to_string(),
        })
    }

    /// `POST /v1/api-keys`: a new key for the caller, shown once, with the caller's scopes.
    pub async fn issue_api_key(
        &self,
        principal: &Principal,
        name: &str,
    ) -> Result<(ApiKeyId, SecretString), ApiError> {
        let issued = self.create_api_key(principal, name, None).await?;
        Ok((issued.id, issued.key))
    }

    /// `POST /v1/api-keys` `{"name", "scopes"?}`: a new key for the caller, shown once. The key
    /// holds `scopes` (default: the caller's own); asking for a scope the caller does not hold
    /// (a member asking for `admin`) is 403.
    pub async fn create_api_key(
        &self,
        principal: &Principal,
        name: &str,
        scopes: Option<Vec<Scope>>,
    ) -> Result<IssuedApiKey, ApiError> {
        require(principal, Scope::ApiKeys)?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ApiError::new(
                400,
                "invalid",
                "an API key name is 1-200 characters",
            ));
        }
        let scopes = match scopes {
            None => principal.scopes().to_vec(),
            Some(asked) => {
                if asked.is_empty() {
                    return Err(ApiError::new(
                        400,
                        "invalid",
                        "scopes, when given, name at least one scope",
                    ));
                }
                if let Some(missing) = asked.iter().find(|s| !principal.has(**s)) {
                    return Err(ApiError::new(
                        403,
                        "forbidden",
                        format!("a key cannot hold the {missing:?} scope its creator lacks"),
                    ));
                }
                let mut asked = asked;
                asked.sort();
                asked.dedup();
                asked
            }
        };
        let key = mint::secret("sk_");
        let id =
            ApiKeyId::parse(format!("key_{}", mint::uuid_v7())).expect("a minted key id is valid");
        let now = self.clock.now();
        let prefix = mint::visible_prefix(&key);
        self.identity
            .create_api_key(&NewApiKey {
                id: id.clone(),
                org: principal.org().clone(),
                user: principal.user().clone(),
                name: name.to_string(),
                prefix: prefix.clone(),
                hash: mint::hash(&key),
                scopes: scopes.clone(),
                created_at: now,
            })
            .await
            .map_err(ApiError::from_port)?;
        self.audit_best_effort(principal, AuditAction::ApiKeyCreated, id.as_str())
            .await;
        Ok(IssuedApiKey {
            id,
            name: name.to_string(),
            key,
            prefix,
            scopes,
            created_at: now,
        })
    }

    /// `GET /v1/api-keys`: the tenant's keys, revoked ones included, never the key itself.
    pub async fn api_keys(&self, principal: &Principal) -> Result<Vec<ApiKeyMeta>, ApiError> {
        require(principal, Scope::ApiKeys)?;
        self.identity
            .list_api_keys(&principal.tenant())
            .await
            .map_err(ApiError::from_port)
    }

    /// `DELETE /v1/api-keys/{id}`: the key stops working at its next use. Unknown ids and other
    /// orgs' keys are 404; revoking twice keeps the first revocation.
    pub async fn revoke_api_key(&self, principal: &Principal, id: &str) -> Result<(), ApiError> {
        require(principal, Scope::ApiKeys)?;
        let id = ApiKeyId::parse(id).map_err(|_| ApiError::class_not_found("api key"))?;
        self.identity
            .revoke_api_key(&principal.tenant(), &id, self.clock.now())
            .await
            .map_err(ApiError::from_port)?;
        self.audit_best_effort(principal, AuditAction::ApiKeyRevoked, id.as_str())
            .await;
        Ok(())
    }

    /// `POST /v1/auth/signup`: a user with a password, a new org it owns, and a login token.
    pub async fn signup(&self, body: SignupBody) -> Result<SignedUp, ApiError> {
        let email = valid_email(&body.email)?;
        let org_name = body.org_name.trim();
        if org_name.is_empty() || org_name.chars().count() > 200 {
            return Err(ApiError::new(
                400,
                "invalid",
                "org_name is 1-200 characters",
            ));
        }
        let chars = body.password.expose().chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
            return Err(ApiError::new(
                400,
                "invalid",
                format!("a password is {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters"),
            ));
        }
        let password = body.password.clone();
        let hash = tokio::task::spawn_blocking(move || {
            switchboard_adapters::password::hash_password(&password)
        })
        .await
        .map_err(|e| ApiError::new(500, "internal", format!("password hashing failed: {e}")))?;
        let now = self.clock.now();
        let org =
            OrgId::parse(format!("org_{}", mint::uuid_v7())).expect("a minted org id is valid");
        let user =
            UserId::parse(format!("usr_{}", mint::uuid_v7())).expect("a minted user id is valid");
        // The user first: a taken email (409) then leaves no org behind.
        self.identity
            .create_user(&User {
                id: user.clone(),
                email: email.clone(),
                password_hash: Some(hash),
                created_at: now,
            })
            .await
            .map_err(|e| match e.class() {
                ErrorClass::Conflict => ApiError::new(
                    409,
                    ErrorClass::Conflict.code(),
                    "a user with this email already exists",
                ),
                _ => ApiError::from_port(e),
            })?;
        self.identity
            .create_org(&Org {
                id: org.clone(),
                name: org_name.to_string(),
                created_at: now,
            })
            .await
            .map_err(ApiError::from_port)?;
        self.identity
            .add_member(&Membership {
                org: org.clone(),
                user: user.clone(),
                role: Role::Owner,
            })
            .await
            .map_err(ApiError::from_port)?;
        let (token, expires_at) = self.start_login(&org, &user).await?;
        let owner = Principal::from_verified_credential(
            org.clone(),
            user.clone(),
            None,
            Role::Owner.scopes(),
        );
        self.audit_best_effort(&owner, AuditAction::Login, user.as_str())
            .await;
        Ok(SignedUp {
            user_id: user,
            org_id: org,
            token,
            expires_at,
        })
    }

    /// `POST /v1/auth/login`: email and password → a login token valid for [`LOGIN_TTL`]. Every
    /// refusal is the same 401, and an unknown email costs the same password check as a known one.
    pub async fn login(&self, body: LoginBody) -> Result<LoggedIn, ApiError> {
        let refused = || {
            ApiError::new(
                401,
                ErrorClass::Unauthorized.code(),
                "invalid email or password",
            )
        };
        let found = match self.identity.user_by_email(body.email.trim()).await {
            Ok(user) => Some(user),
            Err(e) if e.class() == ErrorClass::NotFound => None,
            Err(e) => return Err(ApiError::from_port(e)),
        };
        let phc = found.as_ref().and_then(|u| u.password_hash.clone());
        let password = body.password.clone();
        let verified = tokio::task::spawn_blocking(move || {
            switchboard_adapters::password::verify_password(
                &password,
                phc.as_deref().unwrap_or_else(|| dummy_password_hash()),
            )
        })
        .await
        .map_err(|e| ApiError::new(500, "internal", format!("password check failed: {e}")))?;
        let user = match found {
            Some(user) if verified && user.password_hash.is_some() => user,
            _ => {
                self.audit_anonymous(AuditAction::LoginFailed, body.email.trim())
                    .await;
                return Err(refused());
            }
        };
        let memberships = self
            .identity
            .memberships(&user.id)
            .await
            .map_err(ApiError::from_port)?;
        let membership = match body.org_id.as_deref() {
            Some(org) => memberships.iter().find(|m| m.org.as_str() == org),
            None => memberships.first(),
        }
        .ok_or_else(refused)?;
        let (token, expires_at) = self.start_login(&membership.org, &user.id).await?;
        let principal = Principal::from_verified_credential(
            membership.org.clone(),
            user.id.clone(),
            None,
            membership.role.scopes(),
        );
        self.audit_best_effort(&principal, AuditAction::Login, user.id.as_str())
            .await;
        Ok(LoggedIn {
            token,
            expires_at,
            org_id: membership.org.clone(),
            user_id: user.id,
        })
    }

    /// Mints a login token and stores its SHA-256 as a login session.
    async fn start_login(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<(SecretString, Timestamp), ApiError> {
        let token = mint::secret(LOGIN_TOKEN_PREFIX);
        let now = self.clock.now();
        let expires_at = now.add(LOGIN_TTL);
        let id = LoginId::parse(format!("login_{}", mint::uuid_v7()))
            .expect("a minted login id is valid");
        self.identity
            .create_login(&LoginSession {
                id,
                org: org.clone(),
                user: user.clone(),
                hash: mint::hash(&token),
                created_at: now,
                expires_at,
            })
            .await
            .map_err(ApiError::from_port)?;
        Ok((token, expires_at))
    }

    /// `DELETE /v1/credentials/{provider}`: 404 when the tenant holds no key for `provider`.
    pub async fn delete_credential(
        &self,
        principal: &Principal,
        provider: &str,
    ) -> Result<(), ApiError> {
        require(principal, Scope::Credentials)?;
        self.vault
            .delete(&principal.tenant(), provider)
            .await
            .map_err(ApiError::from_port)?;
        self.audit_best_effort(principal, AuditAction::CredentialDeleted, provider)
            .await;
        Ok(())
    }

    /// `POST /v1/environment/detect`: autodiscovery over a file list, or over the tracked files of
    /// a repository the repo host lists for the caller's org. Without a repo host a `repo` is 422
    /// `repo_host_unavailable`; the host's errors keep their class (a repository the org may not
    /// read is 404 like a missing one, git unreachable is 503).
    pub async fn detect_environment(
        &self,
        principal: &Principal,
        body: DetectBody,
    ) -> Result<Detected, ApiError> {
        require(principal, Scope::Sessions)?;
        match (body.files, body.repo) {
            (Some(_), Some(_)) => Err(ApiError::new(
                400,
                "invalid",
                "send either files or repo, not both",
            )),
            (None, None) => Err(ApiError::new(
                400,
                "invalid",
                "send {\"files\": [...]} or {\"repo\": {\"url\"}}",
            )),
            (None, Some(repo)) => {
                let Some(repos) = &self.repo_host else {
                    return Err(ApiError::new(
                        422,
                        "repo_host_unavailable",
                        "detection from a repository needs a repo host, and none is configured on this server; send the file list as {\"files\": [...]}",
                    ));
                };
                let files = repos
                    .list_files(&principal.tenant(), &repo)
                    .await
                    .map_err(ApiError::from_port)?;
                Ok(Self::detect_files(&files))
            }
            (Some(files), None) => {
                if files.len() > MAX_DETECT_FILES {
                    return Err(ApiError::new(
                        400,
                        "invalid",
                        format!("at most {MAX_DETECT_FILES} files"),
                    ));
                }
                Ok(Self::detect_files(&files))
            }
        }
    }

    fn detect_files(files: &[String]) -> Detected {
        let file_count = switchboard_core::environment::counted_paths(files).len() as u64;
        Detected {
            environment: switchboard_core::environment::detect(files),
            file_count,
        }
    }

    /// `Authorization: Bearer <token>` → the principal. Anything else is 401.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    401,
                    ErrorClass::Unauthorized.code(),
                    "a bearer credential is required",
                )
            })?;
        self.authenticator
            .authenticate(&Credential(SecretString::new(token)))
            .await
            .map_err(ApiError::from_port)
    }

    /// `PUT /v1/credentials/{provider}`.
    pub async fn put_credential(
        &self,
        principal: &Principal,
        provider: &str,
        api_key: &str,
    ) -> Result<CredentialMeta, ApiError> {
        require(principal, Scope::Credentials)?;
        if api_key.trim().is_empty() {
            return Err(ApiError::new(400, "invalid", "api_key is required"));
        }
        let meta = self
            .vault
            .put(&principal.tenant(), provider, &SecretString::new(api_key))
            .await
            .map_err(ApiError::from_port)?;
        self.audit_best_effort(principal, AuditAction::CredentialWritten, provider)
            .await;
        Ok(meta)
    }

    /// `GET /v1/credentials`.
    pub async fn credentials(
        &self,
        principal: &Principal,
    ) -> Result<Vec<CredentialMeta>, ApiError> {
        require(principal, Scope::Credentials)?;
        self.vault
            .list(&principal.tenant())
            .await
            .map_err(ApiError::from_port)
    }

    /// `POST /v1/sessions`. The model is required and must name its provider (422 otherwise).
    pub async fn create_session(
        &self,
        principal: &Principal,
        body: CreateSessionBody,
    ) -> Result<SessionInfo, ApiError> {
        require(principal, Scope::Sessions)?;
        let model = ModelRef::parse(body.model.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::new(422, "invalid_model", e.to_string()))?;
        let agent = body.agent.unwrap_or_else(|| DEFAULT_AGENT.to_string());
        let permissions = body
            .permissions
            .as_ref()
            .map(|p| p.to_policy(&self.permission_policy))
            .transpose()?;
        let session_id = SessionId::parse(format!("ses_{}", mint::uuid_v7()))
            .expect("a minted session id is valid");
        self.host
            .create(
                principal,
                CreateSession {
                    session_id,
                    model,
                    agent,
                    repo: body.repo,
                    permissions,
                },
            )
            .await
            .map_err(ApiError::from_port)
    }

    /// `GET /v1/sessions/{id}`.
    pub async fn session(&self, principal: &Principal, id: &str) -> Result<SessionInfo, ApiError> {
        require(principal, Scope::Sessions)?;
        self.host
            .info(&principal.tenant(), &session_id(id)?)
            .await
            .map_err(ApiError::from_port)
    }

    /// `GET /v1/sessions`.
    pub async fn sessions(&self, principal: &Principal) -> Result<Vec<SessionInfo>, ApiError> {
        require(principal, Scope::Sessions)?;
        self.host
            .list(&principal.tenant())
            .await
            .map_err(ApiError::from_port)
    }

    /// `POST /v1/sessions/{id}/prompts` → 202 `{run_id, position}`.
    pub async fn prompt(
        &self,
        principal: &Principal,
        id: &str,
        body: PromptBody,
    ) -> Result<Queued, ApiError> {
        require(principal, Scope::Sessions)?;
        let run_id =
            RunId::parse(format!("run_{}", mint::uuid_v7())).expect("a minted run id is valid");
        self.host
            .prompt(
                principal,
                &session_id(id)?,
                PromptRequest {
                    run_id,
                    text: body.text,
                    client_msg_id: body.client_msg_id,
                },
            )
            .await
            .map_err(ApiError::from_port)
    }

    /// `POST /v1/sessions/{id}/cancel`.
    pub async fn cancel(
        &self,
        principal: &Principal,
        id: &str,
        run_id: Option<&str>,
    ) -> Result<(), ApiError> {
        require(principal, Scope::Sessions)?;
        let run = run_id
            .map(|r| RunId::parse(r).map_err(|_| ApiError::class_not_found("run")))
            .transpose()?;
        self.host
            .cancel(&principal.tenant(), &session_id(id)?, run)
            .await
            .map_err(ApiError::from_port)
    }

    /// `DELETE /v1/sessions/{id}`.
    pub async fn close(&self, principal: &Principal, id: &str) -> Result<(), ApiError> {
        require(principal, Scope::Sessions)?;
        self.host
            .close(&principal.tenant(), &session_id(id)?)
            .await
            .map_err(ApiError::from_port)
    }

    /// `GET /v1/sessions/{id}/events?after=&limit=`.
    pub async fn events(
        &self,
        principal: &Principal,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, ApiError> {
        require(principal, Scope::Sessions)?;
        self.host
            .events(
                &principal.tenant(),
                &session_id(id)?,
                after,
                limit.clamp(1, 1000),
            )
            .await
            .map_err(ApiError::from_port)
    }

    /// `GET /v1/sessions/{id}/ws?after=`: a client link (the WebSocket endpoint pumps it).
    pub async fn attach(
        &self,
        principal: &Principal,
        id: &str,
        after: Option<u64>,
    ) -> Result<ClientLink, ApiError> {
        require(principal, Scope::Sessions)?;
        self.host
            .attach_client(principal, &session_id(id)?, after)
            .await
            .map_err(ApiError::from_port)
    }

    /// `GET /v1/runs/{run_id}`: the run record with its events, from the ledger.
    pub async fn run(&self, principal: &Principal, run_id: &str) -> Result<RunRecord, ApiError> {
        require(principal, Scope::Sessions)?;
        let run = RunId::parse(run_id).map_err(|_| ApiError::class_not_found("run"))?;
        self.ledger
            .get(&principal.tenant(), &run)
            .await
            .map_err(ApiError::from_port)
    }

    /// `GET /v1/runs?session_id=&limit=`: summaries, newest first. A `session_id` the tenant does
    /// not have (unknown, or another org's) is 404 like on every other session route, not an
    /// empty list.
    pub async fn runs(
        &self,
        principal: &Principal,
        session: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, ApiError> {
        require(principal, Scope::Sessions)?;
        let session_id = session.map(session_id).transpose()?;
        if let Some(id) = &session_id {
            self.host
                .info(&principal.tenant(), id)
                .await
                .map_err(ApiError::from_port)?;
        }
        let query = RunQuery {
            session_id,
            limit: limit.clamp(1, 1000),
            ..RunQuery::default()
        };
        self.ledger
            .list(&principal.tenant(), &query)
            .await
            .map_err(ApiError::from_port)
    }

    /// An audit entry with no principal (a refused login).
    async fn audit_anonymous(&self, action: AuditAction, target: &str) {
        let entry = AuditEntry {
            at: self.clock.now(),
            org: None,
            actor: None,
            action,
            target: target.to_string(),
            outcome: AuditOutcome::Denied,
        };
        if let Err(e) = self.audit.append(&entry).await {
            tracing::warn!(error = %e, "audit entry not written");
        }
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
