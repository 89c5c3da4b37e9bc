//! The registry: every port's suite (cases, implementations, fault catalog) and the `WAIVERS` table.
//!
//! `suite(PortId)` is an exhaustive match, so a new port does not compile until it is registered.

use crate::fault::CatalogEntry;
use crate::harness::{trials, Case, ImplKind, Implementation, Trial};
use switchboard_ports::PortId;

/// Everything the runner and the tripwire know about one port.
pub struct PortSuite {
    pub port: PortId,
    /// Names of the contract cases.
    pub cases: Vec<&'static str>,
    /// Registered implementations: name and kind.
    pub implementations: Vec<(&'static str, ImplKind)>,
    pub catalog: &'static [CatalogEntry],
    /// One trial per case per implementation.
    pub trials: Vec<Trial>,
}

impl PortSuite {
    /// Builds a suite from typed cases and implementations.
    pub fn new<F: Send + 'static>(
        port: PortId,
        cases: Vec<Case<F>>,
        implementations: Vec<Implementation<F>>,
        catalog: &'static [CatalogEntry],
    ) -> Self {
        let trials = implementations
            .iter()
            .flat_map(|i| trials(port, i, &cases))
            .collect();
        PortSuite {
            port,
            cases: cases.iter().map(|c| c.name).collect(),
            implementations: implementations.iter().map(|i| (i.name, i.kind)).collect(),
            catalog,
            trials,
        }
    }
}

/// The suite of one port.
pub fn suite(port: PortId) -> PortSuite {
    use crate::ports::*;
    match port {
        PortId::IdentityStore => identity_store::suite(),
        PortId::Authenticator => authenticator::suite(),
        PortId::SecretVault => secret_vault::suite(),
        PortId::SessionStore => session_store::suite(),
        PortId::SessionHost => session_host::suite(),
        PortId::Clock => clock::suite(),
        PortId::SandboxProvider => sandbox_provider::suite(),
        PortId::RepoHost => repo_host::suite(),
        PortId::ArtifactStore => artifact_store::suite(),
        PortId::AgentDriver => agent_driver::suite(),
        PortId::ModelGateway => model_gateway::suite(),
        PortId::PriceBook => price_book::suite(),
        PortId::RunLedger => run_ledger::suite(),
        PortId::EventBus => event_bus::suite(),
        PortId::AuditLog => audit_log::suite(),
    }
}

/// Every port's suite, in registry order.
pub fn all_suites() -> Vec<PortSuite> {
    PortId::ALL.into_iter().map(suite).collect()
}

/// Which part of a port's bundle a waiver excuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// No real adapter yet.
    RealAdapter,
}

/// A visible, temporary exception to the tripwire, with the issue that removes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Waiver {
    pub port: PortId,
    pub part: Part,
    pub reason: &'static str,
    pub issue: u32,
}

/// Every exception to "each port ships a full bundle". This table must shrink to empty.
pub const WAIVERS: &[Waiver] = &[];

/// Renders the waivers as a table, printed on every conformance run.
pub fn waivers_table(waivers: &[Waiver]) -> String {
    if waivers.is_empty() {
        return "WAIVERS: none\n".to_string();
    }
    let mut out = format!("WAIVERS ({}):\n", waivers.len());
    for w in waivers {
        out.push_str(&format!(
            "  {:<18} {:<13} issue #{:<3} {}\n",
            w.port.name(),
            format!("{:?}", w.part),
            w.issue,
            w.reason
        ));
    }
    out
}
