//! Real adapters for Switchboard's ports, each behind a cargo feature named after its technology.
//!
//! Architecture Invariant: no driver type (sqlx, reqwest, tungstenite…) appears in a port
//! signature; each adapter maps its driver's errors to the port's error enum at the seam.

#[cfg(feature = "acp")]
pub mod acp_driver;
#[cfg(feature = "broadcast-bus")]
pub mod broadcast_bus;
#[cfg(feature = "direct-gateway")]
pub mod direct_gateway;
#[cfg(feature = "fs-artifacts")]
pub mod fs_artifacts;
#[cfg(feature = "git-repo-host")]
pub mod git_repo_host;
#[cfg(feature = "jsonl-audit")]
pub mod jsonl_audit;
#[cfg(feature = "tokio-host")]
pub mod local_host;
#[cfg(feature = "local-sandbox")]
pub mod local_sandbox;
#[cfg(feature = "sql")]
pub mod password;
#[cfg(feature = "price-table")]
pub mod price_table;
#[cfg(feature = "sql")]
pub mod sql;
pub mod store_auth;
#[cfg(feature = "system-clock")]
pub mod system_clock;
