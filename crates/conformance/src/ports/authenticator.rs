//! Contract cases, fault catalog and `Faulty` wrapper for `Authenticator` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `Authenticator`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::Authenticator, Vec::new(), Vec::new(), &[])
}
