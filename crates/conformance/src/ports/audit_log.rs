//! Contract cases, fault catalog and `Faulty` wrapper for `AuditLog` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `AuditLog`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::AuditLog, Vec::new(), Vec::new(), &[])
}
