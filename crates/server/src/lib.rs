//! The reference Switchboard server: the operations behind the HTTP API (`app`), how the ports are
//! wired (`stack`), and an in-process scripted sandbox used until the bridge exists (`scripted`).
//!
//! Architecture Invariant: the server holds no business rule the core could hold. It parses,
//! authenticates, checks scopes, mints ids and maps errors; sessions are the core's business.

pub mod app;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod deployment;
pub mod http;
pub mod journey;
pub mod metered;
pub mod mint;
pub mod scripted;
pub mod scripted_model;
pub mod serve;
pub mod stack;

pub use app::{ApiError, App};
