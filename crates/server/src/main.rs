//! The `switchboard` binary: `demo` runs the whole product on this machine (see
//! `switchboard_server::demo`); `serve` runs the server; `ports` prints the registry of ports;
//! `migrate` applies the schema; `admin`, `doctor` and `session` are in `switchboard_server::cli`.

use clap::{Parser, Subcommand};
use std::sync::Arc;
use switchboard_adapters::local_sandbox::LocalProcessSandboxProvider;
use switchboard_ports::PortId;
use switchboard_server::config::SandboxProviderChoice;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A control plane for hosted coding agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the product end to end on this machine: the server (embedded SQLite in a temporary
    /// directory), a local sandbox running the bridge and an agent (OpenCode when installed, else
    /// the scripted ACP agent), a scripted model server; create an org, store a BYOK key, run a
    /// prompt that executes a real command in the sandbox, print its events and its ledger record.
    Demo(switchboard_server::demo::DemoArgs),
    /// Run the server (HTTP API, client and sandbox WebSockets). With no configuration: the
    /// embedded default, SQLite under ./switchboard-data, on 127.0.0.1:8080.
    Serve(switchboard_server::config::ServeConfig),
    /// List the fifteen ports by plane.
    Ports,
    /// Apply the database schema migrations (idempotent). Postgres when `DATABASE_URL` is set,
    /// else the embedded SQLite database under `--data-dir`. A schema newer than this binary is
    /// refused.
    Migrate {
        /// Where the embedded default keeps its data.
        #[arg(
            long,
            env = "SWITCHBOARD_DATA_DIR",
            default_value = "./switchboard-data"
        )]
        data_dir: std::path::PathBuf,
    },
    /// Operator commands on the deployment's data (`admin create-org NAME [--email EMAIL]`).
    #[command(subcommand)]
    Admin(switchboard_server::cli::admin::AdminCommand),
    /// Read-only health check of configuration, data directory, database, migrations, master key
    /// and sandbox provider; one line per check. Exit code 0 when nothing failed.
    Doctor(switchboard_server::cli::doctor::DoctorArgs),
    /// A terminal client of a running server: `session new|prompt|tail|list`.
    Session(switchboard_server::cli::client::SessionArgs),
}

async fn serve(config: switchboard_server::config::ServeConfig) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let sandboxes: Arc<dyn switchboard_ports::SandboxProvider> = match config.sandbox_choice() {
        SandboxProviderChoice::Local => {
            config.validate()?;
            let provider = LocalProcessSandboxProvider::new(config.local_sandbox())
                .map_err(|e| format!("the local sandbox provider: {e}"))?;
            // The provider itself says how (or whether) sandboxes are isolated.
            tracing::info!(
                bridge = %provider.bridge().display(),
                root = %provider.root().display(),
                "sandboxes are local processes"
            );
            Arc::new(provider)
        }
        SandboxProviderChoice::None => {
            // Sessions are created and wait for a sandbox to dial back with its token.
            if config.sandbox_provider.is_none() {
                tracing::warn!(
                    "no sandbox provider is configured: sandboxes are not started by this server (no switchboard-bridge next to this binary; see --sandbox-provider and --bridge)"
                );
            } else {
                tracing::warn!(
                    "--sandbox-provider none: sandboxes are not started by this server; sessions wait for a sandbox to dial back with its token"
                );
            }
            Arc::new(switchboard_fakes::sandbox_provider::InMemorySandboxProvider::new())
        }
    };
    let clock = Arc::new(switchboard_adapters::system_clock::SystemClock::new());
    let mut server = switchboard_server::serve::start(config, sandboxes, clock).await?;
    tracing::info!(addr = %server.addr, storage = %server.deployment.described, "switchboard listening");
    println!("switchboard listening on http://{}", server.addr);
    let stop = server.take_stop();
    // SIGINT or SIGTERM stop the server gracefully; when it ends, the sandbox provider is
    // dropped, which ends the local sandboxes it started.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
    });
    server.wait().await
}

fn ports() {
    for p in PortId::ALL {
        let info = p.info();
        println!(
            "{:<9} {:<17} {}",
            info.plane.name(),
            info.trait_name,
            info.description
        );
    }
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => std::process::exit(switchboard_server::demo::main(args)),
        Command::Serve(config) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            if let Err(e) = rt.block_on(serve(config)) {
                eprintln!("switchboard serve: {e}");
                std::process::exit(1);
            }
        }
        Command::Ports => ports(),
        Command::Migrate { data_dir } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            match rt.block_on(switchboard_server::db::migrate(
                &data_dir,
                std::env::var("DATABASE_URL").ok().as_deref(),
            )) {
                Ok(done) => println!("{done}"),
                Err(e) => {
                    eprintln!("switchboard migrate: {e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Admin(command) => std::process::exit(switchboard_server::cli::admin::run(command)),
        Command::Doctor(args) => std::process::exit(switchboard_server::cli::doctor::run(args)),
        Command::Session(args) => std::process::exit(switchboard_server::cli::client::main(args)),
    }
}
