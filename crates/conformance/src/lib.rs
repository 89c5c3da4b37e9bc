//! Conformance for Switchboard's ports: contract cases per port run against every implementation,
//! fault catalogs, `Faulty<P>` wrappers, the disruption suite and the registry tripwire.
//!
//! # For adapter authors
//!
//! Implement a port, then run its whole contract suite on your type. Each port module has a
//! `Fixture` (your implementation, fresh for every case) and a `check` that runs every case and
//! returns a [`Report`]. With the in-memory ledger standing in for yours:
//!
//! ```
//! use std::sync::Arc;
//! use switchboard_conformance::ports::run_ledger;
//! use switchboard_fakes::run_ledger::InMemoryRunLedger;
//!
//! let report = run_ledger::check("my_ledger", || async {
//!     // Connect to a fresh database or schema here; every case gets its own fixture.
//!     Ok(run_ledger::Fixture { ledger: Arc::new(InMemoryRunLedger::new()), scratch: None })
//! });
//! report.assert_all_passed();
//! assert!(report.passed() >= 5);
//! ```
//!
//! To see your adapter in `cargo xtask conformance`, register it in the port module's
//! `implementations()`; the fault catalog and `Faulty` wrapper then apply to it as well.

pub mod disruption;
pub mod fault;
pub mod harness;
pub mod lifecycle;
pub mod ports;
pub mod registry;
pub mod tripwire;

pub use fault::{CatalogEntry, Fault, FaultPlan, Faulty};
pub use harness::{Case, CaseResult, ImplKind, Implementation, Outcome, Report, Trial};
pub use registry::{suite, PortSuite, WAIVERS};
