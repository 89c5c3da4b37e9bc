//! Contract cases, fault catalog and `Faulty` wrapper for `SecretVault` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `SecretVault`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::SecretVault, Vec::new(), Vec::new(), &[])
}
