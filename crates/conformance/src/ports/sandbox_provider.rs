//! Contract cases, fault catalog and `Faulty` wrapper for `SandboxProvider` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `SandboxProvider`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::SandboxProvider, Vec::new(), Vec::new(), &[])
}
