//! `InMemoryEventBus` (being written).
