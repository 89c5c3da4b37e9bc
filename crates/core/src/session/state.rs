//! The durable state of a session machine: what goes into its snapshot, and how it is read back.
//!
//! Everything in [`State`] is persisted (as JSON, opaque to stores) with every commit that changes
//! it. Fields marked `#[serde(skip)]` are rebuilt on restore: the events of the run in flight come
//! from the store's log, the rest starts afresh at the restore time.

use crate::crypto::TokenHash;
use crate::ids::{ClientMsgId, ConnId, OrgId, RequestId, RunId, SandboxId, SessionId};
use crate::model::ModelRef;
use crate::protocol::events::{Event, EventEnvelope, SandboxStatus, SessionStatus};
use crate::protocol::sandbox::{ServerToSandbox, Turn};
use crate::protocol::spawn::RepoSpec;
use crate::run::{Price, RunState};
use crate::session::types::PermissionPolicy;
use crate::tenancy::Attribution;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Layout version of the snapshot. Bump it (and teach `restore` the old layout) on any change
/// that an older snapshot could not be read back into.
pub(super) const SNAPSHOT_VERSION: u32 = 1;

/// How many `client_msg_id`s a session remembers for prompt de-duplication.
pub(super) const REMEMBERED_CLIENT_MSG_IDS: usize = 1000;

/// The session's own lifecycle (`SessionStatus` is what clients see of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Phase {
    /// Built, not started yet.
    Created,
    /// The first sandbox is being spawned.
    Provisioning,
    /// Nothing is running (runs may be queued while a sandbox is on its way).
    Ready,
    /// A run has started.
    Running,
    /// `Close` is being carried out (transient within one `handle`).
    Closing,
    /// Closed: no more prompts. Terminal.
    Closed,
    /// The store failed: fail closed. Terminal.
    Failed,
}

impl Phase {
    /// What clients see.
    pub(super) fn visible(self) -> SessionStatus {
        match self {
            Phase::Created | Phase::Provisioning => SessionStatus::Provisioning,
            Phase::Ready => SessionStatus::Ready,
            Phase::Running => SessionStatus::Running,
            Phase::Closing | Phase::Closed => SessionStatus::Closed,
            Phase::Failed => SessionStatus::Failed,
        }
    }

    /// Whether the session still takes prompts and runs them.
    pub(super) fn accepts_work(self) -> bool {
        !matches!(self, Phase::Closing | Phase::Closed | Phase::Failed)
    }
}

/// One prompt's run, from queued to its terminal transition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Run {
    pub run_id: RunId,
    pub by: Attribution,
    pub text: String,
    pub client_msg_id: Option<ClientMsgId>,
    pub queued_at: Timestamp,
    /// Seq of this run's `run.queued` event: its first event.
    pub queued_seq: u64,
    /// The position announced in `run.queued`.
    pub queued_position: u32,
    pub state: RunState,
    pub dispatched_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub price: Option<Price>,
    pub cancel_requested_at: Option<Timestamp>,
    /// Every event of this run so far, in seq order (the run record's `events`).
    #[serde(skip)]
    pub events: Vec<EventEnvelope>,
    /// The concatenated `message.delta` texts: the assistant's turn of the conversation.
    #[serde(skip)]
    pub reply: String,
    /// Last sign of life from the sandbox while this run was in flight.
    #[serde(skip)]
    pub last_life: Timestamp,
}

impl Run {
    /// The `run.queued` event this run was announced with, rebuilt from its metadata.
    pub(super) fn queued_event(&self) -> EventEnvelope {
        EventEnvelope {
            seq: self.queued_seq,
            run_id: Some(self.run_id.clone()),
            at: self.queued_at,
            critical: false,
            event: Event::RunQueued {
                position: self.queued_position,
                text: self.text.clone(),
                client_msg_id: self.client_msg_id.clone(),
            },
        }
    }

    /// Whether the run has been handed to a sandbox (dispatched or running).
    pub(super) fn is_in_flight(&self) -> bool {
        matches!(self.state, RunState::Dispatched | RunState::Running)
    }
}

/// The machine's link to its sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(super) enum Link {
    /// No sandbox: none asked for yet, or the last one ended.
    Absent,
    /// A spawn effect went out at `since`; waiting for the sandbox to dial back.
    Spawning { since: Timestamp },
    /// The sandbox is connected on `conn`.
    Connected { conn: ConnId },
    /// The sandbox's socket dropped at `since`; it may reconnect with the same token.
    Reconnecting { since: Timestamp },
}

/// Everything about the current sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SandboxSlot {
    /// Number of the latest spawn attempt (0: none yet). Answers for other numbers are stale.
    pub spawn: u32,
    /// Attempts used in the current spawn cycle.
    pub attempts: u32,
    /// SHA-256 of the current spawn's token; `None` when no sandbox may connect.
    pub token_hash: Option<TokenHash>,
    pub sandbox_id: Option<SandboxId>,
    pub link: Link,
    /// Highest message number applied from the current spawn.
    pub last_n: u64,
    /// The conversation must be restored to this spawn before its first run.
    pub restore_pending: bool,
    /// Status last announced to clients.
    pub status: SandboxStatus,
    /// Frames for the sandbox held while it reconnects.
    pub outgoing: Vec<ServerToSandbox>,
}

/// A permission request waiting for a client's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PendingAsk {
    pub request_id: RequestId,
    pub run_id: RunId,
    pub deadline: Timestamp,
}

/// A remembered `client_msg_id` and the run it queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RememberedPrompt {
    pub client_msg_id: ClientMsgId,
    pub run_id: RunId,
}

/// The persisted state of one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    pub version: u32,
    pub org_id: OrgId,
    pub session_id: SessionId,
    pub model: ModelRef,
    pub agent: String,
    pub repo: Option<RepoSpec>,
    pub created_by: Attribution,
    pub created_at: Timestamp,
    pub phase: Phase,
    /// Session status last announced with a `session.status` event.
    pub announced_status: Option<SessionStatus>,
    /// Seq the next event gets (the first is 1).
    pub next_seq: u64,
    /// Runs waiting, FIFO.
    pub queue: VecDeque<Run>,
    /// The run dispatched to the sandbox, if any.
    pub in_flight: Option<Run>,
    /// Critical events no client has ACKed yet, in seq order.
    pub unacked: Vec<EventEnvelope>,
    pub sandbox: SandboxSlot,
    /// The latest `client_msg_id`s, oldest first.
    pub recent_prompts: VecDeque<RememberedPrompt>,
    /// The conversation so far, for a replacement sandbox.
    pub conversation: Vec<Turn>,
    /// Seq of the `run.queued` of the first run in `conversation`.
    pub conversation_from_seq: Option<u64>,
    pub permission_asks: Vec<PendingAsk>,
    /// The session's own permission policy (`None`: the server's). Absent in snapshots written
    /// before sessions could carry one, which read back as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<PermissionPolicy>,
}

/// The layout version of a snapshot (read before the rest, so that another layout is named as
/// such rather than failing to decode).
#[derive(Deserialize)]
pub(super) struct VersionPeek {
    #[serde(default)]
    pub version: Option<serde_json::Value>,
}

/// The part of a snapshot that names the run in flight (read without decoding the rest).
#[derive(Deserialize)]
pub(super) struct InFlightPeek {
    pub in_flight: Option<RunPeek>,
}

#[derive(Deserialize)]
pub(super) struct RunPeek {
    pub run_id: RunId,
    pub queued_seq: u64,
}
