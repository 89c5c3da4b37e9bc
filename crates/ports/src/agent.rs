//! Agent plane: the coding agent inside the sandbox (`AgentDriver`), how it reaches its model
//! (`ModelGateway`), and what that costs (`PriceBook`).

use async_trait::async_trait;
use futures::channel::mpsc;
use serde::{Deserialize, Serialize};
use switchboard_core::protocol::{
    ErrorBody, Event, GatewayConfig, PermissionDecision, TerminalStatus, Turn, Usage,
};
use switchboard_core::run::Price;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{ModelRef, RequestId, RunId};

crate::port_error!(
    /// Errors of [`AgentDriver`].
    AgentDriverError,
    "agent driver"
);
crate::port_error!(
    /// Errors of [`ModelGateway`].
    ModelGatewayError,
    "model gateway"
);
crate::port_error!(
    /// Errors of [`PriceBook`].
    PriceBookError,
    "price book"
);

/// How an agent session starts: where it works and which model it talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStart {
    /// Absolute path of the workspace (the agent's cwd).
    pub workspace: String,
    pub model: ModelRef,
    pub gateway: GatewayConfig,
}

/// An agent-side session id (ACP's `sessionId`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AgentSessionId(pub String);

/// Something the agent did during a turn.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentUpdate {
    /// One of the agent event types: message.delta, thought.delta, tool_call, tool_result, plan.
    Event(Event),
    /// The agent asks permission; answer with [`AgentDriver::decide`]. The turn waits meanwhile.
    Permission {
        request_id: RequestId,
        tool: String,
        input: serde_json::Value,
    },
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnOutcome {
    pub status: TerminalStatus,
    pub stop_reason: Option<String>,
    pub usage: Usage,
    pub error: Option<ErrorBody>,
}

/// How a replacement agent got the earlier conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    /// The agent loaded or resumed its own session.
    Loaded,
    /// The turns were given to the agent as injected history.
    Injected,
}

/// Drives a coding agent (inside the bridge): start a session, prompt it, stream its updates.
///
/// # Contract
/// - `prompt_streams_then_completes`: a prompt yields its updates on the channel in order, then a
///   `Completed` outcome with usage.
/// - `turns_keep_context`: a second prompt in the same agent session sees the first turn.
/// - `cancel_ends_turn`: `cancel` during a turn ends it `Cancelled` promptly.
/// - `permission_waits_for_decision`: a permission update holds the turn until `decide` answers.
/// - `restore_gives_history`: after `restore`, the agent can answer about the restored turns.
/// - `unknown_session_not_found`: calls naming an unknown agent session are `NotFound`.
#[async_trait]
pub trait AgentDriver: Send + Sync {
    async fn start(&self, start: &AgentStart) -> Result<AgentSessionId, AgentDriverError>;
    async fn prompt(
        &self,
        session: &AgentSessionId,
        run_id: &RunId,
        text: &str,
        updates: mpsc::UnboundedSender<AgentUpdate>,
    ) -> Result<TurnOutcome, AgentDriverError>;
    async fn cancel(&self, session: &AgentSessionId) -> Result<(), AgentDriverError>;
    async fn decide(
        &self,
        session: &AgentSessionId,
        request_id: &RequestId,
        decision: PermissionDecision,
    ) -> Result<(), AgentDriverError>;
    async fn restore(
        &self,
        session: &AgentSessionId,
        turns: &[Turn],
    ) -> Result<RestoreMode, AgentDriverError>;
    async fn stop(&self, session: &AgentSessionId) -> Result<(), AgentDriverError>;
}

/// Resolves where a run's agent sends model requests, with which key and headers.
///
/// `provider = model.split('/')[0]`; there is no default model and no default provider.
///
/// # Contract
/// - `resolves_tenant_key`: a model of a provider for which the tenant stored a key resolves to a
///   gateway carrying exactly that key.
/// - `missing_key_not_found`: a provider with no stored key is `NotFound`, naming the provider.
/// - `unknown_provider_invalid`: a provider the gateway cannot route is `Invalid`.
/// - `tenant_isolation`: one tenant's key never resolves for another tenant.
#[async_trait]
pub trait ModelGateway: Send + Sync {
    async fn resolve(
        &self,
        tenant: &TenantContext,
        run: &RunId,
        model: &ModelRef,
    ) -> Result<GatewayConfig, ModelGatewayError>;
}

/// The providers a direct (bring-your-own-key) [`ModelGateway`] routes out of the box, with their
/// OpenAI-compatible or provider-native API base URLs. One table for the in-memory gateway and the
/// real direct gateway; deployments add their own providers on top.
pub const fn default_providers() -> &'static [(&'static str, &'static str)] {
    &[
        ("openai", "https://api.openai.com/v1"),
        ("anthropic", "https://api.anthropic.com/v1"),
        ("openrouter", "https://openrouter.ai/api/v1"),
        (
            "google",
            "https://generativelanguage.googleapis.com/v1beta/openai",
        ),
        ("groq", "https://api.groq.com/openai/v1"),
        ("deepseek", "https://api.deepseek.com/v1"),
        ("mistral", "https://api.mistral.ai/v1"),
        ("xai", "https://api.x.ai/v1"),
    ]
}

/// Prices of models, for `execution_complete.cost_micros`.
///
/// # Contract
/// - `known_model_priced`: a listed model has a price; cost of its usage is consistent with it.
/// - `unknown_model_none`: an unlisted model is `Ok(None)`, never an invented price.
/// - `price_is_per_provider`: the same model name under two providers may differ.
#[async_trait]
pub trait PriceBook: Send + Sync {
    async fn price(&self, model: &ModelRef) -> Result<Option<Price>, PriceBookError>;
}
