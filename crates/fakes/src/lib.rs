//! In-memory fakes of every Switchboard port, honest enough to pass the same contract cases as the
//! real adapters: tenant isolation, idempotency and error classes included.
//!
//! Architecture Invariant: fakes do no IO and read no wall clock; time comes from the `Clock` port
//! (usually an [`InMemoryClock`]).

pub mod agent_driver;
pub mod artifact_store;
pub mod audit_log;
pub mod authenticator;
pub mod clock;
pub mod event_bus;
pub mod identity_store;
pub mod minter;
pub mod model_gateway;
pub mod price_book;
pub mod repo_host;
pub mod run_ledger;
pub mod sandbox_provider;
pub mod secret_vault;
pub mod session_host;
pub mod session_store;

pub use clock::InMemoryClock;
