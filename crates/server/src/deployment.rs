//! A running deployment's ports, built from configuration: the embedded default (one SQLite file
//! plus one SQLite file per session under the data directory) or Postgres for the shared data.
//! Migrations run here, at start.

use crate::app::App;
use crate::config::ServeConfig;
use std::sync::Arc;
use switchboard_adapters::broadcast_bus::TokioBroadcastEventBus;
use switchboard_adapters::direct_gateway::DirectModelGateway;
use switchboard_adapters::local_host::{LocalSessionHost, OsMinter};
use switchboard_adapters::price_table::EmbeddedPriceBook;
use switchboard_adapters::sql::session_store::SqliteSessionStore;
use switchboard_adapters::sql::{
    Db, MasterKeys, PgAuditLog, PgEventBus, PgIdentityStore, PgRunLedger, PgSecretVault,
    SqliteAuditLog, SqliteIdentityStore, SqliteRunLedger, SqliteSecretVault,
};
use switchboard_adapters::store_auth::StoreAuthenticator;
use switchboard_ports::runtime::SessionPorts;
use switchboard_ports::{
    AuditLog, Clock, EventBus, IdentityStore, RunLedger, SandboxProvider, SecretVault, SessionStore,
};

/// Wraps the run ledger of a deployment (e.g. to inject an outage in a test).
pub type LedgerWrapper = Box<dyn FnOnce(Arc<dyn RunLedger>) -> Arc<dyn RunLedger> + Send>;

/// Optional changes to how a deployment is opened. The default changes nothing.
#[derive(Default)]
pub struct OpenOptions {
    /// Applied to the run ledger before anything uses it (the outbox flusher and the API alike).
    pub wrap_ledger: Option<LedgerWrapper>,
}

/// Every port of a running server.
pub struct Deployment {
    pub app: App,
    pub host: Arc<LocalSessionHost>,
    pub db: Db,
    pub session_store: Arc<SqliteSessionStore>,
    pub bus: Arc<dyn EventBus>,
    pub sandboxes: Arc<dyn SandboxProvider>,
    /// What was opened, for the start-up log line.
    pub described: String,
}

impl Deployment {
    /// Opens the databases (applying migrations), the vault's master keys and the session store,
    /// and builds the session host. `sandboxes` is the sandbox provider to use.
    pub async fn open(
        config: &ServeConfig,
        callback_base: String,
        sandboxes: Arc<dyn SandboxProvider>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        Self::open_with(
            config,
            callback_base,
            sandboxes,
            clock,
            OpenOptions::default(),
        )
        .await
    }

    /// [`Deployment::open`] with [`OpenOptions`] (tests use them to put a fault in front of a port).
    pub async fn open_with(
        config: &ServeConfig,
        callback_base: String,
        sandboxes: Arc<dyn SandboxProvider>,
        clock: Arc<dyn Clock>,
        options: OpenOptions,
    ) -> Result<Self, String> {
        config.validate()?;
        let (db, described) =
            crate::db::open(&config.data_dir, config.database_url.as_deref()).await?;
        let keys = Arc::new(MasterKeys::resolve(&config.data_dir).map_err(|e| e.to_string())?);
        let (identity, vault, ledger, audit, bus): (
            Arc<dyn IdentityStore>,
            Arc<dyn SecretVault>,
            Arc<dyn RunLedger>,
            Arc<dyn AuditLog>,
            Arc<dyn EventBus>,
        ) = match &db {
            Db::Sqlite(pool) => (
                Arc::new(SqliteIdentityStore::new(pool.clone())),
                Arc::new(SqliteSecretVault::new(pool.clone(), keys, clock.clone())),
                Arc::new(SqliteRunLedger::new(pool.clone())),
                Arc::new(SqliteAuditLog::new(pool.clone())),
                Arc::new(TokioBroadcastEventBus::new()),
            ),
            Db::Postgres(pool) => (
                Arc::new(PgIdentityStore::new(pool.clone())),
                Arc::new(PgSecretVault::new(pool.clone(), keys, clock.clone())),
                Arc::new(PgRunLedger::new(pool.clone())),
                Arc::new(PgAuditLog::new(pool.clone())),
                Arc::new(PgEventBus::new(pool.clone())),
            ),
        };
        let ledger = match options.wrap_ledger {
            Some(wrap) => wrap(ledger),
            None => ledger,
        };
        let session_store =
            Arc::new(SqliteSessionStore::open(&config.data_dir).map_err(|e| e.to_string())?);
        let ports = SessionPorts {
            store: Arc::new(crate::metered::MeteredSessionStore::new(
                session_store.clone(),
            )) as Arc<dyn SessionStore>,
            sandboxes: sandboxes.clone(),
            // Direct BYOK: the tenant's own key, opened from the vault for each run; extra
            // providers come from `SWITCHBOARD_PROVIDER_<NAME>_BASE_URL`, then `--provider`.
            gateway: Arc::new(config.providers.iter().try_fold(
                DirectModelGateway::new(vault.clone()).with_env_providers(std::env::vars())?,
                |gateway, (name, url)| {
                    gateway
                        .with_provider(name.clone(), url.clone())
                        .map_err(|e| format!("--provider: {e}"))
                },
            )?),
            prices: Arc::new(EmbeddedPriceBook::new()),
            ledger: Arc::new(crate::metered::MeteredRunLedger::new(ledger.clone())),
            bus: bus.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
            minter: Arc::new(OsMinter::new()),
            callback_base,
            config: config.session_config(),
        };
        let permission_policy = ports.config.permission_policy.clone();
        let host = Arc::new(LocalSessionHost::new(ports));
        // Repositories tenants may list for environment detection: the git host, when the
        // operator granted any (`--repo-grant`). Session repositories are cloned by the sandbox
        // provider, not through it.
        let repo_host = config.repo_host()?.map(|repos| {
            tracing::info!(
                grants = repos.grants.len(),
                cache = %repos.cache_dir.display(),
                "repo host: git"
            );
            Arc::new(switchboard_adapters::git_repo_host::GitRepoHost::new(
                repos,
                clock.clone(),
            )) as Arc<dyn switchboard_ports::RepoHost>
        });
        let app = App {
            identity: identity.clone(),
            authenticator: Arc::new(StoreAuthenticator::new(identity, clock.clone())),
            vault,
            host: host.clone(),
            ledger,
            audit,
            clock,
            permission_policy,
            repo_host,
        };
        Ok(Deployment {
            app,
            host,
            db,
            session_store,
            bus,
            sandboxes,
            described,
        })
    }

    /// `GET /ready`: every configured dependency answers, or the name of the first that does not.
    pub async fn ready(&self) -> Result<(), (&'static str, String)> {
        let probe = match &self.db {
            Db::Sqlite(pool) => sqlx_probe_sqlite(pool).await,
            Db::Postgres(pool) => sqlx_probe_postgres(pool).await,
        };
        probe.map_err(|e| ("database", e))?;
        let sessions = self.session_store.root().to_path_buf();
        let writable = std::fs::metadata(&sessions)
            .map(|m| !m.permissions().readonly())
            .unwrap_or(false);
        if !writable {
            return Err((
                "session_store",
                format!("{} is not a writable directory", sessions.display()),
            ));
        }
        Ok(())
    }
}

async fn sqlx_probe_sqlite(
    pool: &switchboard_adapters::sql::pool::SqlitePool,
) -> Result<(), String> {
    switchboard_adapters::sql::pool::ping_sqlite(pool).await
}

async fn sqlx_probe_postgres(pool: &switchboard_adapters::sql::pool::PgPool) -> Result<(), String> {
    switchboard_adapters::sql::pool::ping_postgres(pool).await
}
