//! The fifteen ports of Switchboard across five planes: the traits every adapter implements, their
//! error enums with one shared classification, and the registry that names them.
//!
//! Architecture Invariant: this crate names no driver type (no sqlx, reqwest, tokio or tungstenite
//! type appears in a signature). Adapters map driver errors at the seam.
//!
//! Architecture Invariant: every port is `#[async_trait]` and object safe; the server holds each as
//! `Arc<dyn Port>`.

pub mod error;
pub mod registry;
pub mod runtime;
pub mod secret;

pub mod agent;
pub mod agent_script;
pub mod identity;
pub mod record;
pub mod sandbox;
pub mod session;

pub use error::{Classify, FromClass};
pub use registry::{Plane, PortId, PortInfo};
pub use secret::SecretString;

pub use agent::{
    AgentDriver, AgentDriverError, ModelGateway, ModelGatewayError, PriceBook, PriceBookError,
};
pub use identity::{
    Authenticator, AuthenticatorError, IdentityStore, IdentityStoreError, SecretVault,
    SecretVaultError,
};
pub use record::{AuditLog, AuditLogError, EventBus, EventBusError, RunLedger, RunLedgerError};
pub use sandbox::{
    ArtifactStore, ArtifactStoreError, RepoHost, RepoHostError, SandboxProvider,
    SandboxProviderError,
};
pub use session::{
    Clock, ClockError, SessionHost, SessionHostError, SessionStore, SessionStoreError,
};

pub use switchboard_core as core;
