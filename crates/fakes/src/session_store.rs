//! `InMemorySessionStore` (being written).
