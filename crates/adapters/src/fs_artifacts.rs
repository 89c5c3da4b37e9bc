//! fs_artifacts adapter (being written).
