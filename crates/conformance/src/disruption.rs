//! The disruption suite: each catalogued fault injected into the session lifecycle (being written).

use crate::harness::Outcome;
use switchboard_ports::PortId;

/// One disruption case: a catalogued fault of one port, injected into the lifecycle.
pub struct DisruptionCase {
    pub port: PortId,
    /// The catalog entry's `fault@op` name.
    pub entry: String,
    pub run: Box<dyn FnOnce() -> Outcome + Send>,
}

/// Every disruption case.
pub fn cases() -> Vec<DisruptionCase> {
    Vec::new()
}
