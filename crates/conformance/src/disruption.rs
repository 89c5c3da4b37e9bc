//! The disruption suite: every catalogued fault of every port, injected into a realistic flow.
//!
//! Ports used inside the session lifecycle (store, host, clock, sandbox provider, model gateway,
//! price book, ledger, bus, audit) are disrupted in `lifecycle.rs`, through the session runtime;
//! the others (identity, vault, repo host, artifacts, agent driver) in their own port modules.

use crate::fault::CatalogEntry;
use crate::harness::{self, BoxFut, CaseResult, Outcome, CASE_TIMEOUT};
use switchboard_ports::PortId;

/// One disruption case: a catalogued fault of one port, injected into a flow.
pub struct DisruptionCase {
    pub port: PortId,
    /// The catalog entry's `fault@op` name.
    pub entry: String,
    pub run: Box<dyn FnOnce() -> Outcome + Send>,
}

/// One disruption case per catalog entry, each running `flow(entry)` on its own runtime with the
/// case time limit; a panic or a hang is a failure.
pub fn per_entry(
    port: PortId,
    catalog: &[CatalogEntry],
    flow: fn(CatalogEntry) -> BoxFut<'static, CaseResult>,
) -> Vec<DisruptionCase> {
    catalog
        .iter()
        .map(|&entry| DisruptionCase {
            port,
            entry: entry.name(),
            run: Box::new(move || {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    harness::block_on(async move {
                        tokio::time::timeout(CASE_TIMEOUT, flow(entry)).await
                    })
                }));
                match ran {
                    Ok(Ok(Ok(()))) => Outcome::Passed,
                    Ok(Ok(Err(message))) => Outcome::Failed(message),
                    Ok(Err(_)) => Outcome::Failed(format!(
                        "disruption did not finish within {CASE_TIMEOUT:?}"
                    )),
                    Err(panic) => Outcome::Failed(harness::panic_message(&panic)),
                }
            }),
        })
        .collect()
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
