//! `InMemoryArtifactStore` (being written).
