//! local_host adapter (being written).
