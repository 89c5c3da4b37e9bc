//! The wire protocol of PROTOCOL.md as serde types: events, client frames, sandbox frames and the
//! spawn spec. Names here are binding for external clients: extend, never rename.

pub mod client;
pub mod events;
pub mod sandbox;
pub mod spawn;

pub use client::{ClientMessage, ServerFrame};
pub use events::*;
pub use sandbox::{GatewayConfig, SandboxMessage, ServerToSandbox, Turn, TurnRole};
pub use spawn::{RepoSpec, SpawnSpec, SpawnTimeouts};

/// Largest WebSocket frame accepted from a client or sandbox (1 MiB); larger closes with 1009.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
