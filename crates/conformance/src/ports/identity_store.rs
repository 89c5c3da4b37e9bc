//! Contract cases, fault catalog and `Faulty` wrapper for `IdentityStore` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `IdentityStore`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::IdentityStore, Vec::new(), Vec::new(), &[])
}
