//! `InMemoryAgentDriver` (being written).
