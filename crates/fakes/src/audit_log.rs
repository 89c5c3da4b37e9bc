//! `InMemoryAuditLog` (being written).
