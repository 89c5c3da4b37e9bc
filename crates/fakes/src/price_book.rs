//! `InMemoryPriceBook` (being written).
