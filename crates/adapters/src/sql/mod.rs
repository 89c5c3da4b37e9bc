//! Shared SQL plumbing for the SQLite and Postgres adapters: connection pools, the embedded
//! migrations with their "newer schema" refusal, and the mapping of driver errors to the shared
//! error classes. No sqlx type leaves this crate.

pub mod errors;
pub mod migrations;
pub mod pool;
pub mod scratch;

pub use errors::{classify, to_port};
pub use migrations::{migrate_postgres, migrate_sqlite, MigrationReport};
pub use pool::{connect_postgres, connect_sqlite, Db};
