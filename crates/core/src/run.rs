//! Run records: what the run ledger keeps of every finished run.

use crate::ids::{ApiKeyId, OrgId, RunId, SessionId, UserId};
use crate::model::ModelRef;
use crate::protocol::events::{ErrorBody, EventEnvelope, TerminalStatus, Usage};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// The lifecycle of a run inside the session machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Dispatched,
    Running,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
}

impl RunState {
    pub fn is_terminal(self) -> bool {
        self.terminal().is_some()
    }

    /// The terminal status, if this state is one.
    pub fn terminal(self) -> Option<TerminalStatus> {
        match self {
            RunState::Completed => Some(TerminalStatus::Completed),
            RunState::Failed => Some(TerminalStatus::Failed),
            RunState::Cancelled => Some(TerminalStatus::Cancelled),
            RunState::TimedOut => Some(TerminalStatus::TimedOut),
            _ => None,
        }
    }
}

impl From<TerminalStatus> for RunState {
    fn from(s: TerminalStatus) -> Self {
        match s {
            TerminalStatus::Completed => RunState::Completed,
            TerminalStatus::Failed => RunState::Failed,
            TerminalStatus::Cancelled => RunState::Cancelled,
            TerminalStatus::TimedOut => RunState::TimedOut,
        }
    }
}

/// An attributed record of one finished run, with its events in seq order.
///
/// Wire shape (PROTOCOL.md): `{"run_id", "session_id", "org_id", "user_id", "api_key_id",
/// "model", "provider", "status", "queued_at", "started_at", "ended_at", "usage", "cost_micros",
/// "error"?, "event_count"}` plus `"events"` on `GET /v1/runs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: RunId,
    pub session_id: SessionId,
    pub org_id: OrgId,
    pub user_id: UserId,
    pub api_key_id: Option<ApiKeyId>,
    pub model: ModelRef,
    pub provider: String,
    pub status: TerminalStatus,
    pub queued_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub ended_at: Timestamp,
    pub usage: Usage,
    pub cost_micros: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    pub event_count: u64,
    /// Present on `GET /v1/runs/{id}`; absent in listings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventEnvelope>,
}

impl RunRecord {
    /// The record without its events (the list form of `GET /v1/runs`).
    pub fn summary(&self) -> RunRecord {
        RunRecord {
            events: Vec::new(),
            ..self.clone()
        }
    }
}

/// Prices of one model, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input_per_mtok_micros: u64,
    pub output_per_mtok_micros: u64,
}

impl Price {
    /// Cost of `usage` at this price, in micro-dollars, rounded up so a used run never costs 0.
    pub fn cost_micros(&self, usage: Usage) -> u64 {
        let raw = u128::from(usage.input_tokens) * u128::from(self.input_per_mtok_micros)
            + u128::from(usage.output_tokens) * u128::from(self.output_per_mtok_micros);
        raw.div_ceil(1_000_000).min(u128::from(u64::MAX)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_and_scales() {
        let p = Price {
            input_per_mtok_micros: 3_000_000,
            output_per_mtok_micros: 15_000_000,
        };
        assert_eq!(
            p.cost_micros(Usage {
                input_tokens: 1_000_000,
                output_tokens: 0
            }),
            3_000_000
        );
        assert_eq!(
            p.cost_micros(Usage {
                input_tokens: 1,
                output_tokens: 0
            }),
            3
        );
        assert_eq!(
            p.cost_micros(Usage {
                input_tokens: 0,
                output_tokens: 0
            }),
            0
        );
        let cheap = Price {
            input_per_mtok_micros: 1,
            output_per_mtok_micros: 1,
        };
        assert_eq!(
            cheap.cost_micros(Usage {
                input_tokens: 1,
                output_tokens: 1
            }),
            1
        );
    }
}
