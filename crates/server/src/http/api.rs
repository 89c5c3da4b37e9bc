//! The REST API of PROTOCOL.md: auth, API keys, BYOK credentials, sessions, runs and environment
//! detection. Each handler only translates HTTP to an [`App`](crate::app::App) operation and back;
//! the routes are registered through utoipa-axum so that `/openapi.json` is generated from them.
//!
//! Every error, including a body axum could not read, answers `{"error": {"code", "message"}}`:
//! the extractors here ([`ApiJson`], [`OptionalJson`], [`ApiQuery`], [`ApiPath`]) turn axum's
//! rejections into [`ApiError`]s, and [`super::ops::json_errors`] catches whatever else would
//! answer in plain text (the body limit's 413, axum's 405).

use super::auth::Authed;
use super::AppState;
use crate::app::{self, ApiError};
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use switchboard_core::protocol::RepoSpec;
use switchboard_core::run::RunRecord;
use switchboard_core::session::{PermissionPolicy, SessionInfo};
use switchboard_core::tenancy::Scope;
use switchboard_core::ClientMsgId;
use switchboard_ports::identity::{ApiKeyMeta, CredentialMeta};
use switchboard_ports::SecretString;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The largest request body any route accepts (PROTOCOL.md: larger is 413).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Events per page of `GET /v1/sessions/{id}/events` when `limit` is absent (at most 1000).
pub const DEFAULT_EVENTS_LIMIT: usize = 100;

/// Runs per page of `GET /v1/runs` when `limit` is absent (at most 1000).
pub const DEFAULT_RUNS_LIMIT: usize = 50;

// ---------------------------------------------------------------------------------------------
// Extractors whose rejections are API errors.

/// A JSON body (`content-type: application/json`). A wrong content type, malformed JSON or a
/// body of the wrong shape is 400; a body over [`MAX_BODY_BYTES`] is 413.
pub struct ApiJson<T>(pub T);

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            400,
            "invalid",
            "the body must be JSON, sent with content-type: application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::new(400, "invalid", format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => ApiError::new(
            400,
            "invalid",
            format!(
                "the JSON does not have the expected shape: {}",
                e.body_text()
            ),
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            too_large()
        }
        other => ApiError::new(
            400,
            "invalid",
            format!("the body could not be read: {}", other.body_text()),
        ),
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        413,
        "too_large",
        format!("the body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// An optional JSON body: an empty body is `None`; anything else must be JSON like [`ApiJson`].
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::new(
                    400,
                    "invalid",
                    format!("the body could not be read: {}", e.body_text()),
                )
            }
        })?;
        if bytes.is_empty() {
            return Ok(OptionalJson(None));
        }
        if json_type != Some(true) {
            return Err(json_rejection(JsonRejection::MissingJsonContentType(
                Default::default(),
            )));
        }
        Json::<T>::from_bytes(&bytes)
            .map(|Json(v)| OptionalJson(Some(v)))
            .map_err(json_rejection)
    }
}

/// A query string; one that does not parse is 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                ApiError::new(
                    400,
                    "invalid",
                    format!("bad query string: {}", e.body_text()),
                )
            })
    }
}

/// Path parameters; one that cannot be decoded names nothing that exists: 404.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|_| ApiError::class_not_found("resource"))
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types (request and response bodies), documented in the OpenAPI document.

/// `{"error": {"code", "message"}}`, the body of every error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

/// A stable snake_case code and a human sentence.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `POST /v1/auth/signup`.
#[derive(Deserialize, ToSchema)]
pub struct SignupRequest {
    pub email: String,
    /// 8-1024 characters; stored only as an argon2id hash.
    pub password: String,
    pub org_name: String,
}

/// A new user owning a new org, already logged in.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignupResponse {
    pub user_id: String,
    pub org_id: String,
    /// A login session token, valid for 30 days.
    pub token: String,
    pub expires_at: String,
}

/// `POST /v1/auth/login`.
#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// Which of the user's orgs to log into (default: the first).
    #[serde(default)]
    pub org_id: Option<String>,
}

/// A login session token, shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub expires_at: String,
    pub org_id: String,
    pub user_id: String,
}

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiScope {
    Sessions,
    Credentials,
    ApiKeys,
    Admin,
}

impl From<ApiScope> for Scope {
    fn from(s: ApiScope) -> Scope {
        match s {
            ApiScope::Sessions => Scope::Sessions,
            ApiScope::Credentials => Scope::Credentials,
            ApiScope::ApiKeys => Scope::ApiKeys,
            ApiScope::Admin => Scope::Admin,
        }
    }
}

impl From<Scope> for ApiScope {
    fn from(s: Scope) -> ApiScope {
        match s {
            Scope::Sessions => ApiScope::Sessions,
            Scope::Credentials => ApiScope::Credentials,
            Scope::ApiKeys => ApiScope::ApiKeys,
            Scope::Admin => ApiScope::Admin,
        }
    }
}

/// `POST /v1/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateApiKeyRequest {
    pub name: String,
    /// The key's scopes (default: the caller's). A scope the caller lacks is 403.
    #[serde(default)]
    pub scopes: Option<Vec<ApiScope>>,
}

/// A new API key: `key` is shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    pub id: String,
    pub name: String,
    pub key: String,
    pub prefix: String,
    pub created_at: String,
    pub scopes: Vec<ApiScope>,
}

/// An API key as listed: never the key itself.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl From<ApiKeyMeta> for ApiKeyView {
    fn from(k: ApiKeyMeta) -> Self {
        ApiKeyView {
            id: k.id.to_string(),
            name: k.name,
            prefix: k.prefix,
            created_at: k.created_at.to_rfc3339(),
            revoked_at: k.revoked_at.map(|t| t.to_rfc3339()),
        }
    }
}

/// `GET /v1/api-keys`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyView>,
}

/// `PUT /v1/credentials/{provider}`.
#[derive(Deserialize, ToSchema)]
pub struct PutCredentialRequest {
    /// The provider's API key; sealed per tenant and never returned.
    pub api_key: String,
}

/// A stored provider key as listed: its last four characters only.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CredentialView {
    pub provider: String,
    pub last4: String,
    pub updated_at: String,
}

impl From<CredentialMeta> for CredentialView {
    fn from(c: CredentialMeta) -> Self {
        CredentialView {
            provider: c.provider,
            last4: c.last4,
            updated_at: c.updated_at.to_rfc3339(),
        }
    }
}

/// `GET /v1/credentials`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CredentialList {
    pub credentials: Vec<CredentialView>,
}

/// A git repository to check out.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RepoRequest {
    pub url: String,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

impl From<RepoRequest> for RepoSpec {
    fn from(r: RepoRequest) -> Self {
        RepoSpec {
            url: r.url,
            git_ref: r.git_ref,
        }
    }
}

/// `POST /v1/sessions`. `model` is required (`provider/model`); there is no default model.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateSessionRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// The agent the sandbox runs (default `opencode`).
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub repo: Option<RepoRequest>,
    /// The session's permission policy (default: the server's, `auto` for every tool).
    #[serde(default)]
    pub permissions: Option<PermissionsView>,
}

/// A session's permission policy: how an agent's permission request for a tool is decided.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PermissionsView {
    /// `auto` (allowed at once), `ask` (the clients are asked) or `deny` (denied at once), for
    /// tools `tools` does not name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Modes for named tools (`{"bash": "ask"}`).
    #[serde(default)]
    pub tools: std::collections::BTreeMap<String, String>,
    /// Applied when an `ask` gets no answer by its deadline: `allow_once`, `allow_always` or
    /// `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask_default: Option<String>,
}

impl From<PermissionsView> for app::PermissionsBody {
    fn from(p: PermissionsView) -> Self {
        app::PermissionsBody {
            default: p.default,
            tools: p.tools,
            ask_default: p.ask_default,
        }
    }
}

impl From<&PermissionPolicy> for PermissionsView {
    fn from(p: &PermissionPolicy) -> Self {
        PermissionsView {
            default: Some(wire(&p.default)),
            tools: p
                .per_tool
                .iter()
                .map(|(tool, mode)| (tool.clone(), wire(mode)))
                .collect(),
            ask_default: Some(wire(&p.ask_default)),
        }
    }
}

/// The sandbox of a session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SandboxView {
    /// `none`, `provisioning`, `connected`, `lost` or `terminated`.
    pub status: String,
}

/// A session (`POST /v1/sessions` answers the same shape).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    /// `provisioning`, `ready`, `running`, `closed` or `failed`.
    pub status: String,
    pub model: String,
    pub sandbox: SandboxView,
    pub queue_length: u32,
    pub last_seq: u64,
    pub created_at: String,
    /// The permission policy in force (the session's own, else the server's).
    pub permissions: PermissionsView,
}

/// The wire name of a serde enum value (`SessionStatus::Provisioning` → `provisioning`).
fn wire<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

impl From<SessionInfo> for SessionView {
    fn from(s: SessionInfo) -> Self {
        SessionView {
            id: s.id.to_string(),
            status: wire(&s.status),
            model: s.model.to_string(),
            sandbox: SandboxView {
                status: wire(&s.sandbox.status),
            },
            queue_length: s.queue_length,
            last_seq: s.last_seq,
            created_at: s.created_at.to_rfc3339(),
            permissions: PermissionsView::from(&s.permissions),
        }
    }
}

/// `GET /v1/sessions`: this tenant's sessions only.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// `POST /v1/sessions/{id}/prompts`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PromptRequest {
    pub text: String,
    /// An idempotency key: the same value again answers the original run, queued once.
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

/// A queued prompt: position 0 runs now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromptAccepted {
    pub run_id: String,
    pub position: u32,
}

/// `POST /v1/sessions/{id}/cancel` (the body may be empty).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CancelRequest {
    /// The run to cancel (default: the running run).
    #[serde(default)]
    pub run_id: Option<String>,
}

/// `GET /v1/sessions/{id}/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a greater seq (default 0: from the start).
    pub after: Option<u64>,
    /// At most this many events (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// A page of a session's event log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPageView {
    /// Event envelopes `{"seq", "type", "run_id"?, "at", "critical", "data"}` in seq order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// The session's last seq (the page may end before it).
    pub last_seq: u64,
}

/// `GET /v1/runs` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only this session's runs (404 when the session is not this tenant's).
    pub session_id: Option<String>,
    /// At most this many runs (default 50, at most 1000).
    pub limit: Option<usize>,
}

/// Token counts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A finished run, attributed, from the run ledger.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub run_id: String,
    pub session_id: String,
    pub org_id: String,
    pub user_id: String,
    pub api_key_id: Option<String>,
    pub model: String,
    pub provider: String,
    /// `completed`, `failed`, `cancelled` or `timed_out`.
    pub status: String,
    pub queued_at: String,
    pub started_at: Option<String>,
    pub ended_at: String,
    pub usage: UsageView,
    pub cost_micros: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    pub event_count: u64,
    /// The run's events in seq order (`GET /v1/runs/{run_id}` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub events: Option<Vec<serde_json::Value>>,
}

impl RunView {
    fn from_record(r: RunRecord, with_events: bool) -> Self {
        let events = with_events.then(|| {
            r.events
                .iter()
                .map(|e| serde_json::to_value(e).unwrap_or(serde_json::Value::Null))
                .collect()
        });
        RunView {
            run_id: r.run_id.to_string(),
            session_id: r.session_id.to_string(),
            org_id: r.org_id.to_string(),
            user_id: r.user_id.to_string(),
            api_key_id: r.api_key_id.map(|k| k.to_string()),
            model: r.model.to_string(),
            provider: r.provider,
            status: wire(&r.status),
            queued_at: r.queued_at.to_rfc3339(),
            started_at: r.started_at.map(|t| t.to_rfc3339()),
            ended_at: r.ended_at.to_rfc3339(),
            usage: UsageView {
                input_tokens: r.usage.input_tokens,
                output_tokens: r.usage.output_tokens,
            },
            cost_micros: r.cost_micros,
            error: r.error.map(|e| ErrorDetail {
                code: e.code,
                message: e.message,
            }),
            event_count: r.event_count,
            events,
        }
    }
}

/// `GET /v1/runs`: newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<RunView>,
}

/// `POST /v1/environment/detect`: a file list (relative paths), or a repository the server's repo
/// host lists (422 when none is configured).
#[derive(Debug, Deserialize, ToSchema)]
pub struct DetectRequest {
    #[serde(default)]
    pub files: Option<Vec<String>>,
    #[serde(default)]
    pub repo: Option<RepoRequest>,
}

/// How to set the workspace up. `package_manager` is null when no ecosystem is recognised.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentView {
    pub package_manager: Option<String>,
    pub file_count: u64,
    pub install: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Handlers.

type Answer<T> = Result<T, ApiError>;

/// Create a user, an org it owns, and a login session.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupRequest,
    responses((status = 201, body = SignupResponse), (status = 400, body = ErrorResponse), (status = 409, description = "email taken", body = ErrorResponse)))]
async fn signup(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<SignupRequest>,
) -> Answer<(StatusCode, Json<SignupResponse>)> {
    let done = st
        .app
        .signup(app::SignupBody {
            email: body.email,
            password: SecretString::new(body.password),
            org_name: body.org_name,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SignupResponse {
            user_id: done.user_id.to_string(),
            org_id: done.org_id.to_string(),
            token: done.token.expose().to_string(),
            expires_at: done.expires_at.to_rfc3339(),
        }),
    ))
}

/// Log in with email and password: a login session token valid for 30 days.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
async fn login(
    State(st): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Answer<Json<LoginResponse>> {
    let done = st
        .app
        .login(app::LoginBody {
            email: body.email,
            password: SecretString::new(body.password),
            org_id: body.org_id,
        })
        .await?;
    Ok(Json(LoginResponse {
        token: done.token.expose().to_string(),
        expires_at: done.expires_at.to_rfc3339(),
        org_id: done.org_id.to_string(),
        user_id: done.user_id.to_string(),
    }))
}

/// Mint an API key (shown once).
#[utoipa::path(post, path = "/v1/api-keys", tag = "api keys", request_body = CreateApiKeyRequest, security(("bearer" = [])),
    responses((status = 201, body = ApiKeyCreated), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
async fn create_api_key(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiJson(body): ApiJson<CreateApiKeyRequest>,
) -> Answer<(StatusCode, Json<ApiKeyCreated>)> {
    let scopes = body
        .scopes
        .map(|s| s.into_iter().map(Scope::from).collect());
    let key = st.app.create_api_key(&p, &body.name, scopes).await?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyCreated {
            id: key.id.to_string(),
            name: key.name,
            key: key.key.expose().to_string(),
            prefix: key.prefix,
            created_at: key.created_at.to_rfc3339(),
            scopes: key.scopes.into_iter().map(ApiScope::from).collect(),
        }),
    ))
}

/// List this org's API keys (never the keys themselves).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api keys", security(("bearer" = [])),
    responses((status = 200, body = ApiKeyList), (status = 401, body = ErrorResponse)))]
async fn list_api_keys(State(st): State<AppState>, Authed(p): Authed) -> Answer<Json<ApiKeyList>> {
    let keys = st.app.api_keys(&p).await?;
    Ok(Json(ApiKeyList {
        api_keys: keys.into_iter().map(ApiKeyView::from).collect(),
    }))
}

/// Revoke an API key: it stops working at once.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "API key id")),
    responses((status = 204, description = "revoked"), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn revoke_api_key(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiPath(id): ApiPath<String>,
) -> Answer<StatusCode> {
    st.app.revoke_api_key(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Store (or replace) this org's key for a model provider, sealed.
#[utoipa::path(put, path = "/v1/credentials/{provider}", tag = "credentials", request_body = PutCredentialRequest, security(("bearer" = [])),
    params(("provider" = String, Path, description = "provider name, e.g. openai")),
    responses((status = 204, description = "stored"), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
async fn put_credential(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiPath(provider): ApiPath<String>,
    ApiJson(body): ApiJson<PutCredentialRequest>,
) -> Answer<StatusCode> {
    st.app.put_credential(&p, &provider, &body.api_key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List this org's provider keys: provider, last four characters, time. Never the key.
#[utoipa::path(get, path = "/v1/credentials", tag = "credentials", security(("bearer" = [])),
    responses((status = 200, body = CredentialList), (status = 401, body = ErrorResponse)))]
async fn list_credentials(
    State(st): State<AppState>,
    Authed(p): Authed,
) -> Answer<Json<CredentialList>> {
    let list = st.app.credentials(&p).await?;
    Ok(Json(CredentialList {
        credentials: list.into_iter().map(CredentialView::from).collect(),
    }))
}

/// Delete this org's key for a provider.
#[utoipa::path(delete, path = "/v1/credentials/{provider}", tag = "credentials", security(("bearer" = [])),
    params(("provider" = String, Path, description = "provider name")),
    responses((status = 204, description = "deleted"), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn delete_credential(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiPath(provider): ApiPath<String>,
) -> Answer<StatusCode> {
    st.app.delete_credential(&p, &provider).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a session; its sandbox starts provisioning at once.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSessionRequest, security(("bearer" = [])),
    responses((status = 201, body = SessionView), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 422, description = "model missing or without a provider prefix (`invalid_model`), or a permission policy with an unknown mode (`invalid_permissions`)", body = ErrorResponse)))]
async fn create_session(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiJson(body): ApiJson<CreateSessionRequest>,
) -> Answer<(StatusCode, Json<SessionView>)> {
    let info = st
        .app
        .create_session(
            &p,
            app::CreateSessionBody {
                model: body.model,
                agent: body.agent,
                repo: body.repo.map(RepoSpec::from),
                permissions: body.permissions.map(app::PermissionsBody::from),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(SessionView::from(info))))
}

/// List this org's sessions.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", security(("bearer" = [])),
    responses((status = 200, body = SessionList), (status = 401, body = ErrorResponse)))]
async fn list_sessions(State(st): State<AppState>, Authed(p): Authed) -> Answer<Json<SessionList>> {
    let list = st.app.sessions(&p).await?;
    Ok(Json(SessionList {
        sessions: list.into_iter().map(SessionView::from).collect(),
    }))
}

/// One session.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, body = SessionView), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn get_session(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiPath(id): ApiPath<String>,
) -> Answer<Json<SessionView>> {
    Ok(Json(SessionView::from(st.app.session(&p, &id).await?)))
}

/// Close a session: runs are cancelled, the sandbox is terminated, the session ends `closed`.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "session id")),
    responses((status = 202, description = "closing"), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn close_session(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiPath(id): ApiPath<String>,
) -> Answer<StatusCode> {
    st.app.close(&p, &id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Queue a prompt. Durable before the 202; `client_msg_id` makes a re-send idempotent.
#[utoipa::path(post, path = "/v1/sessions/{id}/prompts", tag = "sessions", request_body = PromptRequest, security(("bearer" = [])),
    params(("id" = String, Path, description = "session id")),
    responses((status = 202, body = PromptAccepted), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, description = "the session is closed", body = ErrorResponse)))]
async fn prompt(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PromptRequest>,
) -> Answer<(StatusCode, Json<PromptAccepted>)> {
    let client_msg_id = body
        .client_msg_id
        .map(|c| ClientMsgId::parse(c).map_err(|e| ApiError::new(400, "invalid", e.to_string())))
        .transpose()?;
    let queued = st
        .app
        .prompt(
            &p,
            &id,
            app::PromptBody {
                text: body.text,
                client_msg_id,
            },
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PromptAccepted {
            run_id: queued.run_id.to_string(),
            position: queued.position,
        }),
    ))
}

/// Cancel a run (default: the running one).
#[utoipa::path(post, path = "/v1/sessions/{id}/cancel", tag = "sessions", request_body(content = Option<CancelRequest>, description = "optional"), security(("bearer" = [])),
    params(("id" = String, Path, description = "session id")),
    responses((status = 202, description = "cancelling"), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn cancel(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<CancelRequest>,
) -> Answer<StatusCode> {
    let body = body.unwrap_or_default();
    st.app.cancel(&p, &id, body.run_id.as_deref()).await?;
    Ok(StatusCode::ACCEPTED)
}

/// A page of the session's event log, from the start or after a seq.
#[utoipa::path(get, path = "/v1/sessions/{id}/events", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "session id"), EventsQuery),
    responses((status = 200, body = EventPageView), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn events(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Answer<Json<EventPageView>> {
    let page = st
        .app
        .events(
            &p,
            &id,
            q.after.unwrap_or(0),
            q.limit.unwrap_or(DEFAULT_EVENTS_LIMIT),
        )
        .await?;
    let events = page
        .events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap_or(serde_json::Value::Null))
        .collect();
    Ok(Json(EventPageView {
        events,
        last_seq: page.last_seq,
    }))
}

/// Finished runs from the run ledger, newest first (summaries, without events).
#[utoipa::path(get, path = "/v1/runs", tag = "runs", security(("bearer" = [])), params(RunsQuery),
    responses((status = 200, body = RunList), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn list_runs(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> Answer<Json<RunList>> {
    let runs = st
        .app
        .runs(
            &p,
            q.session_id.as_deref(),
            q.limit.unwrap_or(DEFAULT_RUNS_LIMIT),
        )
        .await?;
    Ok(Json(RunList {
        runs: runs
            .into_iter()
            .map(|r| RunView::from_record(r, false))
            .collect(),
    }))
}

/// One finished run with its events in seq order.
#[utoipa::path(get, path = "/v1/runs/{run_id}", tag = "runs", security(("bearer" = [])),
    params(("run_id" = String, Path, description = "run id")),
    responses((status = 200, body = RunView), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn get_run(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiPath(run_id): ApiPath<String>,
) -> Answer<Json<RunView>> {
    Ok(Json(RunView::from_record(
        st.app.run(&p, &run_id).await?,
        true,
    )))
}

/// Environment autodiscovery from a file list, or from the tracked files of a repository.
#[utoipa::path(post, path = "/v1/environment/detect", tag = "environment", request_body = DetectRequest, security(("bearer" = [])),
    responses((status = 200, body = EnvironmentView), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 404, description = "no such repository or ref, or one not granted to this org", body = ErrorResponse),
        (status = 422, description = "a repo was given but no repo host is configured", body = ErrorResponse),
        (status = 503, description = "the repo host cannot reach the repository (or git is missing)", body = ErrorResponse)))]
async fn detect_environment(
    State(st): State<AppState>,
    Authed(p): Authed,
    ApiJson(body): ApiJson<DetectRequest>,
) -> Answer<Json<EnvironmentView>> {
    let found = st
        .app
        .detect_environment(
            &p,
            app::DetectBody {
                files: body.files,
                repo: body.repo.map(RepoSpec::from),
            },
        )
        .await?;
    Ok(Json(match found.environment {
        Some(env) => EnvironmentView {
            package_manager: Some(env.package_manager),
            file_count: env.file_count,
            install: env.install,
            test: (!env.test.is_empty()).then_some(env.test),
        },
        None => EnvironmentView {
            package_manager: None,
            file_count: found.file_count,
            install: Vec::new(),
            test: None,
        },
    }))
}

// ---------------------------------------------------------------------------------------------
// Routes.

/// The API's routes with their OpenAPI operations, before layers.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
        .routes(routes!(list_credentials))
        .routes(routes!(put_credential, delete_credential))
        .routes(routes!(create_session, list_sessions))
        .routes(routes!(get_session, close_session))
        .routes(routes!(prompt))
        .routes(routes!(cancel))
        .routes(routes!(events))
        .routes(routes!(list_runs))
        .routes(routes!(get_run))
        .routes(routes!(detect_environment))
}

/// The routes of this module: every REST route of PROTOCOL.md, with the body limit, JSON errors
/// and request metrics.
pub fn routes() -> axum::Router<AppState> {
    super::ops::with_edge_layers(openapi_router().split_for_parts().0.layer(
        tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY_BYTES),
    ))
}
