//! `InMemoryIdentityStore` (being written).
