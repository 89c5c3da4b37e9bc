//! Contract cases, fault catalog and `Faulty` wrapper for `RepoHost` (being written).

use crate::registry::PortSuite;
use switchboard_ports::PortId;

/// The suite of `RepoHost`.
pub fn suite() -> PortSuite {
    PortSuite::new::<()>(PortId::RepoHost, Vec::new(), Vec::new(), &[])
}
