//! jsonl_audit adapter (being written).
