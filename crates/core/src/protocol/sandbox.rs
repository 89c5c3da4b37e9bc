//! Frames on the sandbox WebSocket (`/sandbox/v1/sessions/{org}/{session}/ws`).

use super::events::{ErrorBody, Event, PermissionDecision, TerminalStatus, Usage};
use crate::ids::{RequestId, RunId, SandboxId};
use crate::model::ModelRef;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Sandbox → server. Every message that carries `n` is numbered by the sandbox so the server can
/// drop a re-sent duplicate after a reconnect; the server ACKs `n` once the message is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SandboxMessage {
    Hello {
        sandbox_id: SandboxId,
        agent: String,
        agent_version: String,
    },
    /// An agent update for a run. `event` is one of the agent-produced event types
    /// (`message.delta`, `thought.delta`, `tool_call`, `tool_result`, `plan`).
    Event {
        run_id: RunId,
        n: u64,
        event: Event,
    },
    RunFinished {
        run_id: RunId,
        n: u64,
        status: TerminalStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_reason: Option<String>,
        #[serde(default)]
        usage: Usage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
    PermissionRequest {
        run_id: RunId,
        n: u64,
        request_id: RequestId,
        tool: String,
        input: Value,
    },
    /// The workspace's file list (relative paths), for environment autodiscovery.
    Workspace {
        n: u64,
        files: Vec<String>,
    },
    Heartbeat,
}

impl SandboxMessage {
    /// The sandbox's sequence number, for messages that carry one.
    pub fn n(&self) -> Option<u64> {
        match self {
            SandboxMessage::Event { n, .. }
            | SandboxMessage::RunFinished { n, .. }
            | SandboxMessage::PermissionRequest { n, .. }
            | SandboxMessage::Workspace { n, .. } => Some(*n),
            SandboxMessage::Hello { .. } | SandboxMessage::Heartbeat => None,
        }
    }
}

/// Where and how the agent reaches its model for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayConfig {
    pub base_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Who said a turn of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnRole {
    User,
    Assistant,
}

/// One turn of the conversation, as handed to a replacement sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: TurnRole,
    pub text: String,
}

/// Server → sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerToSandbox {
    Run {
        run_id: RunId,
        text: String,
        model: ModelRef,
        gateway: GatewayConfig,
    },
    Cancel {
        run_id: RunId,
    },
    Ack {
        n: u64,
    },
    Permission {
        request_id: RequestId,
        decision: PermissionDecision,
    },
    Restore {
        turns: Vec<Turn>,
    },
    Shutdown,
}
