//! `InMemoryAuthenticator` (being written).
