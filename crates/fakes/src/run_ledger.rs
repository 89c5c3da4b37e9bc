//! `InMemoryRunLedger` (being written).
