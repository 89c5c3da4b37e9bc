//! price_table adapter (being written).
