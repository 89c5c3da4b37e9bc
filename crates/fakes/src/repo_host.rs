//! `InMemoryRepoHost` (being written).
