//! The runtime-agnostic session shell (being written).
