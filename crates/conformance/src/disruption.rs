//! The disruption suite: every catalogued fault of every port, injected into a realistic flow.
//!
//! Ports used inside the session lifecycle (store, host, clock, sandbox provider, model gateway,
//! price book, ledger, bus, audit) are disrupted in `lifecycle.rs`, through the session runtime;
//! the others (identity, vault, repo host, artifacts, agent driver) in their own port modules.

use crate::harness::Outcome;
use switchboard_ports::PortId;

/// One disruption case: a catalogued fault of one port, injected into a flow.
pub struct DisruptionCase {
    pub port: PortId,
    /// The catalog entry's `fault@op` name.
    pub entry: String,
    pub run: Box<dyn FnOnce() -> Outcome + Send>,
}

/// Every disruption case.
pub fn cases() -> Vec<DisruptionCase> {
    use crate::ports::*;
    let mut out = Vec::new();
    out.extend(identity_store::disruptions());
    out.extend(authenticator::disruptions());
    out.extend(secret_vault::disruptions());
    out.extend(session_store::disruptions());
    out.extend(clock::disruptions());
    out.extend(sandbox_provider::disruptions());
    out.extend(repo_host::disruptions());
    out.extend(artifact_store::disruptions());
    out.extend(agent_driver::disruptions());
    out.extend(model_gateway::disruptions());
    out.extend(price_book::disruptions());
    out.extend(run_ledger::disruptions());
    out.extend(event_bus::disruptions());
    out.extend(audit_log::disruptions());
    out.extend(session_host::disruptions());
    out.extend(crate::lifecycle::cases());
    out
}
