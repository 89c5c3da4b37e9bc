//! Frames on the client WebSocket (`/v1/sessions/{id}/ws`).

use super::events::{EventEnvelope, PermissionDecision, SessionStatus};
use crate::ids::{ClientMsgId, RequestId, RunId, SessionId};
use serde::{Deserialize, Serialize};

/// Client → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Queue a prompt. A re-sent `client_msg_id` is not queued twice.
    Prompt {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<ClientMsgId>,
    },
    /// Cancel a run (default: the running one).
    Cancel {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_id: Option<RunId>,
    },
    /// Every critical event at or below `seq` has been delivered.
    Ack { seq: u64 },
    /// Answer to a `permission.request`.
    Permission {
        request_id: RequestId,
        decision: PermissionDecision,
    },
    /// Answered with `pong`. (A struct variant so that unknown fields are refused here too.)
    Ping {},
}

/// Server → client control frames (everything that is not a sequenced event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlFrame {
    /// First frame on every connection.
    Hello {
        session_id: SessionId,
        status: SessionStatus,
        last_seq: u64,
    },
    Pong,
    /// A frame the server could not use (`code` = `bad_frame`, …). Changes no session state.
    Error {
        code: String,
        message: String,
    },
}

/// Anything the server sends a client: a sequenced event or a control frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerFrame {
    Event(EventEnvelope),
    Control(ControlFrame),
}
