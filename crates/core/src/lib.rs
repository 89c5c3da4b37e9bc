//! Switchboard's pure domain: typed ids, tenancy, model references, the wire protocol, run records,
//! environment autodiscovery and the sans-IO session machine.
//!
//! Architecture Invariant: nothing in this crate performs IO, reads a clock or draws randomness.
//! Time, randomness and the results of IO arrive as inputs. That is what lets the same machine run
//! under tokio, in a deterministic test harness and inside a Cloudflare Durable Object (wasm32).

pub mod audit;
pub mod crypto;
pub mod environment;
pub mod error;
pub mod ids;
pub mod model;
pub mod protocol;
pub mod run;
pub mod session;
pub mod tenancy;
pub mod time;

pub use error::ErrorClass;
pub use ids::*;
pub use model::{ModelRef, ModelRefError};
pub use tenancy::{Principal, Scope, SessionKey, TenantContext};
pub use time::Timestamp;
