//! Contract cases, fault catalog and `Faulty` wrapper for `SessionStore` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `SessionStore`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::SessionStore, Vec::new(), Vec::new(), &[])
}
