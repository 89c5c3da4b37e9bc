//! Conformance for Switchboard's ports: contract cases per port run against every implementation,
//! fault catalogs, `Faulty<P>` wrappers, the disruption suite and the registry tripwire.
//!
//! Adapter authors run a port's suite on their own type in a few lines; see [`check`].

pub mod disruption;
pub mod fault;
pub mod harness;
pub mod ports;
pub mod registry;
pub mod tripwire;

pub use fault::{CatalogEntry, Fault, FaultPlan, Faulty};
pub use harness::{Case, CaseResult, ImplKind, Implementation, Outcome, Report, Trial};
pub use registry::{suite, PortSuite, WAIVERS};
