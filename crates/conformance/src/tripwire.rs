//! The tripwire (being written).
