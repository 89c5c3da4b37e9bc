//! Contract cases, fault catalog and `Faulty` wrapper for `AgentDriver` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `AgentDriver`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::AgentDriver, Vec::new(), Vec::new(), &[])
}
