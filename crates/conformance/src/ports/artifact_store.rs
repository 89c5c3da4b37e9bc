//! Contract cases, fault catalog and `Faulty` wrapper for `ArtifactStore` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `ArtifactStore`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::ArtifactStore, Vec::new(), Vec::new(), &[])
}
