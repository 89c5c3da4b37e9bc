//! Wiring: builds an [`App`] and its session host from a set of ports.
//!
//! `InMemoryStack` is every port as an in-memory fake under the real tokio session host, on a
//! virtual clock. It runs the walking skeleton, the `demo` command, and anything else that wants the
//! whole lifecycle without IO. The database-backed embedded default arrives with the persistence
//! issue; it is wired the same way.

use crate::app::App;
use std::sync::Arc;
use switchboard_adapters::local_host::{LocalSessionHost, OsMinter};
use switchboard_adapters::store_auth::StoreAuthenticator;
use switchboard_core::session::SessionConfig;
use switchboard_fakes::audit_log::InMemoryAuditLog;
use switchboard_fakes::event_bus::InMemoryEventBus;
use switchboard_fakes::identity_store::InMemoryIdentityStore;
use switchboard_fakes::model_gateway::InMemoryModelGateway;
use switchboard_fakes::price_book::InMemoryPriceBook;
use switchboard_fakes::run_ledger::InMemoryRunLedger;
use switchboard_fakes::sandbox_provider::InMemorySandboxProvider;
use switchboard_fakes::secret_vault::InMemorySecretVault;
use switchboard_fakes::session_store::InMemorySessionStore;
use switchboard_fakes::InMemoryClock;
use switchboard_ports::runtime::SessionPorts;
use switchboard_ports::PriceBook;

/// Every port in memory, the real tokio host, a virtual clock.
pub struct InMemoryStack {
    pub app: App,
    pub clock: InMemoryClock,
    pub host: Arc<LocalSessionHost>,
    pub sandboxes: Arc<InMemorySandboxProvider>,
    pub ledger: Arc<InMemoryRunLedger>,
    pub store: Arc<InMemorySessionStore>,
    pub bus: Arc<InMemoryEventBus>,
    pub audit: Arc<InMemoryAuditLog>,
}

impl InMemoryStack {
    /// Builds the stack with `config` and a price book (use `InMemoryPriceBook::new()` for none).
    pub fn new(config: SessionConfig, prices: Arc<dyn PriceBook>) -> Self {
        let clock = InMemoryClock::new();
        let clock_port = Arc::new(clock.clone());
        let identity = Arc::new(InMemoryIdentityStore::new());
        let vault = Arc::new(InMemorySecretVault::new(clock_port.clone()));
        let sandboxes = Arc::new(InMemorySandboxProvider::new());
        let ledger = Arc::new(InMemoryRunLedger::new());
        let store = Arc::new(InMemorySessionStore::new());
        let bus = Arc::new(InMemoryEventBus::new());
        let audit = Arc::new(InMemoryAuditLog::new());
        let permission_policy = config.permission_policy.clone();
        let ports = SessionPorts {
            store: store.clone(),
            sandboxes: sandboxes.clone(),
            gateway: Arc::new(InMemoryModelGateway::new(vault.clone())),
            prices,
            ledger: ledger.clone(),
            bus: bus.clone(),
            audit: audit.clone(),
            clock: clock_port.clone(),
            minter: Arc::new(OsMinter::new()),
            callback_base: "ws://127.0.0.1:0".to_string(),
            config,
        };
        let host = Arc::new(LocalSessionHost::new(ports));
        let app = App {
            identity: identity.clone(),
            authenticator: Arc::new(StoreAuthenticator::new(identity, clock_port.clone())),
            vault,
            host: host.clone(),
            ledger: ledger.clone(),
            audit: audit.clone(),
            clock: clock_port,
            permission_policy,
            repo_host: None,
        };
        InMemoryStack {
            app,
            clock,
            host,
            sandboxes,
            ledger,
            store,
            bus,
            audit,
        }
    }

    /// The default configuration and an empty price book.
    pub fn with_defaults() -> Self {
        Self::new(SessionConfig::default(), Arc::new(InMemoryPriceBook::new()))
    }
}
