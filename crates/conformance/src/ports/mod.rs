//! One module per port: its fixture, contract cases, implementations, fault catalog and `Faulty`.

pub mod agent_driver;
pub mod artifact_store;
pub mod audit_log;
pub mod authenticator;
pub mod clock;
pub mod event_bus;
pub mod identity_store;
pub mod model_gateway;
pub mod price_book;
pub mod repo_host;
pub mod run_ledger;
pub mod sandbox_provider;
pub mod secret_vault;
pub mod session_host;
pub mod session_store;
