//! Contract cases, fault catalog and `Faulty` wrapper for `Clock` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `Clock`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::Clock, Vec::new(), Vec::new(), &[])
}
