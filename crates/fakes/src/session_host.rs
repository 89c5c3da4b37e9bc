//! `InMemorySessionHost` (being written).
