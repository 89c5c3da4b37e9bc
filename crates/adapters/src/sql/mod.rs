//! Shared SQL plumbing for the SQLite and Postgres adapters: connection pools, the embedded
//! migrations with their "newer schema" refusal, and the mapping of driver errors to the shared
//! error classes. No sqlx type leaves this crate.

pub mod audit_log;
pub mod errors;
pub mod event_bus;
pub mod identity;
pub mod migrations;
pub mod pool;
pub mod run_ledger;
pub mod scratch;
pub mod session_store;
pub mod vault;
pub mod vault_keys;

pub use audit_log::{PgAuditLog, SqliteAuditLog};
pub use errors::{classify, to_port};
pub use event_bus::PgEventBus;
pub use identity::{PgIdentityStore, SqliteIdentityStore};
pub use migrations::{migrate_postgres, migrate_sqlite, MigrationReport};
pub use pool::{connect_postgres, connect_sqlite, Db};
pub use run_ledger::{PgRunLedger, SqliteRunLedger};
pub use vault::{PgSecretVault, SqliteSecretVault};
pub use vault_keys::{MasterKeyError, MasterKeys};
