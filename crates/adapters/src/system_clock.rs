//! system_clock adapter (being written).
