//! `switchboard admin …`: operator commands run on the server's own data (the embedded SQLite
//! database under the data directory, or Postgres when `DATABASE_URL` is set).
//!
//! `admin create-org` opens the deployment exactly as `serve` does (migrations apply) and creates
//! the org through [`crate::app::App::create_org`], the one code path for orgs, owners and first
//! keys; it prints the JSON line of PROTOCOL.md.

use crate::app::CreatedOrg;
use crate::config::ServeConfig;
use crate::deployment::Deployment;
use std::path::PathBuf;
use std::sync::Arc;
use switchboard_adapters::sql::Db;
use switchboard_adapters::system_clock::SystemClock;
use switchboard_fakes::sandbox_provider::InMemorySandboxProvider;

/// `switchboard admin <command>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Create an org with an owner user and a first API key, and print one JSON line:
    /// {"org_id": "...", "user_id": "...", "api_key": "sk_..."}. The key is shown only here.
    CreateOrg(CreateOrgArgs),
}

/// `switchboard admin create-org NAME [--email EMAIL]`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateOrgArgs {
    /// The org's display name.
    pub name: String,
    /// The owner's email address (default: a placeholder under `.invalid`).
    #[arg(long)]
    pub email: Option<String>,
    /// Where the embedded default keeps its data.
    #[arg(
        long,
        env = "SWITCHBOARD_DATA_DIR",
        default_value = "./switchboard-data"
    )]
    pub data_dir: PathBuf,
    /// Postgres for the shared data (`postgres://…`); unset = the embedded SQLite database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Creates the org on the deployment's database. Errors are sentences for the operator.
pub async fn create_org(args: &CreateOrgArgs) -> Result<CreatedOrg, String> {
    let mut config = ServeConfig::embedded(args.data_dir.clone());
    config.database_url = args.database_url.clone();
    // No session is created here, so no sandbox is ever spawned: the in-memory provider only
    // completes the set of ports the deployment is built from.
    let sandboxes = Arc::new(InMemorySandboxProvider::new());
    let deployment = Deployment::open(
        &config,
        config.callback_base(config.listen),
        sandboxes,
        Arc::new(SystemClock::new()),
    )
    .await?;
    let created = deployment
        .app
        .create_org(&args.name, args.email.as_deref())
        .await;
    match &deployment.db {
        Db::Sqlite(pool) => pool.close().await,
        Db::Postgres(pool) => pool.close().await,
    }
    created.map_err(|e| format!("{}: {}", e.code, e.message))
}

/// Runs an admin command; returns the process exit code.
pub fn run(command: AdminCommand) -> i32 {
    match command {
        AdminCommand::CreateOrg(args) => match super::block_on(create_org(&args)) {
            Ok(created) => {
                println!(
                    "{}",
                    serde_json::to_string(&created).expect("a created org serializes")
                );
                0
            }
            Err(e) => {
                eprintln!("switchboard admin create-org: {e}");
                1
            }
        },
    }
}
