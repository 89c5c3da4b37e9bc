//! Contract cases, fault catalog and `Faulty` wrapper for `PriceBook` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `PriceBook`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::PriceBook, Vec::new(), Vec::new(), &[])
}
