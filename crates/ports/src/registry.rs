//! The registry of ports: an exhaustive `PortId`, the plane each belongs to, and what it does.
//!
//! Adding a port means adding a `PortId` variant; every `match` over it (the conformance registry,
//! the tripwire, the docs generator) then fails to compile until the new port is wired in.

use serde::{Deserialize, Serialize};

/// The five planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plane {
    Identity,
    Session,
    Sandbox,
    Agent,
    Record,
}

impl Plane {
    pub const ALL: [Plane; 5] = [
        Plane::Identity,
        Plane::Session,
        Plane::Sandbox,
        Plane::Agent,
        Plane::Record,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Plane::Identity => "identity",
            Plane::Session => "session",
            Plane::Sandbox => "sandbox",
            Plane::Agent => "agent",
            Plane::Record => "record",
        }
    }
}

/// Every port. Exhaustive by design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortId {
    IdentityStore,
    Authenticator,
    SecretVault,
    SessionStore,
    SessionHost,
    Clock,
    SandboxProvider,
    RepoHost,
    ArtifactStore,
    AgentDriver,
    ModelGateway,
    PriceBook,
    RunLedger,
    EventBus,
    AuditLog,
}

/// A port's entry in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo {
    pub id: PortId,
    /// snake_case name used in trial names and `cargo xtask conformance --port`.
    pub name: &'static str,
    /// The trait's name.
    pub trait_name: &'static str,
    pub plane: Plane,
    pub description: &'static str,
}

impl PortId {
    pub const ALL: [PortId; 15] = [
        PortId::IdentityStore,
        PortId::Authenticator,
        PortId::SecretVault,
        PortId::SessionStore,
        PortId::SessionHost,
        PortId::Clock,
        PortId::SandboxProvider,
        PortId::RepoHost,
        PortId::ArtifactStore,
        PortId::AgentDriver,
        PortId::ModelGateway,
        PortId::PriceBook,
        PortId::RunLedger,
        PortId::EventBus,
        PortId::AuditLog,
    ];

    pub fn info(self) -> PortInfo {
        use Plane::*;
        let (name, trait_name, plane, description) = match self {
            PortId::IdentityStore => (
                "identity_store",
                "IdentityStore",
                Identity,
                "orgs, users, memberships, API keys (hashed), login sessions",
            ),
            PortId::Authenticator => (
                "authenticator",
                "Authenticator",
                Identity,
                "credential → principal; unknown, revoked, expired → unauthorized",
            ),
            PortId::SecretVault => (
                "secret_vault",
                "SecretVault",
                Identity,
                "BYOK provider keys sealed per tenant; never returned in clear",
            ),
            PortId::SessionStore => (
                "session_store",
                "SessionStore",
                Session,
                "a session actor's event log, snapshot and ledger outbox",
            ),
            PortId::SessionHost => (
                "session_host",
                "SessionHost",
                Session,
                "key → live actor: single writer, hibernation, timers, sockets",
            ),
            PortId::Clock => (
                "clock",
                "Clock",
                Session,
                "now() and timers, so every timeout is testable with virtual time",
            ),
            PortId::SandboxProvider => (
                "sandbox_provider",
                "SandboxProvider",
                Sandbox,
                "create / status / terminate / snapshot dev boxes",
            ),
            PortId::RepoHost => (
                "repo_host",
                "RepoHost",
                Sandbox,
                "short-lived clone tokens and file listings",
            ),
            PortId::ArtifactStore => (
                "artifact_store",
                "ArtifactStore",
                Sandbox,
                "blobs a run produces: logs, diffs, files",
            ),
            PortId::AgentDriver => (
                "agent_driver",
                "AgentDriver",
                Agent,
                "inside the bridge: start, prompt, stream, cancel a coding agent",
            ),
            PortId::ModelGateway => (
                "model_gateway",
                "ModelGateway",
                Agent,
                "model ref + tenant credential → endpoint, key and headers",
            ),
            PortId::PriceBook => (
                "price_book",
                "PriceBook",
                Agent,
                "usage → cost in micro-dollars",
            ),
            PortId::RunLedger => (
                "run_ledger",
                "RunLedger",
                Record,
                "durable, idempotent, tenant-scoped run history",
            ),
            PortId::EventBus => (
                "event_bus",
                "EventBus",
                Record,
                "org-wide stream of session status changes",
            ),
            PortId::AuditLog => ("audit_log", "AuditLog", Record, "security-relevant actions"),
        };
        PortInfo {
            id: self,
            name,
            trait_name,
            plane,
            description,
        }
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn plane(self) -> Plane {
        self.info().plane
    }

    /// Looks a port up by its snake_case name.
    pub fn from_name(name: &str) -> Option<PortId> {
        PortId::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl std::fmt::Display for PortId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn fifteen_ports_over_five_planes_with_unique_names() {
        assert_eq!(PortId::ALL.len(), 15);
        let names: HashSet<_> = PortId::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), 15);
        for plane in Plane::ALL {
            assert!(
                PortId::ALL.iter().any(|p| p.plane() == plane),
                "{plane:?} has no port"
            );
        }
        for p in PortId::ALL {
            assert_eq!(PortId::from_name(p.name()), Some(p));
        }
    }
}
