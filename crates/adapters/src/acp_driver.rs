//! `AcpAgentDriver`: the real [`AgentDriver`]. One coding-agent process per agent session, driven
//! over the Agent Client Protocol (ACP v1, the `agent-client-protocol` 5.0 crate) on its stdio.
//!
//! # Lifecycle
//!
//! - **`start`** spawns `program args` with the configured environment added, its cwd the
//!   workspace, in its own process group, killed when its owner drops. It sends `initialize`, then
//!   `session/new` with the workspace as cwd; the agent's `sessionId` becomes the
//!   [`AgentSessionId`] (suffixed `.<n>` in the unlikely case two agents chose the same id).
//! - **`prompt`** sends `session/prompt` and maps every `session/update` of the session to
//!   [`AgentUpdate::Event`] through [`AcpUpdateMapper`], in order, until the prompt's answer. Its
//!   `stopReason` decides the outcome: `end_turn` → `Completed`, `cancelled` → `Cancelled`, any other
//!   reason → `Completed` with that stop reason. Usage is read from the answer's `usage`
//!   (`inputTokens`, `outputTokens`; OpenCode 1.18 sends it there) or `_meta.usage`, else zero. A
//!   JSON-RPC error answer ends the turn `Failed` (`agent_error`); an agent process that exits during
//!   the turn ends it `Failed` (`agent_exited`, with its exit status and last stderr lines) — a turn
//!   never hangs on a dead agent.
//! - **Permissions**: a `session/request_permission` becomes [`AgentUpdate::Permission`] with a
//!   fresh request id (`perm-<n>`); the handler parks the responder and returns at once (ACP
//!   handlers run one at a time), and [`AgentDriver::decide`] answers it with the agent's option of
//!   the matching kind.
//! - **`cancel`** answers the turn's open permission requests `cancelled` and sends `session/cancel`
//!   (a notification). The turn ends when the agent answers `cancelled`; an agent that has not
//!   answered within the cancel grace (10 s by default) has its turn ended `Cancelled` anyway.
//! - **`restore`** always injects history (see below) and answers [`RestoreMode::Injected`].
//! - **`stop`** kills the agent's whole process group and waits for it to exit; a turn in progress
//!   ends `Cancelled`. Dropping the driver kills every agent it started.
//!
//! # Injected history
//!
//! `restore(turns)` keeps the turns; the next prompt carries them as its first content block
//! ([`history_block`]): the line [`HISTORY_HEADER`], one line of explanation, then the turns as a
//! one-line JSON array of `{"role", "text"}`, oldest first. The user's text follows as its own
//! block. A retried `restore` replaces the kept turns, so nothing is injected twice. Why not
//! `session/load`: `restore` names no earlier agent session, and it is called for a replacement
//! sandbox, whose agent has a fresh data directory with nothing to load.
//!
//! # OpenCode
//!
//! When the program's file name is `opencode`, `start` adds [`opencode_env`] (the gateway and model
//! as `OPENCODE_CONFIG_CONTENT`, offline switches, a private `HOME` and XDG dirs, created before the
//! spawn) plus a random `OPENCODE_SERVER_PASSWORD`, before the configured `env` (which wins).

use acp::schema::ProtocolVersion;
use acp::v1::schema::{
    CancelNotification, ContentBlock, Implementation, InitializeRequest, NewSessionRequest,
    PermissionOption, PermissionOptionKind, PromptRequest, RequestPermissionOutcome,
    RequestPermissionRequest, RequestPermissionResponse, SelectedPermissionOutcome, SessionId,
    SessionNotification, SessionUpdate, TextContent, ToolCallContent, ToolCallStatus,
};
use acp::{Agent, ByteStreams, Client, UntypedMessage};
use agent_client_protocol as acp;
use async_trait::async_trait;
use futures::channel::mpsc;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::protocol::{
    ErrorBody, Event, PermissionDecision, PlanEntry, TerminalStatus, ToolStatus, Turn, Usage,
};
use switchboard_core::{CallId, RequestId, RunId};
use switchboard_ports::agent::{AgentSessionId, AgentStart, AgentUpdate, RestoreMode, TurnOutcome};
use switchboard_ports::{AgentDriver, AgentDriverError};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// How to run the agent program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpConfig {
    /// The agent program (e.g. the path of `opencode`).
    pub program: String,
    /// Its arguments (e.g. `["acp"]`).
    pub args: Vec<String>,
    /// Environment added to the inherited one (after the OpenCode defaults, so these win).
    pub env: Vec<(String, String)>,
}

/// The longest `start` waits for `initialize` and `session/new` together.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after `cancel` a turn waits for the agent's answer before ending `Cancelled` anyway.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// How long the driver waits for a dying agent's last words (its answer, its exit status).
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How long `stop` waits for the killed agent to be reaped.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many of the agent's last stderr lines an exit report quotes.
const STDERR_TAIL: usize = 20;

/// The first line of an injected-history prompt block (see the module docs).
pub const HISTORY_HEADER: &str = "[switchboard: restored conversation]";

/// The prompt block that hands an agent the earlier turns of its conversation.
pub fn history_block(turns: &[Turn]) -> String {
    let json = serde_json::to_string(turns).expect("turns serialize");
    format!(
        "{HISTORY_HEADER}\nThis session continues an earlier conversation (its agent was \
         replaced). The earlier turns follow as JSON, oldest first; the user's new message comes \
         after this block.\n{json}"
    )
}

/// The turns of a [`history_block`], `None` when `text` is not one.
pub fn parse_history_block(text: &str) -> Option<Vec<Turn>> {
    let rest = text.strip_prefix(HISTORY_HEADER)?;
    serde_json::from_str(rest.lines().last()?).ok()
}

/// The directory under which an OpenCode agent working in `workspace` keeps its private `HOME` and
/// XDG dirs: beside the workspace (`<parent>/.switchboard-agent/<name>`), or under the temp dir
/// when the workspace sits at the root.
pub fn opencode_home(workspace: &str) -> PathBuf {
    let ws = Path::new(workspace);
    let name: String = ws
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".to_string())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    match ws.parent() {
        Some(parent) if parent != Path::new("/") && !parent.as_os_str().is_empty() => {
            parent.join(".switchboard-agent").join(name)
        }
        _ => std::env::temp_dir().join("switchboard-agent").join(name),
    }
}

/// The environment that points OpenCode (1.18) at the run's gateway and model and keeps it offline
/// and contained (see `notes/opencode.md`): `OPENCODE_CONFIG_CONTENT` with a custom
/// `@ai-sdk/openai-compatible` provider named after the model's provider (`baseURL`, `apiKey` and
/// `headers` from the gateway), `enabled_providers`, `model` and `small_model`, `autoupdate: false`,
/// `share: "disabled"`, bash and edit allowed, webfetch denied, no title call; the
/// `OPENCODE_DISABLE_*` switches; and a private `HOME` and XDG dirs under [`opencode_home`].
pub fn opencode_env(start: &AgentStart) -> Vec<(String, String)> {
    let provider = start.model.provider().to_string();
    let model = start.model.model().to_string();
    let full = start.model.to_string();

    let mut options = Map::new();
    options.insert("baseURL".into(), json!(start.gateway.base_url));
    if let Some(key) = &start.gateway.api_key {
        options.insert("apiKey".into(), json!(key));
    }
    if !start.gateway.headers.is_empty() {
        options.insert("headers".into(), json!(start.gateway.headers));
    }
    let mut models = Map::new();
    models.insert(model.clone(), json!({ "name": model, "tool_call": true }));
    let mut providers = Map::new();
    providers.insert(
        provider.clone(),
        json!({
            "npm": "@ai-sdk/openai-compatible",
            "name": provider,
            "options": options,
            "models": models,
        }),
    );
    let config = json!({
        "$schema": "https://opencode.ai/config.json",
        "model": full,
        "small_model": full,
        "autoupdate": false,
        "share": "disabled",
        "enabled_providers": [provider],
        "provider": providers,
        "permission": { "bash": "allow", "edit": "allow", "webfetch": "deny" },
        "agent": { "title": { "disable": true } },
    });

    let home = opencode_home(&start.workspace);
    let dir = |sub: &str| home.join(sub).to_string_lossy().into_owned();
    [
        ("OPENCODE_CONFIG_CONTENT", config.to_string()),
        ("OPENCODE_DISABLE_MODELS_FETCH", "1".to_string()),
        ("OPENCODE_DISABLE_AUTOUPDATE", "1".to_string()),
        ("OPENCODE_DISABLE_FFF", "1".to_string()),
        ("HOME", dir("home")),
        ("XDG_CONFIG_HOME", dir("config")),
        ("XDG_DATA_HOME", dir("data")),
        ("XDG_CACHE_HOME", dir("cache")),
        ("XDG_STATE_HOME", dir("state")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Whether `program` is OpenCode (its file name is `opencode`).
fn is_opencode(program: &str) -> bool {
    Path::new(program)
        .file_name()
        .is_some_and(|n| n == "opencode")
}

// ----- ACP update → event mapping -------------------------------------------------------------

/// A tool call the mapper has seen.
struct CallState {
    call_id: CallId,
    name: String,
    input: Value,
    /// The text content seen last (OpenCode streams it on `in_progress` updates).
    text: Option<String>,
    announced: bool,
    finished: bool,
}

/// Maps a session's ACP `session/update`s to Switchboard agent events, one turn at a time.
///
/// - `agent_message_chunk` → `message.delta`, `agent_thought_chunk` → `thought.delta` (text only).
/// - A tool call becomes one `tool_call {call_id, name, input}` once its input is known: when the
///   `tool_call` arrives with a status past `pending`, at its first `tool_call_update` (OpenCode
///   sends the command only there), or at the end of the turn. `name` is the call's `name`, else
///   its title when it was created (OpenCode: `bash`); `input` is its `rawInput`, merged with every
///   update's `rawInput`.
/// - A `completed` or `failed` status becomes one `tool_result {call_id, status: ok|error, output}`,
///   `output` being the call's text content (else its `rawOutput`, else `""`).
/// - `plan` → `plan`. Every other update is not an agent event and maps to nothing.
///
/// ACP tool call ids are made valid [`CallId`]s by replacing other characters with `_`.
#[derive(Default)]
pub struct AcpUpdateMapper {
    calls: HashMap<String, CallState>,
    order: Vec<String>,
}

/// Makes an ACP tool call id a valid [`CallId`].
fn call_id_of(acp_id: &str) -> CallId {
    let mut s: String = acp_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if s.is_empty() {
        s = "call".to_string();
    }
    CallId::parse(s).expect("sanitized call ids are valid")
}

fn text_of_block(block: &ContentBlock) -> Option<&str> {
    match block {
        ContentBlock::Text(t) => Some(&t.text),
        _ => None,
    }
}

fn text_of_content(content: &[ToolCallContent]) -> Option<String> {
    let texts: Vec<&str> = content
        .iter()
        .filter_map(|c| match c {
            ToolCallContent::Content(c) => text_of_block(&c.content),
            _ => None,
        })
        .collect();
    (!texts.is_empty()).then(|| texts.concat())
}

/// Merges `new` into `old`: objects key by key, anything else replaced.
fn merge_input(old: &mut Value, new: &Value) {
    match (old.as_object_mut(), new.as_object()) {
        (Some(o), Some(n)) => {
            for (k, v) in n {
                o.insert(k.clone(), v.clone());
            }
        }
        _ => *old = new.clone(),
    }
}

impl AcpUpdateMapper {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events one update stands for (often none).
    pub fn map(&mut self, update: &SessionUpdate) -> Vec<Event> {
        let mut out = Vec::new();
        match update {
            SessionUpdate::AgentMessageChunk(chunk) => {
                if let Some(text) = text_of_block(&chunk.content).filter(|t| !t.is_empty()) {
                    out.push(Event::MessageDelta {
                        text: text.to_string(),
                    });
                }
            }
            SessionUpdate::AgentThoughtChunk(chunk) => {
                if let Some(text) = text_of_block(&chunk.content).filter(|t| !t.is_empty()) {
                    out.push(Event::ThoughtDelta {
                        text: text.to_string(),
                    });
                }
            }
            SessionUpdate::ToolCall(call) => {
                let key = call.tool_call_id.0.to_string();
                let state = self.state(&key, || {
                    call.name.clone().unwrap_or_else(|| call.title.clone())
                });
                if let Some(input) = &call.raw_input {
                    merge_input(&mut state.input, input);
                }
                if let Some(text) = text_of_content(&call.content) {
                    state.text = Some(text);
                }
                let status = call.status;
                if status != ToolCallStatus::Pending {
                    Self::announce(state, &mut out);
                }
                Self::finish_call(state, Some(status), call.raw_output.as_ref(), &mut out);
            }
            SessionUpdate::ToolCallUpdate(update) => {
                let key = update.tool_call_id.0.to_string();
                let fields = &update.fields;
                let state = self.state(&key, || {
                    fields
                        .name
                        .clone()
                        .or_else(|| fields.title.clone())
                        .unwrap_or_else(|| "tool".to_string())
                });
                if state.finished {
                    return out;
                }
                if let Some(name) = &fields.name {
                    if !state.announced {
                        state.name = name.clone();
                    }
                }
                if let Some(input) = &fields.raw_input {
                    merge_input(&mut state.input, input);
                }
                if let Some(text) = fields.content.as_deref().and_then(text_of_content) {
                    state.text = Some(text);
                }
                Self::announce(state, &mut out);
                Self::finish_call(state, fields.status, fields.raw_output.as_ref(), &mut out);
            }
            SessionUpdate::Plan(plan) => {
                let entries = plan
                    .entries
                    .iter()
                    .map(|e| PlanEntry {
                        content: e.content.clone(),
                        status: serde_json::to_value(&e.status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_else(|| "pending".to_string()),
                    })
                    .collect();
                out.push(Event::Plan { entries });
            }
            _ => {}
        }
        out
    }

    /// Announces every tool call still unannounced (the turn is over).
    pub fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        for key in &self.order {
            if let Some(state) = self.calls.get_mut(key) {
                Self::announce(state, &mut out);
            }
        }
        out
    }

    /// The name and input known for an ACP tool call id.
    pub fn call(&self, acp_id: &str) -> Option<(&str, &Value)> {
        self.calls.get(acp_id).map(|s| (s.name.as_str(), &s.input))
    }

    fn state(&mut self, key: &str, name: impl FnOnce() -> String) -> &mut CallState {
        if !self.calls.contains_key(key) {
            self.order.push(key.to_string());
            self.calls.insert(
                key.to_string(),
                CallState {
                    call_id: call_id_of(key),
                    name: name(),
                    input: Value::Object(Map::new()),
                    text: None,
                    announced: false,
                    finished: false,
                },
            );
        }
        self.calls.get_mut(key).expect("inserted above")
    }

    fn announce(state: &mut CallState, out: &mut Vec<Event>) {
        if !state.announced {
            state.announced = true;
            out.push(Event::ToolCall {
                call_id: state.call_id.clone(),
                name: state.name.clone(),
                input: state.input.clone(),
            });
        }
    }

    fn finish_call(
        state: &mut CallState,
        status: Option<ToolCallStatus>,
        raw_output: Option<&Value>,
        out: &mut Vec<Event>,
    ) {
        let status = match status {
            Some(ToolCallStatus::Completed) => ToolStatus::Ok,
            Some(ToolCallStatus::Failed) => ToolStatus::Error,
            _ => return,
        };
        if state.finished {
            return;
        }
        Self::announce(state, out);
        state.finished = true;
        let output = match (&state.text, raw_output) {
            (Some(text), _) => Value::String(text.clone()),
            (None, Some(raw)) => raw.clone(),
            (None, None) => Value::String(String::new()),
        };
        out.push(Event::ToolResult {
            call_id: state.call_id.clone(),
            status,
            output,
        });
    }
}

// ----- the prompt's answer ----------------------------------------------------------------------

/// Usage from a `session/prompt` answer: `usage` or `_meta.usage` (`inputTokens`/`outputTokens`,
/// or snake_case), else zero.
pub fn usage_of(answer: &Value) -> Usage {
    let usage = answer
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| answer.get("_meta").and_then(|m| m.get("usage")));
    let count = |camel: &str, snake: &str| {
        usage
            .and_then(|u| u.get(camel).or_else(|| u.get(snake)))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Usage {
        input_tokens: count("inputTokens", "input_tokens"),
        output_tokens: count("outputTokens", "output_tokens"),
    }
}

/// The outcome a `session/prompt` answer stands for.
pub fn outcome_of_answer(answer: &Value) -> TurnOutcome {
    let usage = usage_of(answer);
    match answer.get("stopReason").and_then(Value::as_str) {
        Some("cancelled") => TurnOutcome {
            status: TerminalStatus::Cancelled,
            stop_reason: Some("cancelled".to_string()),
            usage,
            error: None,
        },
        Some(reason) => TurnOutcome {
            status: TerminalStatus::Completed,
            stop_reason: Some(reason.to_string()),
            usage,
            error: None,
        },
        None => failed(
            "agent_protocol_error",
            format!("the agent's session/prompt answer has no stopReason: {answer}"),
        ),
    }
}

fn failed(code: &str, message: impl Into<String>) -> TurnOutcome {
    TurnOutcome {
        status: TerminalStatus::Failed,
        stop_reason: None,
        usage: Usage::default(),
        error: Some(ErrorBody::new(code, message)),
    }
}

fn cancelled() -> TurnOutcome {
    TurnOutcome {
        status: TerminalStatus::Cancelled,
        stop_reason: Some("cancelled".to_string()),
        usage: Usage::default(),
        error: None,
    }
}

fn describe(e: &acp::Error) -> String {
    format!("{e} (JSON-RPC {})", e.code.value())
}

// ----- the agent process ----------------------------------------------------------------------

/// Sends SIGKILL to a whole process group (the agent and everything it started).
#[cfg(unix)]
fn kill_group(pgid: u32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const SIGKILL: i32 = 9;
    if let Ok(pid) = i32::try_from(pgid) {
        if pid > 1 {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours.
            unsafe {
                kill(-pid, SIGKILL);
            }
        }
    }
}

#[cfg(not(unix))]
fn kill_group(_pgid: u32) {}

/// Kills the process group when dropped while armed (the watcher's future was dropped, e.g. with
/// its runtime, before it could do so itself).
struct GroupKiller(Option<u32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            kill_group(pgid);
        }
    }
}

/// A permission request waiting for [`AgentDriver::decide`].
struct PendingPermission {
    responder: acp::v1::Responder<RequestPermissionResponse>,
    options: Vec<PermissionOption>,
}

impl PendingPermission {
    fn cancel(self) {
        let _ = self.responder.respond(RequestPermissionResponse::new(
            RequestPermissionOutcome::Cancelled,
        ));
    }
}

/// The turn in progress.
struct ActiveTurn {
    id: u64,
    updates: mpsc::UnboundedSender<AgentUpdate>,
    mapper: AcpUpdateMapper,
    permissions: HashMap<RequestId, PendingPermission>,
    cancel: watch::Sender<bool>,
}

impl ActiveTurn {
    fn send(&self, event: Event) {
        // A caller that stopped listening does not stop the agent.
        let _ = self.updates.unbounded_send(AgentUpdate::Event(event));
    }
}

/// What the connection's handlers share with the driver.
struct Shared {
    acp_session: Mutex<Option<SessionId>>,
    turn: Mutex<Option<ActiveTurn>>,
    next_request: AtomicU64,
    next_turn: AtomicU64,
}

impl Shared {
    fn is_ours(&self, session: &SessionId) -> bool {
        self.acp_session.lock().unwrap().as_ref() == Some(session)
    }

    fn on_notification(&self, n: SessionNotification) {
        if !self.is_ours(&n.session_id) {
            return;
        }
        let mut turn = self.turn.lock().unwrap();
        if let Some(turn) = turn.as_mut() {
            for event in turn.mapper.map(&n.update) {
                turn.send(event);
            }
        }
    }

    fn on_permission(
        &self,
        request: RequestPermissionRequest,
        responder: acp::v1::Responder<RequestPermissionResponse>,
    ) {
        let pending = PendingPermission {
            responder,
            options: request.options,
        };
        if !self.is_ours(&request.session_id) {
            return pending.cancel();
        }
        let mut turn = self.turn.lock().unwrap();
        let Some(turn) = turn.as_mut().filter(|t| !*t.cancel.borrow()) else {
            // No turn to ask in (or it is being cancelled): the agent must not go ahead.
            return pending.cancel();
        };
        let fields = &request.tool_call.fields;
        let known = turn.mapper.call(&request.tool_call.tool_call_id.0);
        let tool = fields
            .name
            .clone()
            .or_else(|| known.map(|(name, _)| name.to_string()))
            .or_else(|| fields.title.clone())
            .unwrap_or_else(|| "tool".to_string());
        let input = fields
            .raw_input
            .clone()
            .or_else(|| known.map(|(_, input)| input.clone()))
            .unwrap_or_else(|| Value::Object(Map::new()));
        let n = self.next_request.fetch_add(1, Ordering::Relaxed) + 1;
        let request_id = RequestId::parse(format!("perm-{n}")).expect("perm-<n> is a valid id");
        let _ = turn.updates.unbounded_send(AgentUpdate::Permission {
            request_id: request_id.clone(),
            tool,
            input,
        });
        turn.permissions.insert(request_id, pending);
    }
}

/// One running agent and its one ACP session.
struct AgentProcess {
    pid: Option<u32>,
    acp_session: SessionId,
    conn: acp::v1::ConnectionTo<Agent>,
    shared: Arc<Shared>,
    /// `Some(description)` once the process has exited.
    exit: watch::Receiver<Option<String>>,
    kill: Mutex<Option<oneshot::Sender<()>>>,
    /// Dropping it ends the connection.
    _shutdown: oneshot::Sender<()>,
    history: Mutex<Option<Vec<Turn>>>,
    stopping: AtomicBool,
}

impl AgentProcess {
    fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    fn kill(&self) {
        if let Some(tx) = self.kill.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }

    /// Waits (at most `patience`) for the exit description.
    async fn exit_description(&self, patience: Duration) -> Option<String> {
        let mut exit = self.exit.clone();
        tokio::time::timeout(patience, wait_exit(&mut exit))
            .await
            .ok()
    }
}

async fn wait_exit(exit: &mut watch::Receiver<Option<String>>) -> String {
    match exit.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or_default(),
        Err(_) => "the agent process is gone".to_string(),
    }
}

/// Clears the turn when `prompt` ends however it ends; a prompt dropped mid-turn also cancels the
/// agent's turn.
struct TurnGuard<'a> {
    process: &'a AgentProcess,
    turn: u64,
    answered: bool,
}

impl TurnGuard<'_> {
    /// Ends the turn: flushes unannounced tool calls, answers open permission requests.
    fn finish(&mut self) {
        self.answered = true;
        let taken = {
            let mut turn = self.process.shared.turn.lock().unwrap();
            if turn.as_ref().is_some_and(|t| t.id == self.turn) {
                turn.take()
            } else {
                None
            }
        };
        if let Some(mut turn) = taken {
            for event in turn.mapper.finish() {
                turn.send(event);
            }
            for (_, p) in turn.permissions.drain() {
                p.cancel();
            }
        }
    }
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self
                .process
                .conn
                .send_notification(CancelNotification::new(self.process.acp_session.clone()));
            self.finish();
        }
    }
}

/// The real `AgentDriver`: see the module docs.
pub struct AcpAgentDriver {
    config: AcpConfig,
    start_timeout: Duration,
    cancel_grace: Duration,
    sessions: Mutex<HashMap<AgentSessionId, Arc<AgentProcess>>>,
    next: AtomicU64,
}

impl AcpAgentDriver {
    pub fn new(config: AcpConfig) -> Self {
        AcpAgentDriver {
            config,
            start_timeout: START_TIMEOUT,
            cancel_grace: CANCEL_GRACE,
            sessions: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        }
    }

    /// How long `start` waits for the agent's `initialize` and `session/new` answers.
    pub fn with_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How long a cancelled turn waits for the agent's answer before ending `Cancelled` anyway.
    pub fn with_cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// The OS process id of a session's agent (diagnostics and tests).
    pub fn process_id(&self, session: &AgentSessionId) -> Option<u32> {
        self.sessions
            .lock()
            .unwrap()
            .get(session)
            .and_then(|p| p.pid)
    }

    fn process(&self, session: &AgentSessionId) -> Result<Arc<AgentProcess>, AgentDriverError> {
        self.sessions
            .lock()
            .unwrap()
            .get(session)
            .cloned()
            .ok_or_else(|| AgentDriverError::NotFound(format!("no agent session {:?}", session.0)))
    }

    fn live_process(
        &self,
        session: &AgentSessionId,
    ) -> Result<Arc<AgentProcess>, AgentDriverError> {
        let process = self.process(session)?;
        if let Some(exit) = process.exited() {
            return Err(AgentDriverError::Unavailable(format!(
                "the agent of session {:?} is gone: {exit}",
                session.0
            )));
        }
        Ok(process)
    }

    /// The environment of a new agent: OpenCode's defaults when the program is OpenCode, then the
    /// configured `env`.
    fn env_for(&self, start: &AgentStart) -> Result<Vec<(String, String)>, AgentDriverError> {
        let mut env = Vec::new();
        if is_opencode(&self.config.program) {
            env = opencode_env(start);
            for (key, value) in &env {
                if key == "HOME" || key.starts_with("XDG_") {
                    std::fs::create_dir_all(value).map_err(|e| {
                        AgentDriverError::Unavailable(format!("cannot create {value}: {e}"))
                    })?;
                }
            }
            let mut secret = [0u8; 16];
            getrandom::fill(&mut secret).map_err(|e| {
                AgentDriverError::Unavailable(format!("no randomness for the agent password: {e}"))
            })?;
            env.push(("OPENCODE_SERVER_PASSWORD".into(), hex::encode(secret)));
        }
        env.extend(self.config.env.iter().cloned());
        Ok(env)
    }

    /// Spawns the agent, connects ACP, initializes and opens its session.
    async fn launch(&self, start: &AgentStart) -> Result<AgentProcess, AgentDriverError> {
        let env = self.env_for(start)?;
        let mut command = tokio::process::Command::new(&self.config.program);
        command
            .args(&self.config.args)
            .envs(env)
            .current_dir(&start.workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn().map_err(|e| {
            AgentDriverError::Unavailable(format!(
                "cannot start the agent {:?} in {:?}: {e}",
                self.config.program, start.workspace
            ))
        })?;
        let pid = child.id();
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        // stderr: logged, and its tail kept for the exit report.
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_task = tokio::spawn({
            let tail = tail.clone();
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "switchboard::acp_agent", "{line}");
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        });

        // The watcher owns the child: it reaps it, kills its group when told to (or when the
        // process handle is dropped), and publishes how it ended.
        let (exit_tx, exit_rx) = watch::channel(None);
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut killer = GroupKiller(pid);
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill_rx => {
                    if let Some(pgid) = killer.0.take() {
                        kill_group(pgid);
                    }
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            // Whatever the agent left running in its group goes with it.
            if let Some(pgid) = killer.0.take() {
                kill_group(pgid);
            }
            let _ = tokio::time::timeout(EXIT_GRACE, stderr_task).await;
            let status = match status {
                Ok(s) => format!("the agent process exited ({s})"),
                Err(e) => format!("the agent process could not be waited for: {e}"),
            };
            let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
            let description = if tail.is_empty() {
                status
            } else {
                format!("{status}; its last stderr lines: {}", tail.join(" | "))
            };
            let _ = exit_tx.send(Some(description));
        });

        let shared = Arc::new(Shared {
            acp_session: Mutex::new(None),
            turn: Mutex::new(None),
            next_request: AtomicU64::new(0),
            next_turn: AtomicU64::new(0),
        });
        let (conn_tx, conn_rx) = oneshot::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let transport = ByteStreams::new(stdin.compat_write(), stdout.compat());
        let on_update = shared.clone();
        let on_permission = shared.clone();
        tokio::spawn(async move {
            let ended = Client
                .v1()
                .name("switchboard")
                .on_receive_notification(
                    async move |n: SessionNotification, _cx| {
                        on_update.on_notification(n);
                        Ok(())
                    },
                    acp::on_receive_notification!(),
                )
                .on_receive_request(
                    async move |r: RequestPermissionRequest,
                                responder: acp::v1::Responder<RequestPermissionResponse>,
                                _cx| {
                        // Parked until `decide`: never wait here, handlers run one at a time.
                        on_permission.on_permission(r, responder);
                        Ok(())
                    },
                    acp::on_receive_request!(),
                )
                .connect_with(transport, async move |cx| {
                    let _ = conn_tx.send(cx);
                    let _ = shutdown_rx.await;
                    Ok(())
                })
                .await;
            if let Err(e) = ended {
                tracing::debug!(target: "switchboard::acp_agent", "ACP connection ended: {e}");
            }
        });

        let mut process = AgentProcess {
            pid,
            acp_session: SessionId::new("pending"),
            conn: match conn_rx.await {
                Ok(conn) => conn,
                Err(_) => {
                    let _ = kill_tx.send(());
                    return Err(AgentDriverError::Unavailable(
                        "the ACP connection to the agent ended before it started".into(),
                    ));
                }
            },
            shared,
            exit: exit_rx,
            kill: Mutex::new(Some(kill_tx)),
            _shutdown: shutdown_tx,
            history: Mutex::new(None),
            stopping: AtomicBool::new(false),
        };
        // From here on, dropping `process` kills the agent.
        let handshake = async {
            process
                .conn
                .send_request(InitializeRequest::new(ProtocolVersion::V1).client_info(
                    Implementation::new("switchboard", env!("CARGO_PKG_VERSION")),
                ))
                .block_task()
                .await
                .map_err(|e| format!("initialize failed: {}", describe(&e)))?;
            let session = process
                .conn
                .send_request(NewSessionRequest::new(PathBuf::from(&start.workspace)))
                .block_task()
                .await
                .map_err(|e| format!("session/new failed: {}", describe(&e)))?;
            Ok::<_, String>(session.session_id)
        };
        let mut exit = process.exit.clone();
        let session = tokio::select! {
            r = tokio::time::timeout(self.start_timeout, handshake) => match r {
                Ok(Ok(session)) => session,
                Ok(Err(e)) => {
                    let exit = process.exit_description(EXIT_GRACE).await;
                    return Err(AgentDriverError::Unavailable(match exit {
                        Some(exit) => format!("{e}; {exit}"),
                        None => e,
                    }));
                }
                Err(_) => {
                    return Err(AgentDriverError::Timeout(format!(
                        "the agent did not answer initialize and session/new within {:?}",
                        self.start_timeout
                    )))
                }
            },
            exit = wait_exit(&mut exit) => {
                return Err(AgentDriverError::Unavailable(format!(
                    "the agent exited while starting: {exit}"
                )))
            }
        };
        *process.shared.acp_session.lock().unwrap() = Some(session.clone());
        process.acp_session = session;
        Ok(process)
    }

    /// Waits for the prompt's answer, the agent's death, or the end of the cancel grace.
    async fn await_answer(
        &self,
        process: &AgentProcess,
        answer: impl std::future::Future<Output = Result<Value, acp::Error>>,
        mut cancel: watch::Receiver<bool>,
    ) -> TurnOutcome {
        let mut answer = std::pin::pin!(answer);
        let mut exit = process.exit.clone();
        let mut exited: Option<String> = None;
        let mut cancel_seen = false;
        let mut deadline: Option<Instant> = None;
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let result = loop {
            let wake = deadline.unwrap_or(far);
            tokio::select! {
                r = &mut answer => break Some(r),
                desc = wait_exit(&mut exit), if exited.is_none() => {
                    exited = Some(desc);
                    let until = Instant::now() + EXIT_GRACE;
                    deadline = Some(deadline.map_or(until, |d| d.min(until)));
                }
                r = cancel.wait_for(|c| *c), if !cancel_seen => {
                    cancel_seen = true;
                    if r.is_ok() {
                        let until = Instant::now() + self.cancel_grace;
                        deadline = Some(deadline.map_or(until, |d| d.min(until)));
                    }
                }
                _ = tokio::time::sleep_until(wake), if deadline.is_some() => break None,
            }
        };
        let stopping = process.stopping.load(Ordering::SeqCst);
        let cancel_requested = *cancel.borrow();
        match result {
            Some(Ok(answer)) => outcome_of_answer(&answer),
            Some(Err(e)) if cancel_requested && e.code == acp::ErrorCode::REQUEST_CANCELLED => {
                cancelled()
            }
            Some(Err(e))
                if !acp::is_incoming_transport_closed(&e) && !acp::is_connection_terminated(&e) =>
            {
                failed(
                    "agent_error",
                    format!("the agent failed the turn: {}", describe(&e)),
                )
            }
            // The connection is gone, or the agent died and sent no answer.
            _ if stopping => cancelled(),
            Some(Err(_)) | None if exited.is_some() || process.exited().is_some() => {
                let exit = match exited {
                    Some(e) => e,
                    None => process.exited().unwrap_or_default(),
                };
                failed(
                    "agent_exited",
                    format!("the agent process died during the turn: {exit}"),
                )
            }
            Some(Err(e)) => match process.exit_description(EXIT_GRACE).await {
                Some(exit) => failed(
                    "agent_exited",
                    format!("the agent process died during the turn: {exit}"),
                ),
                None => failed(
                    "agent_exited",
                    format!(
                        "the connection to the agent broke during the turn: {}",
                        describe(&e)
                    ),
                ),
            },
            None => {
                // The cancel grace ran out: the agent ignored `session/cancel`.
                tracing::warn!(
                    target: "switchboard::acp_agent",
                    "the agent did not answer session/cancel within {:?}; the turn ends cancelled",
                    self.cancel_grace
                );
                cancelled()
            }
        }
    }
}

/// The content blocks of a prompt: the injected history first, when there is any.
fn prompt_blocks(history: Option<&[Turn]>, text: &str) -> Vec<ContentBlock> {
    let mut blocks = Vec::new();
    if let Some(turns) = history.filter(|t| !t.is_empty()) {
        blocks.push(ContentBlock::Text(TextContent::new(history_block(turns))));
    }
    blocks.push(ContentBlock::Text(TextContent::new(text)));
    blocks
}

/// The option of the agent's that carries out `decision`.
fn option_for(decision: PermissionDecision, options: &[PermissionOption]) -> Option<String> {
    let kinds: &[PermissionOptionKind] = match decision {
        PermissionDecision::AllowOnce => &[
            PermissionOptionKind::AllowOnce,
            PermissionOptionKind::AllowAlways,
        ],
        PermissionDecision::AllowAlways => &[
            PermissionOptionKind::AllowAlways,
            PermissionOptionKind::AllowOnce,
        ],
        PermissionDecision::Deny => &[
            PermissionOptionKind::RejectOnce,
            PermissionOptionKind::RejectAlways,
        ],
    };
    kinds.iter().find_map(|kind| {
        options
            .iter()
            .find(|o| o.kind == *kind)
            .map(|o| o.option_id.0.to_string())
    })
}

#[async_trait]
impl AgentDriver for AcpAgentDriver {
    async fn start(&self, start: &AgentStart) -> Result<AgentSessionId, AgentDriverError> {
        if !start.workspace.starts_with('/') {
            return Err(AgentDriverError::Invalid(format!(
                "workspace {:?} is not an absolute path",
                start.workspace
            )));
        }
        let process = Arc::new(self.launch(start).await?);
        let mut sessions = self.sessions.lock().unwrap();
        let mut id = AgentSessionId(process.acp_session.0.to_string());
        while sessions.contains_key(&id) {
            let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
            id = AgentSessionId(format!("{}.{n}", process.acp_session.0));
        }
        sessions.insert(id.clone(), process);
        Ok(id)
    }

    async fn prompt(
        &self,
        session: &AgentSessionId,
        _run_id: &RunId,
        text: &str,
        updates: mpsc::UnboundedSender<AgentUpdate>,
    ) -> Result<TurnOutcome, AgentDriverError> {
        let process = self.live_process(session)?;
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let turn_id = process.shared.next_turn.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut turn = process.shared.turn.lock().unwrap();
            if turn.is_some() {
                return Err(AgentDriverError::Conflict(format!(
                    "agent session {:?} is already in a turn",
                    session.0
                )));
            }
            *turn = Some(ActiveTurn {
                id: turn_id,
                updates,
                mapper: AcpUpdateMapper::new(),
                permissions: HashMap::new(),
                cancel: cancel_tx,
            });
        }
        let mut guard = TurnGuard {
            process: &process,
            turn: turn_id,
            answered: false,
        };
        let history = process.history.lock().unwrap().take();
        let request = UntypedMessage::new(
            "session/prompt",
            PromptRequest::new(
                process.acp_session.clone(),
                prompt_blocks(history.as_deref(), text),
            ),
        )
        .map_err(|e| AgentDriverError::Invalid(format!("cannot encode the prompt: {e}")))?;
        let answer = process.conn.send_request(request).block_task();
        let outcome = self.await_answer(&process, answer, cancel_rx).await;
        guard.finish();
        Ok(outcome)
    }

    async fn cancel(&self, session: &AgentSessionId) -> Result<(), AgentDriverError> {
        let process = self.process(session)?;
        let open = {
            let mut turn = process.shared.turn.lock().unwrap();
            match turn.as_mut() {
                Some(t) if !*t.cancel.borrow() => {
                    t.cancel.send_replace(true);
                    Some(t.permissions.drain().map(|(_, p)| p).collect::<Vec<_>>())
                }
                _ => None,
            }
        };
        let Some(open) = open else {
            return Ok(()); // no turn, or already cancelling
        };
        // ACP: a client cancelling a turn answers its open permission requests `cancelled`.
        for p in open {
            p.cancel();
        }
        process
            .conn
            .send_notification(CancelNotification::new(process.acp_session.clone()))
            .map_err(|e| {
                AgentDriverError::Unavailable(format!(
                    "cannot send session/cancel: {}",
                    describe(&e)
                ))
            })
    }

    async fn decide(
        &self,
        session: &AgentSessionId,
        request_id: &RequestId,
        decision: PermissionDecision,
    ) -> Result<(), AgentDriverError> {
        let process = self.process(session)?;
        let pending = {
            let mut turn = process.shared.turn.lock().unwrap();
            let turn = turn.as_mut();
            let Some(pending) = turn.and_then(|t| {
                let p = t.permissions.remove(request_id)?;
                match option_for(decision, &p.options) {
                    Some(option) => Some(Ok((p, option))),
                    None => {
                        let offered: Vec<String> =
                            p.options.iter().map(|o| format!("{:?}", o.kind)).collect();
                        t.permissions.insert(request_id.clone(), p);
                        Some(Err(offered))
                    }
                }
            }) else {
                return Err(AgentDriverError::NotFound(format!(
                    "agent session {:?} is not waiting for permission request {request_id}",
                    session.0
                )));
            };
            pending
        };
        let (pending, option) = pending.map_err(|offered| {
            AgentDriverError::Invalid(format!(
                "the agent offers no option for {decision:?} (it offers {offered:?})"
            ))
        })?;
        pending
            .responder
            .respond(RequestPermissionResponse::new(
                RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(option)),
            ))
            .map_err(|e| {
                AgentDriverError::Unavailable(format!(
                    "cannot answer the agent's permission request: {}",
                    describe(&e)
                ))
            })
    }

    async fn restore(
        &self,
        session: &AgentSessionId,
        turns: &[Turn],
    ) -> Result<RestoreMode, AgentDriverError> {
        let process = self.live_process(session)?;
        if process.shared.turn.lock().unwrap().is_some() {
            return Err(AgentDriverError::Conflict(format!(
                "agent session {:?} is in a turn; restore before prompting",
                session.0
            )));
        }
        *process.history.lock().unwrap() = (!turns.is_empty()).then(|| turns.to_vec());
        Ok(RestoreMode::Injected)
    }

    async fn stop(&self, session: &AgentSessionId) -> Result<(), AgentDriverError> {
        let process = self
            .sessions
            .lock()
            .unwrap()
            .remove(session)
            .ok_or_else(|| {
                AgentDriverError::NotFound(format!("no agent session {:?}", session.0))
            })?;
        process.stopping.store(true, Ordering::SeqCst);
        process.kill();
        if process.exit_description(STOP_TIMEOUT).await.is_none() {
            return Err(AgentDriverError::Timeout(format!(
                "the agent of session {:?} was killed but not reaped within {STOP_TIMEOUT:?}",
                session.0
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::protocol::{GatewayConfig, TurnRole};
    use switchboard_core::ModelRef;

    fn start() -> AgentStart {
        AgentStart {
            workspace: "/srv/work/repo".to_string(),
            model: ModelRef::parse("local/scripted-1").unwrap(),
            gateway: GatewayConfig {
                base_url: "http://127.0.0.1:8080/v1".into(),
                api_key: Some("sk-run".into()),
                headers: [("x-run".to_string(), "r1".to_string())].into(),
            },
        }
    }

    #[test]
    fn opencode_env_points_opencode_at_the_gateway_and_keeps_it_offline() {
        let env: HashMap<String, String> = opencode_env(&start()).into_iter().collect();
        let config: Value = serde_json::from_str(&env["OPENCODE_CONFIG_CONTENT"]).unwrap();
        assert_eq!(config["model"], "local/scripted-1");
        assert_eq!(config["small_model"], "local/scripted-1");
        assert_eq!(config["enabled_providers"], json!(["local"]));
        assert_eq!(config["autoupdate"], false);
        assert_eq!(config["share"], "disabled");
        let provider = &config["provider"]["local"];
        assert_eq!(provider["npm"], "@ai-sdk/openai-compatible");
        assert_eq!(provider["options"]["baseURL"], "http://127.0.0.1:8080/v1");
        assert_eq!(provider["options"]["apiKey"], "sk-run");
        assert_eq!(provider["options"]["headers"]["x-run"], "r1");
        assert_eq!(provider["models"]["scripted-1"]["tool_call"], true);
        assert_eq!(config["permission"]["bash"], "allow");
        assert_eq!(config["permission"]["edit"], "allow");
        for switch in [
            "OPENCODE_DISABLE_MODELS_FETCH",
            "OPENCODE_DISABLE_AUTOUPDATE",
            "OPENCODE_DISABLE_FFF",
        ] {
            assert_eq!(env[switch], "1", "{switch}");
        }
        assert_eq!(env["HOME"], "/srv/work/.switchboard-agent/repo/home");
        assert_eq!(
            env["XDG_DATA_HOME"],
            "/srv/work/.switchboard-agent/repo/data"
        );
        for dir in ["XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"] {
            assert!(
                env[dir].starts_with("/srv/work/.switchboard-agent/repo/"),
                "{dir}"
            );
        }
    }

    #[test]
    fn opencode_env_without_key_or_headers_and_at_the_root() {
        let mut s = start();
        s.workspace = "/workspace".into();
        s.gateway.api_key = None;
        s.gateway.headers.clear();
        let env: HashMap<String, String> = opencode_env(&s).into_iter().collect();
        let config: Value = serde_json::from_str(&env["OPENCODE_CONFIG_CONTENT"]).unwrap();
        let options = &config["provider"]["local"]["options"];
        assert!(options.get("apiKey").is_none() && options.get("headers").is_none());
        let home = std::env::temp_dir().join("switchboard-agent/workspace/home");
        assert_eq!(env["HOME"], home.to_string_lossy());
        assert!(is_opencode(
            "/opt/node_modules/opencode-linux-x64/bin/opencode"
        ));
        assert!(!is_opencode("/usr/bin/opencode-wrapper"));
    }

    #[test]
    fn history_block_round_trips_and_leads_the_prompt() {
        let turns = vec![
            Turn {
                role: TurnRole::User,
                text: "line one\nline \"two\"".into(),
            },
            Turn {
                role: TurnRole::Assistant,
                text: "noted".into(),
            },
        ];
        let block = history_block(&turns);
        assert_eq!(parse_history_block(&block), Some(turns.clone()));
        assert_eq!(parse_history_block("hello"), None);
        let blocks = prompt_blocks(Some(&turns), "next");
        assert_eq!(blocks.len(), 2);
        assert!(matches!(&blocks[1], ContentBlock::Text(t) if t.text == "next"));
        assert_eq!(prompt_blocks(Some(&[]), "next").len(), 1);
    }

    #[test]
    fn answers_map_to_outcomes_with_usage() {
        let done = outcome_of_answer(&json!({
            "stopReason": "end_turn",
            "usage": {"inputTokens": 2004, "outputTokens": 2, "totalTokens": 2006},
            "_meta": {}
        }));
        assert_eq!(done.status, TerminalStatus::Completed);
        assert_eq!(done.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            done.usage,
            Usage {
                input_tokens: 2004,
                output_tokens: 2
            }
        );
        let meta = outcome_of_answer(&json!({
            "stopReason": "max_tokens",
            "_meta": {"usage": {"input_tokens": 5, "output_tokens": 7}}
        }));
        assert_eq!(meta.status, TerminalStatus::Completed);
        assert_eq!(meta.stop_reason.as_deref(), Some("max_tokens"));
        assert_eq!(meta.usage.output_tokens, 7);
        let stopped = outcome_of_answer(&json!({"stopReason": "cancelled"}));
        assert_eq!(stopped.status, TerminalStatus::Cancelled);
        assert_eq!(stopped.usage, Usage::default());
        let broken = outcome_of_answer(&json!({}));
        assert_eq!(broken.status, TerminalStatus::Failed);
        assert!(broken.error.is_some());
    }

    #[test]
    fn decisions_pick_the_matching_option_kind() {
        let options = vec![
            PermissionOption::new("once", "Allow once", PermissionOptionKind::AllowOnce),
            PermissionOption::new("reject", "Reject", PermissionOptionKind::RejectOnce),
        ];
        assert_eq!(
            option_for(PermissionDecision::AllowOnce, &options).as_deref(),
            Some("once")
        );
        assert_eq!(
            option_for(PermissionDecision::AllowAlways, &options).as_deref(),
            Some("once")
        );
        assert_eq!(
            option_for(PermissionDecision::Deny, &options).as_deref(),
            Some("reject")
        );
        assert_eq!(option_for(PermissionDecision::Deny, &options[..1]), None);
    }

    #[test]
    fn thoughts_plans_and_unannounced_calls_map_to_events() {
        let mut mapper = AcpUpdateMapper::new();
        let update = |v: Value| -> SessionUpdate { serde_json::from_value(v).unwrap() };
        assert_eq!(
            mapper.map(&update(json!({
                "sessionUpdate": "agent_thought_chunk",
                "content": {"type": "text", "text": "hmm"}
            }))),
            vec![Event::ThoughtDelta { text: "hmm".into() }]
        );
        assert_eq!(
            mapper.map(&update(json!({
                "sessionUpdate": "plan",
                "entries": [
                    {"content": "read", "priority": "high", "status": "completed"},
                    {"content": "fix", "priority": "low", "status": "in_progress"}
                ]
            }))),
            vec![Event::Plan {
                entries: vec![
                    PlanEntry {
                        content: "read".into(),
                        status: "completed".into()
                    },
                    PlanEntry {
                        content: "fix".into(),
                        status: "in_progress".into()
                    },
                ]
            }]
        );
        // A pending call waits for its input; a turn that ends first still announces it.
        let pending = update(json!({
            "sessionUpdate": "tool_call", "toolCallId": "c1", "title": "read",
            "status": "pending", "rawInput": {"path": "a.rs"}
        }));
        assert_eq!(mapper.map(&pending), vec![]);
        let announced = mapper.finish();
        assert!(matches!(
            &announced[..],
            [Event::ToolCall { name, input, .. }] if name == "read" && input["path"] == "a.rs"
        ));
        assert_eq!(mapper.finish(), vec![], "announced once");
        // A failed call with no text content reports its raw output as an error.
        let failed = mapper.map(&update(json!({
            "sessionUpdate": "tool_call_update", "toolCallId": "c1",
            "status": "failed", "rawOutput": {"error": "denied"}
        })));
        assert!(matches!(
            &failed[..],
            [Event::ToolResult { status: ToolStatus::Error, output, .. }]
                if output["error"] == "denied"
        ));
        let late = update(json!({
            "sessionUpdate": "tool_call_update", "toolCallId": "c1", "status": "completed"
        }));
        assert_eq!(mapper.map(&late), vec![], "a finished call stays finished");
    }

    #[test]
    fn odd_tool_call_ids_become_valid_call_ids() {
        assert_eq!(call_id_of("call_941f3146").as_str(), "call_941f3146");
        assert_eq!(call_id_of("toolu:01/ab").as_str(), "toolu_01_ab");
        assert_eq!(call_id_of("").as_str(), "call");
    }
}
