//! Contract cases, fault catalog and `Faulty` wrapper for `SessionHost` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `SessionHost`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::SessionHost, Vec::new(), Vec::new(), &[])
}
