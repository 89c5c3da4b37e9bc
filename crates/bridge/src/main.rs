//! `switchboard-bridge`: the program that runs inside every sandbox. It reads its settings from
//! the environment (see [`BridgeConfig::from_vars`]), builds the ACP agent driver for
//! `SWITCHBOARD_AGENT_COMMAND` (default `opencode acp`) and runs the bridge until the control plane
//! says `shutdown` (exit 0), SIGTERM or SIGINT arrive (exit 0), the control plane stays unreachable
//! for the idle timeout (exit 3), the sandbox token is refused (exit 4), or the settings are
//! unusable (exit 2). Logs go to stderr (`RUST_LOG`, default `info`).

use std::sync::Arc;
use switchboard_adapters::acp_driver::{AcpAgentDriver, AcpConfig};
use switchboard_bridge::{run_until, BridgeConfig};
use switchboard_ports::AgentDriver;
use tracing_subscriber::EnvFilter;

/// The variable that carries the sandbox token; removed from the environment once read.
const TOKEN_VAR: &str = "SWITCHBOARD_SANDBOX_TOKEN";

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let config = match BridgeConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "switchboard-bridge cannot start");
            std::process::exit(e.code());
        }
    };
    // The agent, and every command it runs, inherits this environment: the token that lets a
    // process speak for this sandbox stays with the bridge. Still one thread here, so this is safe.
    std::env::remove_var(TOKEN_VAR);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "the async runtime cannot start");
            std::process::exit(5);
        }
    };
    let code = runtime.block_on(async move {
        let stop = stop_signal();
        let command = config.agent_command.clone();
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            program = %command.program,
            args = ?command.args,
            "switchboard-bridge"
        );
        let driver: Arc<dyn AgentDriver> = Arc::new(AcpAgentDriver::new(AcpConfig {
            program: command.program,
            args: command.args,
            env: Vec::new(),
        }));
        match run_until(config, driver, stop).await {
            Ok(exit) => exit.code(),
            Err(e) => {
                tracing::error!(error = %e, "switchboard-bridge failed");
                e.code()
            }
        }
    });
    // The driver went with `run_until` (its drop kills any agent still alive); end the runtime too.
    drop(runtime);
    std::process::exit(code);
}

/// Watches SIGTERM (the sandbox provider's terminate) and SIGINT from now on; the returned future
/// resolves when either arrives.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Registered before the bridge starts, so an early SIGTERM is a clean stop, not a kill.
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let next = |stream: std::io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match stream {
                Ok(mut stream) => {
                    stream.recv().await;
                    tracing::info!("{name} received");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{name} cannot be watched");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = next(terminate, "SIGTERM") => {}
            () = next(interrupt, "SIGINT") => {}
        }
    }
}
