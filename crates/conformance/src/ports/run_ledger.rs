//! Contract cases, fault catalog and `Faulty` wrapper for `RunLedger` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `RunLedger`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::RunLedger, Vec::new(), Vec::new(), &[])
}
