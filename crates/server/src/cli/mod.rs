//! The operator and client commands of the `switchboard` binary besides `serve`, `migrate`, `demo`
//! and `ports`: `admin` (operator commands on the deployment's data), `doctor` (a read-only health
//! check) and `session` (a terminal client of a running server's API).
//!
//! Each command is an async function returning what it printed or an error sentence; `main.rs`
//! only parses the command line, runs it and turns the outcome into an exit code.

pub mod admin;
pub mod client;
pub mod doctor;
pub mod render;
pub mod tail;

/// Runs `fut` on a fresh current-thread runtime (every CLI command is one short async job).
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(fut)
}
