//! `switchboard doctor`: a read-only health check of what `serve` would run on — configuration,
//! data directory, database, schema migrations, vault master key, sandbox provider, repo host —
//! printing one line per check (`ok`, `warn` or `FAIL` and the reason). Exit code 0 when nothing
//! failed.
//!
//! Read-only means: nothing is created, migrated or generated. The data directory's writability is
//! probed with a file that is removed at once; the database is opened only when its file exists;
//! the master key is parsed from the environment or the key file, never created; the sandbox
//! provider is described without being built (bubblewrap is probed by running `true` in a
//! throw-away sandbox) and the repo host by running `git --version`.

use crate::config::{SandboxProviderChoice, ServeConfig};
use std::path::Path;
use switchboard_adapters::sql::migrations::{inspect, SchemaState};
use switchboard_adapters::sql::pool::{ping_postgres, ping_sqlite};
use switchboard_adapters::sql::vault_keys::{key_file_path, ENV_MASTER_KEY};
use switchboard_adapters::sql::{connect_postgres, connect_sqlite, Db, MasterKeys};

/// `switchboard doctor`: the same configuration (flags and environment) as `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub config: ServeConfig,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, but the operator should know (does not fail the doctor).
    Warn,
    Fail,
}

/// One check: what was checked, how it went, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
        }
    }
    fn warn(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
        }
    }

    /// `ok   <name>: <detail>` / `warn …` / `FAIL …`.
    pub fn line(&self) -> String {
        let status = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        format!("{status} {}: {}", self.name, self.detail)
    }
}

/// The check names, as printed.
pub const CONFIGURATION: &str = "configuration";
pub const DATA_DIRECTORY: &str = "data directory";
pub const DATABASE: &str = "database";
pub const MIGRATIONS: &str = "migrations";
pub const MASTER_KEY: &str = "master key";
pub const SANDBOX_PROVIDER: &str = "sandbox provider";
pub const REPO_HOST: &str = "repo host";

/// Runs every check, in order. Never writes anything that outlives the call.
pub async fn checks(config: &ServeConfig) -> Vec<Check> {
    let mut out = vec![configuration(config), data_directory(&config.data_dir)];
    let db = database(config).await;
    out.push(db.0);
    out.push(migrations(db.1.as_ref()).await);
    out.push(master_key(&config.data_dir, |name| {
        std::env::var(name).ok()
    }));
    out.push(sandbox_provider(config));
    out.push(repo_host(config).await);
    if let Some(db) = db.1 {
        match db {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
    out
}

fn configuration(config: &ServeConfig) -> Check {
    match config.validate() {
        Ok(()) => {
            let storage = match &config.database_url {
                Some(_) => "Postgres (DATABASE_URL) for the shared data".to_string(),
                None => format!("embedded SQLite under {}", config.data_dir.display()),
            };
            Check::ok(
                CONFIGURATION,
                format!("valid: {storage}, listening on {}", config.listen),
            )
        }
        Err(e) => Check::fail(CONFIGURATION, e),
    }
}

/// The sandbox provider `serve` would use, described without building it: for `local`, whether
/// the bridge is there and how sandboxes would be isolated (bubblewrap works, or NOT isolated and
/// why).
fn sandbox_provider(config: &ServeConfig) -> Check {
    use switchboard_adapters::local_sandbox::{resolve_isolation, Isolation};
    match config.sandbox_choice() {
        SandboxProviderChoice::None => {
            let why = if config.sandbox_provider.is_some() {
                "--sandbox-provider none"
            } else {
                "no switchboard-bridge next to this binary and no --bridge"
            };
            Check::warn(
                SANDBOX_PROVIDER,
                format!("none ({why}): sessions are created and wait for a sandbox to dial back with its token; no sandbox is started by this server"),
            )
        }
        SandboxProviderChoice::Local => {
            let local = config.local_sandbox();
            let bridge = local.bridge.display().to_string();
            let runnable = {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(&local.bridge)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            };
            if !runnable {
                return Check::fail(
                    SANDBOX_PROVIDER,
                    format!("local: the bridge {bridge} is not an executable file (build switchboard-bridge, or give --bridge)"),
                );
            }
            match resolve_isolation(&local.isolation) {
                Ok(isolation @ Isolation::Bubblewrap { .. }) => Check::ok(
                    SANDBOX_PROVIDER,
                    format!("local: bridge {bridge}; isolation: {isolation}"),
                ),
                Ok(isolation @ Isolation::None { .. }) => Check::warn(
                    SANDBOX_PROVIDER,
                    format!("local: bridge {bridge}; {isolation}"),
                ),
                Err(e) => Check::fail(SANDBOX_PROVIDER, format!("local: bridge {bridge}; {e}")),
            }
        }
    }
}

/// The repo host `serve` would use: none without `--repo-grant`, else git with its grants (git
/// must run).
async fn repo_host(config: &ServeConfig) -> Check {
    use switchboard_adapters::git_repo_host::GitRepoHost;
    let repos = match config.repo_host() {
        Err(e) => return Check::fail(REPO_HOST, e),
        Ok(None) => {
            return Check::ok(
                REPO_HOST,
                "none configured (no --repo-grant): POST /v1/environment/detect answers {\"repo\"} with 422 repo_host_unavailable",
            )
        }
        Ok(Some(repos)) => repos,
    };
    let grants: Vec<String> = repos.grants.iter().map(ToString::to_string).collect();
    let cache = repos.cache_dir.display().to_string();
    let host = GitRepoHost::new(
        repos,
        std::sync::Arc::new(switchboard_adapters::system_clock::SystemClock::new()),
    );
    match host.git_version().await {
        Ok(version) => Check::ok(
            REPO_HOST,
            format!(
                "git ({version}), cache {cache}, grants: {}",
                grants.join(", ")
            ),
        ),
        Err(e) => Check::fail(
            REPO_HOST,
            format!(
                "{} grant(s) configured but git cannot run: {e}",
                grants.len()
            ),
        ),
    }
}

/// Whether `dir` is a directory this process can create files in, probed with a file removed at once.
fn writable(dir: &Path) -> Result<(), String> {
    static PROBE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let probe = dir.join(format!(
        ".doctor-probe-{}-{}",
        std::process::id(),
        PROBE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
    std::fs::remove_file(&probe)
        .map_err(|e| format!("cannot remove the probe file {}: {e}", probe.display()))
}

fn data_directory(dir: &Path) -> Check {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::fail(
                DATA_DIRECTORY,
                format!(
                "{shown} does not exist (`switchboard migrate` or `switchboard serve` creates it)"
            ),
            )
        }
        Err(e) => return Check::fail(DATA_DIRECTORY, format!("cannot read {shown}: {e}")),
        Ok(meta) if !meta.is_dir() => {
            return Check::fail(DATA_DIRECTORY, format!("{shown} is not a directory"))
        }
        Ok(_) => {}
    }
    if let Err(e) = writable(dir) {
        return Check::fail(DATA_DIRECTORY, e);
    }
    let sessions = dir.join("sessions");
    if sessions.is_dir() {
        if let Err(e) = writable(&sessions) {
            return Check::fail(DATA_DIRECTORY, format!("session stores: {e}"));
        }
    }
    Check::ok(DATA_DIRECTORY, format!("{shown} exists and is writable"))
}

/// Opens the database without creating it: Postgres when configured, else the SQLite file only
/// when it exists.
async fn database(config: &ServeConfig) -> (Check, Option<Db>) {
    if let Err(e) = config.validate() {
        return (
            Check::fail(
                DATABASE,
                format!("not checked: the configuration is invalid ({e})"),
            ),
            None,
        );
    }
    match &config.database_url {
        Some(url) => match connect_postgres(url, 1).await {
            Ok(pool) => match ping_postgres(&pool).await {
                Ok(()) => (
                    Check::ok(DATABASE, "Postgres (DATABASE_URL) answers"),
                    Some(Db::Postgres(pool)),
                ),
                Err(e) => (
                    Check::fail(
                        DATABASE,
                        format!("Postgres (DATABASE_URL) does not answer: {e}"),
                    ),
                    None,
                ),
            },
            Err(e) => (
                Check::fail(
                    DATABASE,
                    format!("cannot connect to Postgres (DATABASE_URL): {e}"),
                ),
                None,
            ),
        },
        None => {
            let file = config.data_dir.join(crate::db::SQLITE_FILE);
            if !file.is_file() {
                return (
                    Check::fail(
                        DATABASE,
                        format!(
                            "no database at {} (run `switchboard migrate`)",
                            file.display()
                        ),
                    ),
                    None,
                );
            }
            match connect_sqlite(&file, 1).await {
                Ok(pool) => match ping_sqlite(&pool).await {
                    Ok(()) => (
                        Check::ok(DATABASE, format!("{} opens and answers", file.display())),
                        Some(Db::Sqlite(pool)),
                    ),
                    Err(e) => {
                        pool.close().await;
                        (
                            Check::fail(
                                DATABASE,
                                format!("{} does not answer: {e}", file.display()),
                            ),
                            None,
                        )
                    }
                },
                Err(e) => (
                    Check::fail(DATABASE, format!("cannot open {}: {e}", file.display())),
                    None,
                ),
            }
        }
    }
}

/// The applied schema migrations against the ones this binary ships, read from the migrations
/// table (nothing is migrated).
async fn migrations(db: Option<&Db>) -> Check {
    let Some(db) = db else {
        return Check::fail(MIGRATIONS, "not checked: the database is not reachable");
    };
    match inspect(db).await {
        Ok(SchemaState::Current { version }) => Check::ok(
            MIGRATIONS,
            format!("current: schema version {version}, the latest this binary ships"),
        ),
        Ok(SchemaState::Behind { version, missing }) => {
            let at = version.map_or_else(
                || "has no schema yet".to_string(),
                |v| format!("is at schema version {v}"),
            );
            let missing: Vec<String> = missing.iter().map(i64::to_string).collect();
            Check::fail(MIGRATIONS, format!("behind: the database {at}; migrations {} are not applied (run `switchboard migrate`)", missing.join(", ")))
        }
        Err(e) => Check::fail(MIGRATIONS, e.message),
    }
}

/// The vault's master keys as `serve` would resolve them, without creating the key file.
fn master_key(data_dir: &Path, lookup: impl Fn(&str) -> Option<String>) -> Check {
    match MasterKeys::from_lookup(&lookup) {
        Err(e) => return Check::fail(MASTER_KEY, e.message),
        Ok(Some(keys)) => {
            return Check::ok(
                MASTER_KEY,
                format!(
                    "from {ENV_MASTER_KEY}: current version {}, {} version(s) held",
                    keys.current_version(),
                    keys.versions().len()
                ),
            )
        }
        Ok(None) => {}
    }
    let file = key_file_path(data_dir);
    match std::fs::symlink_metadata(&file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::ok(
            MASTER_KEY,
            format!("{ENV_MASTER_KEY} is not set and {} does not exist yet: `switchboard serve` creates it (mode 0600) at first start", file.display()),
        ),
        Err(e) => Check::fail(MASTER_KEY, format!("cannot read {}: {e}", file.display())),
        Ok(_) => match MasterKeys::from_file(&file) {
            Ok(keys) => Check::ok(MASTER_KEY, format!("{}: current version {}, mode 0600", file.display(), keys.current_version())),
            Err(e) => Check::fail(MASTER_KEY, e.message),
        },
    }
}

/// Runs the doctor, prints one line per check; returns the exit code (0 when nothing failed).
pub fn run(args: DoctorArgs) -> i32 {
    let checks = super::block_on(checks(&args.config));
    for check in &checks {
        println!("{}", check.line());
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed == 0 {
        0
    } else {
        eprintln!("switchboard doctor: {failed} check(s) failed");
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_adapters::sql::scratch::ScratchDir;

    #[test]
    fn the_master_key_check_never_creates_the_key_file() {
        let dir = ScratchDir::create("sb-doctor").unwrap();
        let check = master_key(dir.path(), |_| None);
        assert_eq!(check.status, Status::Ok, "{}", check.line());
        assert!(
            !key_file_path(dir.path()).exists(),
            "the doctor created the key file"
        );
    }

    #[test]
    fn a_bad_master_key_in_the_environment_fails() {
        let dir = ScratchDir::create("sb-doctor").unwrap();
        let check = master_key(dir.path(), |name| {
            (name == ENV_MASTER_KEY).then(|| "not a key".to_string())
        });
        assert_eq!(check.status, Status::Fail, "{}", check.line());
        let good = "1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let check = master_key(dir.path(), |name| {
            (name == ENV_MASTER_KEY).then(|| good.to_string())
        });
        assert_eq!(check.status, Status::Ok, "{}", check.line());
    }

    #[test]
    fn a_key_file_others_can_read_fails() {
        use std::os::unix::fs::PermissionsExt;
        let dir = ScratchDir::create("sb-doctor").unwrap();
        let file = key_file_path(dir.path());
        std::fs::write(&file, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(master_key(dir.path(), |_| None).status, Status::Ok);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(master_key(dir.path(), |_| None).status, Status::Fail);
    }

    #[test]
    fn the_data_directory_probe_leaves_nothing_behind() {
        let dir = ScratchDir::create("sb-doctor").unwrap();
        assert_eq!(data_directory(dir.path()).status, Status::Ok);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(data_directory(&dir.join("missing")).status, Status::Fail);
        std::fs::write(dir.join("file"), "x").unwrap();
        assert_eq!(data_directory(&dir.join("file")).status, Status::Fail);
    }

    #[test]
    fn lines_name_the_status_and_the_check() {
        assert_eq!(Check::fail(DATABASE, "gone").line(), "FAIL database: gone");
        assert_eq!(Check::ok(DATABASE, "fine").line(), "ok   database: fine");
    }
}
