//! The sans-IO session machine: one per session actor.
//!
//! Drive it like `quinn-proto`'s connection: call [`Session::handle`] with the current time and an
//! [`Input`], then drain [`Session::poll_effect`] until it returns `None`, carrying out each
//! [`Effect`] in order, and arm one timer at [`Session::poll_deadline`]; when it fires, call
//! `handle(now, Input::Tick)`.
//!
//! Architecture Invariant: effects are emitted in the order they must be carried out. Every
//! [`Effect::Persist`] precedes the deliveries of the events it holds, so an event is durable before
//! any client can see it.
//!
//! Architecture Invariant: every state has a deadline and a declared exit; no session or run can
//! stay in a non-terminal state forever while time advances.

mod machine;
mod runs;
mod sandbox_link;
#[cfg(test)]
mod snapshot_tests;
mod state;
mod types;

pub use machine::Session;
pub use types::*;
