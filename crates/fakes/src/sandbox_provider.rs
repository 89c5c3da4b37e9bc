//! `InMemorySandboxProvider` (being written).
