//! `InMemoryModelGateway` (being written).
