//! Contract cases, fault catalog and `Faulty` wrapper for `EventBus` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `EventBus`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::EventBus, Vec::new(), Vec::new(), &[])
}
