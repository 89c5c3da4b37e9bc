//! `switchboard-bridge`: the program inside every sandbox. It dials back to its session over the
//! sandbox WebSocket (PROTOCOL.md), drives the coding agent through the `AgentDriver` port and
//! streams the agent's work home, numbered so that nothing is lost or doubled across reconnects.
//!
//! [`run`] is the whole bridge; the binary only builds the ACP driver from the environment and
//! calls it. The pieces:
//! - [`config`]: `SWITCHBOARD_*` settings and timings;
//! - `link`: the connection (dial with the bearer token, `hello`, re-send un-ACKed messages,
//!   heartbeats, reconnect with backoff, idle timeout);
//! - `agent`: the worker that runs `run` and `restore` jobs one at a time on the agent;
//! - `outbox`: numbering and ACK bookkeeping;
//! - `fit`: every message within the server's 1 MiB frame limit (long text split, huge values
//!   truncated), so that no message can close the connection again on every re-send;
//! - [`workspace`]: the file list reported for environment autodiscovery.
//!
//! Whatever ends the bridge (a `shutdown`, the idle timeout, a refused token, the caller's stop
//! signal), the agent session is stopped before [`run`] returns, so no agent outlives its bridge.

pub mod config;
pub mod workspace;

mod agent;
mod fit;
mod link;
mod outbox;

use std::future::Future;
use std::sync::Arc;
use switchboard_ports::AgentDriver;
use tokio::sync::mpsc;

pub use config::{AgentCommand, Backoff, BridgeConfig};

/// Why the bridge ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The control plane said `shutdown`.
    Shutdown,
    /// The caller's stop signal fired (SIGTERM or SIGINT in the binary).
    Stopped,
    /// No connection to the control plane for the idle timeout: the agent was stopped so that it
    /// does not run orphaned.
    IdleTimeout,
}

impl Exit {
    /// The process exit code: 0 for a requested end, non-zero for the idle timeout.
    pub fn code(self) -> i32 {
        match self {
            Exit::Shutdown | Exit::Stopped => 0,
            Exit::IdleTimeout => 3,
        }
    }
}

/// Why the bridge could not do its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeError {
    /// A setting is missing or malformed.
    Config(String),
    /// The control plane refused the sandbox token or does not know the session (HTTP status of
    /// the handshake): re-dialling would not help.
    Refused { status: u16 },
    /// The agent side of the bridge failed.
    Agent(String),
}

impl BridgeError {
    /// The process exit code.
    pub fn code(&self) -> i32 {
        match self {
            BridgeError::Config(_) => 2,
            BridgeError::Refused { .. } => 4,
            BridgeError::Agent(_) => 5,
        }
    }
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeError::Config(message) => write!(f, "configuration: {message}"),
            BridgeError::Refused { status } => write!(
                f,
                "the control plane refused this sandbox (HTTP {status}): its token is wrong, stale or already used, or the session is gone"
            ),
            BridgeError::Agent(message) => write!(f, "agent: {message}"),
        }
    }
}

impl std::error::Error for BridgeError {}

/// Installs rustls' ring crypto provider for `wss://` (once per process; later calls do nothing).
pub fn install_crypto_provider() {
    // `Err` means a provider is already installed, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the bridge until the control plane says `shutdown`, refuses the sandbox, or stays
/// unreachable for the idle timeout. The agent session is stopped before it returns.
pub async fn run(config: BridgeConfig, driver: Arc<dyn AgentDriver>) -> Result<Exit, BridgeError> {
    run_until(config, driver, std::future::pending()).await
}

/// [`run`], also ending (with [`Exit::Stopped`]) when `stop` completes.
pub async fn run_until(
    config: BridgeConfig,
    driver: Arc<dyn AgentDriver>,
    stop: impl Future<Output = ()> + Send,
) -> Result<Exit, BridgeError> {
    config.validate()?;
    install_crypto_provider();
    let workspace = config
        .workspace
        .to_str()
        .ok_or_else(|| {
            BridgeError::Config(format!(
                "the workspace {:?} is not valid UTF-8",
                config.workspace
            ))
        })?
        .to_string();
    let files = {
        let root = config.workspace.clone();
        let limit = config.max_workspace_files;
        tokio::task::spawn_blocking(move || workspace::list_files(&root, limit))
            .await
            .map_err(|e| BridgeError::Agent(format!("listing the workspace failed: {e}")))?
    };
    tracing::info!(
        sandbox_id = %config.sandbox_id,
        agent = %config.agent,
        workspace = %workspace,
        files = files.len(),
        "bridge starting"
    );

    let grace = config.stop_grace;
    let agent = Arc::new(agent::Agent::new(driver, workspace));
    let (to_link, from_agent) = mpsc::unbounded_channel();
    let mut worker = tokio::spawn(agent.clone().work(to_link));
    let mut link = link::Link::new(config, agent.clone(), from_agent, files);

    let result = tokio::select! {
        result = link.serve() => result,
        () = stop => {
            tracing::info!("stop signal received");
            Ok(Exit::Stopped)
        }
    };

    agent.close(grace).await;
    if tokio::time::timeout(grace, &mut worker).await.is_err() {
        tracing::warn!("the agent worker did not end in time; aborting it");
        worker.abort();
    }
    tracing::info!(?result, "bridge exiting");
    result
}
