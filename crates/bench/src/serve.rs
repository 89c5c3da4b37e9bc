//! The server under test, as a child process (`switchboard-bench serve`): the real server started
//! with `serve::start_with` on an ephemeral loopback port over its real stores (SQLite under the
//! data directory, Postgres when a database URL is given), with one org and its BYOK key.
//!
//! Sandboxes: by default the [`SpecPrinter`] provider, which starts nothing and prints each spawn
//! spec on stdout so that the driver plays the sandbox; with `--local-sandboxes`, the real local
//! process provider running this binary as an instant bridge (`switchboard-bench sandbox`).
//!
//! Stdout carries JSON lines: first `{"ready": {"addr", "api_key", "org_id", "pid"}}`, then one
//! `{"spawn": {"sandbox_id", "session_key", "callback_url", "token"}}` per spawn. The server stops
//! when stdin closes (the driver ended or dropped it).

use async_trait::async_trait;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use switchboard_adapters::local_sandbox::{LocalProcessSandboxProvider, LocalSandboxConfig};
use switchboard_adapters::system_clock::SystemClock;
use switchboard_core::protocol::SpawnSpec;
use switchboard_core::SandboxId;
use switchboard_ports::sandbox::SandboxState;
use switchboard_ports::{SandboxProvider, SandboxProviderError};
use switchboard_server::config::ServeConfig;
use switchboard_server::deployment::OpenOptions;
use tokio::io::AsyncReadExt;

/// The BYOK key the bench org stores (never sent anywhere: bench sandboxes call no model).
pub const BYOK_KEY: &str = "sk-bench-0000000000000000000000000000";

/// How the child server is set up.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The server's data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Postgres for identity, vault, ledger and audit (unset: the embedded SQLite).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Start sandboxes with the local process provider, this binary being the bridge.
    #[arg(long)]
    pub local_sandboxes: bool,
    /// Seconds an idle session with no clients stays in memory.
    #[arg(long, default_value_t = 60)]
    pub hibernate_after_s: u64,
    /// Seconds an idle sandbox is kept before it is shut down.
    #[arg(long, default_value_t = 600)]
    pub sandbox_idle_timeout_s: u64,
}

/// A sandbox provider that starts nothing: it prints each spawn spec for the driver to play.
#[derive(Default)]
pub struct SpecPrinter {
    next: AtomicU64,
    live: Mutex<HashSet<SandboxId>>,
}

#[async_trait]
impl SandboxProvider for SpecPrinter {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<SandboxId, SandboxProviderError> {
        let id = SandboxId::parse(format!(
            "bench-{}",
            self.next.fetch_add(1, Ordering::Relaxed)
        ))
        .map_err(|e| SandboxProviderError::Invalid(e.to_string()))?;
        self.live.lock().unwrap().insert(id.clone());
        let line = serde_json::json!({"spawn": {
            "sandbox_id": id.as_str(), "session_key": spec.session_key,
            "callback_url": spec.callback_url, "token": spec.token,
        }});
        println!("{line}");
        Ok(id)
    }

    async fn status(&self, id: &SandboxId) -> Result<SandboxState, SandboxProviderError> {
        if self.live.lock().unwrap().contains(id) {
            Ok(SandboxState::Running)
        } else {
            Err(SandboxProviderError::NotFound(id.to_string()))
        }
    }

    async fn terminate(&self, id: &SandboxId) -> Result<(), SandboxProviderError> {
        if self.live.lock().unwrap().remove(id) {
            Ok(())
        } else {
            Err(SandboxProviderError::NotFound(id.to_string()))
        }
    }

    async fn snapshot(&self, id: &SandboxId) -> Result<String, SandboxProviderError> {
        Err(SandboxProviderError::Conflict(format!(
            "bench sandbox {id} keeps no workspace"
        )))
    }
}

/// Runs the child server until stdin closes.
pub async fn run(args: ServeArgs) -> Result<(), String> {
    crate::sys::raise_fd_limit();
    let mut config = ServeConfig::embedded(args.data_dir.clone());
    config.database_url = args.database_url.clone();
    config.hibernate_after_s = args.hibernate_after_s;
    config.sandbox_idle_timeout_s = args.sandbox_idle_timeout_s;
    let provider: Arc<dyn SandboxProvider> = if args.local_sandboxes {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let local = LocalSandboxConfig::new(args.data_dir.join("sandboxes"))
            .hide(args.data_dir.clone())
            .with_bridge(exe, vec!["sandbox".into()]);
        Arc::new(LocalProcessSandboxProvider::new(local)?)
    } else {
        Arc::new(SpecPrinter::default())
    };
    let server = switchboard_server::serve::start_with(
        config,
        provider,
        Arc::new(SystemClock::new()),
        OpenOptions::default(),
    )
    .await?;
    let app = &server.deployment.app;
    let org = app
        .create_org("bench", None)
        .await
        .map_err(|e| e.to_string())?;
    let principal = app
        .authenticate(Some(&format!("Bearer {}", org.api_key)))
        .await
        .map_err(|e| e.to_string())?;
    app.put_credential(&principal, "openai", BYOK_KEY)
        .await
        .map_err(|e| e.to_string())?;
    let ready = serde_json::json!({"ready": {
        "addr": server.addr.to_string(), "api_key": org.api_key,
        "org_id": org.org_id.to_string(), "pid": std::process::id(),
    }});
    println!("{ready}");
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    server.stop().await
}
