//! `InMemorySecretVault` (being written).
