//! broadcast_bus adapter (being written).
