//! Session events and their envelope: the one shape used by HTTP replay, WebSocket and the ledger.

use crate::ids::{CallId, ClientMsgId, RequestId, RunId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The status of a session as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Provisioning,
    Ready,
    Running,
    Closed,
    Failed,
}

impl SessionStatus {
    /// Closed and failed sessions accept no more prompts.
    pub fn is_terminal(self) -> bool {
        matches!(self, SessionStatus::Closed | SessionStatus::Failed)
    }
}

/// The status of a session's sandbox as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    /// No sandbox has been asked for yet (or the last one ended and none is needed).
    None,
    Provisioning,
    Connected,
    Lost,
    Terminated,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminalStatus {
    Completed,
    Failed,
    Cancelled,
    TimedOut,
}

/// Token counts reported by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn add(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
        }
    }
}

/// Outcome of a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    Ok,
    Error,
}

/// One entry of an agent's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEntry {
    pub content: String,
    pub status: String,
}

/// A decision on a permission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermissionDecision {
    AllowOnce,
    AllowAlways,
    Deny,
}

impl PermissionDecision {
    pub const ALL: [PermissionDecision; 3] = [
        PermissionDecision::AllowOnce,
        PermissionDecision::AllowAlways,
        PermissionDecision::Deny,
    ];
}

/// Who decided a permission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecidedBy {
    Policy,
    Client,
    Timeout,
}

/// An error carried by an event or run: a stable code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Every event type of PROTOCOL.md, with its `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    #[serde(rename = "session.status")]
    SessionStatus { status: SessionStatus },
    #[serde(rename = "sandbox.status")]
    SandboxStatus {
        status: SandboxStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    #[serde(rename = "run.queued")]
    RunQueued {
        position: u32,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<ClientMsgId>,
    },
    #[serde(rename = "run.started")]
    RunStarted {},
    #[serde(rename = "message.delta")]
    MessageDelta { text: String },
    #[serde(rename = "thought.delta")]
    ThoughtDelta { text: String },
    #[serde(rename = "tool_call")]
    ToolCall {
        call_id: CallId,
        name: String,
        input: Value,
    },
    #[serde(rename = "tool_result")]
    ToolResult {
        call_id: CallId,
        status: ToolStatus,
        output: Value,
    },
    #[serde(rename = "plan")]
    Plan { entries: Vec<PlanEntry> },
    #[serde(rename = "permission.request")]
    PermissionRequest {
        request_id: RequestId,
        tool: String,
        input: Value,
        options: Vec<PermissionDecision>,
        deadline: Timestamp,
    },
    #[serde(rename = "permission.resolved")]
    PermissionResolved {
        request_id: RequestId,
        decision: PermissionDecision,
        by: DecidedBy,
    },
    #[serde(rename = "context.restored")]
    ContextRestored { from_seq: u64, turns: u32 },
    #[serde(rename = "environment.detected")]
    EnvironmentDetected {
        package_manager: String,
        file_count: u64,
        install: Vec<String>,
    },
    #[serde(rename = "execution_complete")]
    ExecutionComplete {
        status: TerminalStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_reason: Option<String>,
        usage: Usage,
        cost_micros: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
    #[serde(rename = "error")]
    Error { code: String, message: String },
}

impl Event {
    /// The wire name of this event's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::SessionStatus { .. } => "session.status",
            Event::SandboxStatus { .. } => "sandbox.status",
            Event::RunQueued { .. } => "run.queued",
            Event::RunStarted {} => "run.started",
            Event::MessageDelta { .. } => "message.delta",
            Event::ThoughtDelta { .. } => "thought.delta",
            Event::ToolCall { .. } => "tool_call",
            Event::ToolResult { .. } => "tool_result",
            Event::Plan { .. } => "plan",
            Event::PermissionRequest { .. } => "permission.request",
            Event::PermissionResolved { .. } => "permission.resolved",
            Event::ContextRestored { .. } => "context.restored",
            Event::EnvironmentDetected { .. } => "environment.detected",
            Event::ExecutionComplete { .. } => "execution_complete",
            Event::Error { .. } => "error",
        }
    }

    /// Critical events are re-sent until a client ACKs a seq at or past them.
    pub fn is_critical(&self) -> bool {
        match self {
            Event::ExecutionComplete { .. } | Event::Error { .. } => true,
            Event::SessionStatus { status } => status.is_terminal(),
            _ => false,
        }
    }
}

/// A sequenced, timestamped event as persisted, replayed and delivered.
///
/// Wire shape: `{"seq", "type", "run_id"?, "at", "critical", "data"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    pub at: Timestamp,
    pub critical: bool,
    #[serde(flatten)]
    pub event: Event,
}
