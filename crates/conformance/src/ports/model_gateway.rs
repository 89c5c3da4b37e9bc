//! Contract cases, fault catalog and `Faulty` wrapper for `ModelGateway` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `ModelGateway`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::ModelGateway, Vec::new(), Vec::new(), &[])
}
