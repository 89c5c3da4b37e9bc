//! Session plane: the actor's private durable state (`SessionStore`), where actors live
//! (`SessionHost`), and time (`Clock`).

use async_trait::async_trait;
use futures::channel::mpsc;
use serde::{Deserialize, Serialize};
use switchboard_core::protocol::{
    ClientMessage, EventEnvelope, RepoSpec, SandboxMessage, ServerFrame, ServerToSandbox,
};
use switchboard_core::session::{Commit, PermissionPolicy, Persisted, SessionInfo};
use switchboard_core::tenancy::{Principal, SessionKey, TenantContext};
use switchboard_core::{ClientMsgId, ConnId, ModelRef, OrgId, RunId, SessionId, Timestamp};

crate::port_error!(
    /// Errors of [`SessionStore`].
    SessionStoreError,
    "session store"
);
crate::port_error!(
    /// Errors of [`SessionHost`].
    SessionHostError,
    "session host"
);
crate::port_error!(
    /// Errors of [`Clock`] (reserved: reading the clock cannot fail; timers report shutdown).
    ClockError,
    "clock"
);

/// One session actor's durable state: the event log, the machine snapshot and the ledger outbox.
///
/// # Contract
/// - `commit_then_load`: after a commit, `load` returns its snapshot and outbox; an unknown key loads
///   as `None`.
/// - `events_in_seq_order`: `events(after, limit)` returns events with seq > after, ascending, at
///   most `limit`.
/// - `seq_gap_refused`: a commit whose first event seq is not last seq + 1 is `Conflict` and writes
///   nothing (not even its snapshot).
/// - `commit_is_atomic`: events, snapshot and outbox changes of one commit land together.
/// - `outbox_put_and_remove`: outbox entries survive until removed; removing an absent one is fine.
/// - `active_run_events_loaded`: `load` returns the events of the run in flight named by the
///   snapshot.
/// - `keys_are_isolated`: two sessions (and two orgs with the same session id) never see each
///   other's events.
/// - `list_is_tenant_scoped`: `list` returns the tenant's session ids only.
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn commit(&self, key: &SessionKey, commit: &Commit) -> Result<(), SessionStoreError>;
    async fn load(&self, key: &SessionKey) -> Result<Option<Persisted>, SessionStoreError>;
    async fn events(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, SessionStoreError>;
    async fn list(&self, org: &OrgId) -> Result<Vec<SessionId>, SessionStoreError>;
}

/// Time, so that every timeout can be tested with virtual time.
///
/// # Contract
/// - `now_is_monotonic`: successive `now()` never go backwards.
/// - `sleep_until_past_returns`: sleeping until a time already past returns at once.
/// - `sleep_until_wakes_after_deadline`: a sleeper wakes only once `now() >= deadline`.
#[async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    async fn sleep_until(&self, deadline: Timestamp);
}

/// `POST /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSession {
    /// Minted by the caller (UUIDv7 recommended).
    pub session_id: SessionId,
    pub model: ModelRef,
    pub agent: String,
    pub repo: Option<RepoSpec>,
    /// The session's permission policy, persisted with it; `None` follows the server's
    /// (`SessionConfig::permission_policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<PermissionPolicy>,
}

/// A prompt sent over HTTP (`POST /v1/sessions/{id}/prompts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptRequest {
    /// Minted by the caller; the answer names the original run when `client_msg_id` repeats.
    pub run_id: RunId,
    pub text: String,
    pub client_msg_id: Option<ClientMsgId>,
}

/// The answer to a prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    pub run_id: RunId,
    pub position: u32,
}

/// A page of a session's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<EventEnvelope>,
    pub last_seq: u64,
}

/// The sending half a client connection holds; frames from the session arrive on
/// [`ClientLink::frames`].
#[async_trait]
pub trait ClientHandle: Send + Sync {
    fn conn(&self) -> ConnId;
    /// A frame from the client. A prompt is queued; bad input is answered with an `error` frame.
    async fn send(&self, message: ClientMessage) -> Result<(), SessionHostError>;
    /// The client went away.
    async fn detach(&self);
}

/// A client attached to a session.
pub struct ClientLink {
    pub handle: Box<dyn ClientHandle>,
    /// Frames for the client: hello, replay, live events. Ends when the host drops the client
    /// (session closed, or the client fell too far behind: it may resume with `after`).
    pub frames: mpsc::Receiver<ServerFrame>,
}

/// The sending half a sandbox connection holds.
#[async_trait]
pub trait SandboxHandle: Send + Sync {
    fn conn(&self) -> ConnId;
    async fn send(&self, message: SandboxMessage) -> Result<(), SessionHostError>;
    async fn detach(&self);
}

/// A sandbox dialled back into its session.
pub struct SandboxLink {
    pub handle: Box<dyn SandboxHandle>,
    pub frames: mpsc::Receiver<ServerToSandbox>,
}

/// Where session actors live: key → live actor, one writer per key, hibernation and timers.
///
/// # Contract
/// - `create_then_info`: a created session reports `provisioning` and its model; an existing id is
///   `Conflict`.
/// - `other_tenant_not_found`: every call naming another org's session is `NotFound`.
/// - `prompt_queues_fifo`: prompts answer positions 0, 1, 2… and run in order.
/// - `duplicate_client_msg_id`: a re-sent `client_msg_id` returns the original run, queued once.
/// - `client_replay_after`: a client attaching with `after = N` receives hello, then every event
///   with seq > N in order, exactly once.
/// - `sandbox_bad_token_unauthorized`: a sandbox presenting a wrong token is `Unauthorized` and
///   changes nothing.
/// - `closed_session_refuses_prompts`: after `close`, prompts are `Conflict`.
/// - `list_is_tenant_scoped`: `list` returns only the tenant's sessions.
#[async_trait]
pub trait SessionHost: Send + Sync {
    async fn create(
        &self,
        principal: &Principal,
        request: CreateSession,
    ) -> Result<SessionInfo, SessionHostError>;
    async fn info(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
    ) -> Result<SessionInfo, SessionHostError>;
    async fn list(&self, tenant: &TenantContext) -> Result<Vec<SessionInfo>, SessionHostError>;
    async fn prompt(
        &self,
        principal: &Principal,
        session: &SessionId,
        request: PromptRequest,
    ) -> Result<Queued, SessionHostError>;
    async fn cancel(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
        run: Option<RunId>,
    ) -> Result<(), SessionHostError>;
    async fn close(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
    ) -> Result<(), SessionHostError>;
    async fn events(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, SessionHostError>;
    async fn attach_client(
        &self,
        principal: &Principal,
        session: &SessionId,
        after: Option<u64>,
    ) -> Result<ClientLink, SessionHostError>;
    /// The sandbox route names org and session; the token (in clear, as presented) is checked by the
    /// actor against its stored hash.
    async fn attach_sandbox(
        &self,
        key: &SessionKey,
        token: &crate::SecretString,
    ) -> Result<SandboxLink, SessionHostError>;
}
