//! Inputs, effects, configuration and the persisted snapshot of the session machine.

use crate::audit::AuditEntry;
use crate::crypto::TokenHash;
use crate::error::ErrorClass;
use crate::ids::{ClientMsgId, ConnId, OrgId, RequestId, RunId, SandboxId, SessionId};
use crate::model::ModelRef;
use crate::protocol::events::{EventEnvelope, PermissionDecision, SandboxStatus, SessionStatus};
use crate::protocol::sandbox::SandboxMessage;
use crate::protocol::spawn::RepoSpec;
use crate::protocol::{ServerFrame, ServerToSandbox};
use crate::run::{Price, RunRecord};
use crate::tenancy::{Attribution, SessionKey};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How a permission request is decided for a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermissionMode {
    /// Allow at once (`allow_once`), decided by policy.
    Auto,
    /// Ask the clients; apply `ask_default` when nobody answers by the deadline.
    Ask,
    /// Deny at once, decided by policy.
    Deny,
}

/// The session's permission policy. On the wire (`POST /v1/sessions` `"permissions"`, and
/// `GET /v1/sessions/{id}`) it reads `{"default", "tools": {"<tool>": mode}, "ask_default"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionPolicy {
    pub default: PermissionMode,
    /// Modes for named tools, overriding `default`.
    #[serde(default, rename = "tools", alias = "per_tool")]
    pub per_tool: BTreeMap<String, PermissionMode>,
    /// Applied when an `ask` gets no answer by its deadline.
    pub ask_default: PermissionDecision,
}

impl Default for PermissionPolicy {
    fn default() -> Self {
        PermissionPolicy {
            default: PermissionMode::Auto,
            per_tool: BTreeMap::new(),
            ask_default: PermissionDecision::Deny,
        }
    }
}

impl PermissionPolicy {
    /// The mode that applies to `tool`.
    pub fn mode_for(&self, tool: &str) -> PermissionMode {
        self.per_tool.get(tool).copied().unwrap_or(self.default)
    }
}

/// Timeouts and limits of one session. Every field has a production default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// A spawned sandbox must dial back within this.
    pub spawn_timeout: Duration,
    /// Spawn attempts before the waiting runs fail (first try + retries).
    pub spawn_attempts: u32,
    /// A dispatched or running run must show life (any sandbox message) within this.
    pub run_idle_timeout: Duration,
    /// After a cancel is sent to the agent, the run ends `cancelled` by this time at the latest.
    pub cancel_grace: Duration,
    /// A sandbox whose socket dropped may reconnect within this before it is declared lost.
    pub sandbox_reconnect_grace: Duration,
    /// A connected sandbox with nothing to do is shut down after this.
    pub sandbox_idle_timeout: Duration,
    /// A session with no clients, no runs, no sandbox and an empty outbox hibernates after this.
    pub hibernate_after: Duration,
    /// Un-ACKed critical events are re-sent to attached clients at this interval.
    pub critical_resend_interval: Duration,
    /// An `ask` permission request waits this long for a client.
    pub permission_timeout: Duration,
    /// First and largest delay between attempts to flush a run to the ledger.
    pub ledger_retry_initial: Duration,
    pub ledger_retry_max: Duration,
    /// Largest number of queued (not yet started) runs.
    pub max_queue: usize,
    /// Largest prompt, in bytes.
    pub max_prompt_bytes: usize,
    pub permission_policy: PermissionPolicy,
    /// Idle and maximum lifetime the provider is asked to enforce on its side.
    pub sandbox_idle_s: u64,
    pub sandbox_max_s: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            spawn_timeout: Duration::from_secs(120),
            spawn_attempts: 2,
            run_idle_timeout: Duration::from_secs(300),
            cancel_grace: Duration::from_secs(10),
            sandbox_reconnect_grace: Duration::from_secs(30),
            sandbox_idle_timeout: Duration::from_secs(600),
            hibernate_after: Duration::from_secs(60),
            critical_resend_interval: Duration::from_secs(10),
            permission_timeout: Duration::from_secs(60),
            ledger_retry_initial: Duration::from_secs(1),
            ledger_retry_max: Duration::from_secs(60),
            max_queue: 100,
            max_prompt_bytes: 256 * 1024,
            permission_policy: PermissionPolicy::default(),
            sandbox_idle_s: 900,
            sandbox_max_s: 4 * 3600,
        }
    }
}

/// What a new session is created with.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInit {
    pub key: SessionKey,
    pub model: ModelRef,
    /// The agent the sandbox runs (`opencode` by default, chosen by the caller).
    pub agent: String,
    pub repo: Option<RepoSpec>,
    pub created_by: Attribution,
    /// The session's own permission policy; `None` follows [`SessionConfig::permission_policy`].
    pub permissions: Option<PermissionPolicy>,
}

/// A port call failed; the class decides what the machine does next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortFailure {
    pub class: ErrorClass,
    pub message: String,
}

impl PortFailure {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        PortFailure {
            class,
            message: message.into(),
        }
    }
}

/// A command from an attached client (the prompt travels as [`Input::Prompt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    Cancel {
        run_id: Option<RunId>,
    },
    Ack {
        seq: u64,
    },
    Permission {
        request_id: RequestId,
        decision: PermissionDecision,
    },
    Ping,
}

/// Everything that can happen to a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Start the session: emits its first events and the first spawn.
    Start,
    /// A client connected; it wants every event with seq > `after` (all when `None`).
    ClientAttached {
        conn: ConnId,
        after: Option<u64>,
    },
    ClientDetached {
        conn: ConnId,
    },
    ClientCommand {
        conn: ConnId,
        command: ClientCommand,
    },
    /// A prompt, from HTTP (`conn: None`) or a WebSocket frame. The shell mints `run_id`.
    Prompt {
        run_id: RunId,
        by: Attribution,
        text: String,
        client_msg_id: Option<ClientMsgId>,
        conn: Option<ConnId>,
    },
    /// Cancel from HTTP: `None` means the running run.
    Cancel {
        run_id: Option<RunId>,
    },
    /// Close the session: cancel everything, terminate the sandbox.
    Close,
    /// A sandbox socket presented a token whose SHA-256 is `token_hash`.
    SandboxConnect {
        conn: ConnId,
        token_hash: TokenHash,
    },
    SandboxDisconnected {
        conn: ConnId,
    },
    SandboxMessage {
        conn: ConnId,
        message: SandboxMessage,
    },
    /// The shell minted the token for spawn attempt `spawn` (sent before the provider is called).
    SandboxTokenIssued {
        spawn: u32,
        token_hash: TokenHash,
    },
    /// The provider answered spawn attempt `spawn`.
    SpawnResult {
        spawn: u32,
        result: Result<SandboxId, PortFailure>,
    },
    /// The provider reports the sandbox gone (status poll or exit notice).
    SandboxExited {
        sandbox_id: SandboxId,
        reason: String,
    },
    /// The shell resolved the gateway and price and sent the `run` frame (or could not).
    DispatchResult {
        run_id: RunId,
        result: Result<Option<Price>, PortFailure>,
    },
    /// The run ledger answered a flush.
    RunRecorded {
        run_id: RunId,
        result: Result<(), PortFailure>,
    },
    /// The session store could not persist a commit after the shell's retries. The machine
    /// answers with `Evict` and refuses every later input (`Unavailable`).
    StoreFailed {
        failure: PortFailure,
    },
    /// Time passed `poll_deadline()`.
    Tick,
}

/// What the shell must do for the machine, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write atomically: append events, replace the snapshot, change the outbox.
    Persist(Commit),
    /// Send a frame to each listed client connection.
    Deliver {
        to: Vec<ConnId>,
        frame: ServerFrame,
    },
    /// Send `conn` every persisted event with `after < seq <= through`, in order, from the store.
    Replay {
        conn: ConnId,
        after: u64,
        through: u64,
    },
    /// Re-send un-ACKed critical events (already persisted) to these clients.
    Resend {
        to: Vec<ConnId>,
        events: Vec<EventEnvelope>,
    },
    /// Accept or refuse a sandbox socket after the token check.
    AcceptSandbox {
        conn: ConnId,
    },
    RejectSandbox {
        conn: ConnId,
    },
    /// Close a sandbox socket (replaced by a newer one, or shut down).
    CloseSandbox {
        conn: ConnId,
    },
    /// Send a frame to the connected sandbox.
    SendToSandbox {
        conn: ConnId,
        message: ServerToSandbox,
    },
    /// Resolve the model gateway and price, send `run` to the sandbox, answer `DispatchResult`.
    DispatchRun {
        conn: ConnId,
        run_id: RunId,
        text: String,
        model: ModelRef,
    },
    /// Mint a token (answer `SandboxTokenIssued` at once), then call the provider (answer `SpawnResult`).
    SpawnSandbox {
        spawn: u32,
        request: SpawnRequest,
    },
    TerminateSandbox {
        sandbox_id: SandboxId,
    },
    /// Flush a terminal run to the ledger; answer `RunRecorded`.
    RecordRun(RunRecord),
    /// Publish an org-wide status change.
    Publish(OrgEvent),
    Audit(AuditEntry),
    /// Nothing is live: the shell may drop the actor; it will be rebuilt from the store.
    Hibernate,
    /// The session cannot go on from memory (its store failed): close every socket and drop the
    /// actor now, writing nothing. The next request rebuilds it from the store's last durable
    /// state, exactly as after a process crash; nothing unpersisted was ever acknowledged or shown.
    Evict {
        reason: PortFailure,
    },
}

/// What the provider needs besides the token and callback URL, which the shell adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub agent: String,
    pub repo: Option<RepoSpec>,
    pub idle_s: u64,
    pub max_s: u64,
}

/// One atomic write to the session store.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Commit {
    pub events: Vec<EventEnvelope>,
    pub snapshot: Option<SessionSnapshot>,
    pub outbox_put: Vec<RunRecord>,
    pub outbox_remove: Vec<RunId>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.snapshot.is_none()
            && self.outbox_put.is_empty()
            && self.outbox_remove.is_empty()
    }
}

/// An org-wide notice of a session status change (the `EventBus` payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgEvent {
    pub org_id: OrgId,
    pub session_id: SessionId,
    pub status: SessionStatus,
    pub sandbox: SandboxStatus,
    pub at: Timestamp,
}

/// A successful `handle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    Done,
    /// A prompt was queued (or recognised as a re-send of `client_msg_id`: `duplicate`).
    Queued {
        run_id: RunId,
        position: u32,
        duplicate: bool,
    },
}

/// An input the machine refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub class: ErrorClass,
    pub code: &'static str,
    pub message: String,
}

/// Summary for `GET /v1/sessions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: SessionId,
    pub status: SessionStatus,
    pub model: ModelRef,
    pub sandbox: SandboxInfo,
    pub queue_length: u32,
    pub last_seq: u64,
    pub created_at: Timestamp,
    /// The permission policy in force: the session's own, else the server's.
    pub permissions: PermissionPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub status: SandboxStatus,
}

/// Everything the machine needs to continue after its process died or it hibernated, apart from
/// the event log, the outbox and the events of the run in flight: one JSON object, as text.
///
/// The machine owns the layout and writes the text; stores keep it as it is and hand the same
/// text back (no decoding on the write path). Cloning shares the text.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSnapshot(Arc<str>);

impl SessionSnapshot {
    /// A snapshot from its JSON text, as a store read it back. It is not checked here:
    /// [`crate::session::Session::restore`] refuses text it cannot read as `Corrupt`.
    pub fn from_json(text: impl Into<Arc<str>>) -> Self {
        SessionSnapshot(text.into())
    }

    /// A snapshot holding `value` as JSON text (tests and hand-made snapshots).
    pub fn from_value(value: &serde_json::Value) -> Self {
        SessionSnapshot::from_json(value.to_string())
    }

    /// The JSON text, to store as it is.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JSON text, shared rather than copied (for a store that takes ownership of it).
    pub fn shared_text(&self) -> Arc<str> {
        self.0.clone()
    }

    /// The JSON text decoded into a value (tests and tools; the machine reads it directly).
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl std::fmt::Debug for SessionSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SessionSnapshot")
            .field(&self.as_str())
            .finish()
    }
}

/// What a store hands back to rebuild a machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Persisted {
    pub snapshot: SessionSnapshot,
    pub outbox: Vec<RunRecord>,
    /// Events of the run in flight (those with seq >= `Session::active_run_first_seq(&snapshot)`
    /// and its run id), in seq order.
    pub active_run_events: Vec<EventEnvelope>,
}
