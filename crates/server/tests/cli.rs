//! The `switchboard` binary's operator and client commands, run as a user runs them (the built
//! binary in a child process): `admin create-org` prints one JSON line whose key authenticates
//! against a server on the same data; `doctor` passes on a fresh migrated data directory, fails
//! (exit 1, naming the check) on a missing or unwritable one and on a schema newer or older than
//! the binary, and writes nothing; `session new|prompt|list|tail` drive a real server started in
//! this process, with the test playing the sandbox over the sandbox WebSocket.

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;
use switchboard_adapters::sql::scratch::{
    postgres_gate, record_unknown_migration, ScratchDir, ScratchPostgres,
};
use switchboard_adapters::sql::{connect_postgres, connect_sqlite, Db};
use switchboard_adapters::system_clock::SystemClock;
use switchboard_core::protocol::{
    Event, SandboxMessage, ServerToSandbox, SpawnSpec, TerminalStatus, Usage,
};
use switchboard_core::{Principal, SandboxId};
use switchboard_fakes::sandbox_provider::InMemorySandboxProvider;
use switchboard_ports::sandbox::SandboxState;
use switchboard_ports::{SandboxProvider, SandboxProviderError};
use switchboard_server::app::CreatedOrg;
use switchboard_server::config::ServeConfig;
use switchboard_server::serve::{self, RunningServer};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The longest any single wait may take: a hang is a failure, never a pass.
const WAIT: Duration = Duration::from_secs(30);
/// A model the embedded price table knows.
const MODEL: &str = "openai/gpt-4o-mini";

/// Whether the Postgres half can run. Under `CI=true` a missing Postgres is a failure; elsewhere the
/// reason is printed and the half is skipped.
fn postgres_available() -> bool {
    match postgres_gate() {
        Ok(()) => true,
        Err(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must provide Postgres: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping the Postgres half: {reason}");
            false
        }
    }
}

// ----- running the binary ---------------------------------------------------------------------

/// The binary with an environment of our choosing: nothing from the developer's shell that the
/// commands read (the test passes what it means explicitly).
fn switchboard(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args);
    for name in [
        "DATABASE_URL",
        "SWITCHBOARD_DATA_DIR",
        "SWITCHBOARD_MASTER_KEY",
        "SWITCHBOARD_MASTER_KEY_PREVIOUS",
        "SWITCHBOARD_URL",
        "SWITCHBOARD_API_KEY",
        "SWITCHBOARD_LISTEN",
        "SWITCHBOARD_PUBLIC_URL",
        "SWITCHBOARD_SANDBOX_PROVIDER",
        "SWITCHBOARD_BRIDGE",
        "SWITCHBOARD_REPO_GRANTS",
    ] {
        cmd.env_remove(name);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A child process being waited for on a blocking thread.
struct Spawned {
    pid: u32,
    done: tokio::task::JoinHandle<std::io::Result<Output>>,
}

impl Spawned {
    fn start(mut cmd: Command) -> Spawned {
        let child = cmd.spawn().expect("the switchboard binary starts");
        let pid = child.id();
        Spawned {
            pid,
            done: tokio::task::spawn_blocking(move || child.wait_with_output()),
        }
    }

    /// Its output once it exits; a child still running after [`WAIT`] is killed and fails the test.
    async fn finish(self) -> Run {
        match tokio::time::timeout(WAIT, self.done).await {
            Ok(joined) => Run(joined
                .expect("the waiting thread")
                .expect("the child's output")),
            Err(_) => {
                let _ = Command::new("kill")
                    .arg("-9")
                    .arg(self.pid.to_string())
                    .status();
                panic!(
                    "switchboard (pid {}) did not exit within {WAIT:?}",
                    self.pid
                );
            }
        }
    }
}

/// A finished run of the binary.
struct Run(Output);

impl Run {
    fn code(&self) -> i32 {
        self.0.status.code().expect("an exit code, not a signal")
    }
    fn stdout(&self) -> String {
        String::from_utf8(self.0.stdout.clone()).expect("utf-8 stdout")
    }
    fn stderr(&self) -> String {
        String::from_utf8(self.0.stderr.clone()).expect("utf-8 stderr")
    }
    fn lines(&self) -> Vec<String> {
        self.stdout().lines().map(str::to_string).collect()
    }
    /// Asserts exit code 0 and returns stdout.
    fn ok(&self) -> String {
        assert_eq!(
            self.code(),
            0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
}

async fn run(cmd: Command) -> Run {
    Spawned::start(cmd).finish().await
}

fn dir_arg(dir: &Path) -> String {
    dir.to_str().expect("a utf-8 scratch path").to_string()
}

// ----- admin create-org -----------------------------------------------------------------------

/// Runs `admin create-org` and checks it printed exactly one JSON line of the PROTOCOL.md shape.
async fn create_org(data_dir: &Path, email: &str, database_url: Option<&str>) -> CreatedOrg {
    let dir = dir_arg(data_dir);
    let mut cmd = switchboard(&[
        "admin",
        "create-org",
        "Acme CLI",
        "--email",
        email,
        "--data-dir",
        &dir,
    ]);
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    let out = run(cmd).await;
    let stdout = out.ok();
    assert_eq!(out.lines().len(), 1, "exactly one line: {stdout:?}");
    let value: Value = serde_json::from_str(&out.lines()[0]).expect("the line is JSON");
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["api_key", "org_id", "user_id"]);
    let created: CreatedOrg = serde_json::from_value(value).expect("the PROTOCOL.md shape");
    assert!(
        created.api_key.starts_with("sk_"),
        "an API key: {}",
        created.api_key
    );
    created
}

/// The key authenticates against a server started on the same data, over HTTP, as that org.
async fn key_authenticates(server: &RunningServer, created: &CreatedOrg) {
    serve::install_crypto_provider();
    let http = reqwest::Client::new();
    let answer = http
        .get(format!("{}/v1/sessions", server.http_url()))
        .bearer_auth(&created.api_key)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(answer.status().as_u16(), 200);
    let body: Value = answer.json().await.expect("a JSON body");
    assert_eq!(body["sessions"], serde_json::json!([]));
    let wrong = http
        .get(format!("{}/v1/sessions", server.http_url()))
        .bearer_auth("sk_not_a_key")
        .send()
        .await
        .expect("the server answers");
    assert_eq!(wrong.status().as_u16(), 401);
    let principal = server
        .deployment
        .app
        .authenticate(Some(&format!("Bearer {}", created.api_key)))
        .await
        .expect("the key authenticates");
    assert_eq!(principal.org(), &created.org_id);
    assert_eq!(principal.user(), &created.user_id);
}

fn sandboxes() -> Arc<InMemorySandboxProvider> {
    Arc::new(InMemorySandboxProvider::new())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_create_org_prints_one_json_line_whose_key_authenticates_on_sqlite() {
    let dir = ScratchDir::create("sb-cli").unwrap();
    let created = create_org(dir.path(), "owner@acme.test", None).await;
    let server = serve::start(
        ServeConfig::embedded(dir.path().to_path_buf()),
        sandboxes(),
        Arc::new(SystemClock::new()),
    )
    .await
    .expect("the server starts");
    key_authenticates(&server, &created).await;
    // A second org on the same data is a different tenant with its own key.
    let second = create_org(dir.path(), "owner@beta.test", None).await;
    assert_ne!(second.org_id, created.org_id);
    key_authenticates(&server, &second).await;
    // An owner email already taken is refused, and nothing is printed on stdout.
    let taken = run(switchboard(&[
        "admin",
        "create-org",
        "Gamma",
        "--email",
        "owner@acme.test",
        "--data-dir",
        &dir_arg(dir.path()),
    ]))
    .await;
    assert_eq!(taken.code(), 1);
    assert_eq!(taken.stdout(), "");
    assert!(taken.stderr().contains("conflict"), "{}", taken.stderr());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_create_org_prints_one_json_line_whose_key_authenticates_on_postgres() {
    if !postgres_available() {
        return;
    }
    let pg = ScratchPostgres::create()
        .await
        .expect("a scratch Postgres database");
    let dir = ScratchDir::create("sb-cli").unwrap();
    let created = create_org(dir.path(), "owner@acme.test", Some(&pg.url)).await;
    let mut config = ServeConfig::embedded(dir.path().to_path_buf());
    config.database_url = Some(pg.url.clone());
    let server = serve::start(config, sandboxes(), Arc::new(SystemClock::new()))
        .await
        .expect("the server starts");
    key_authenticates(&server, &created).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_create_org_refuses_an_empty_name() {
    let dir = ScratchDir::create("sb-cli").unwrap();
    let out = run(switchboard(&[
        "admin",
        "create-org",
        "  ",
        "--data-dir",
        &dir_arg(dir.path()),
    ]))
    .await;
    assert_eq!(out.code(), 1);
    assert_eq!(out.stdout(), "", "no JSON line for a refused org");
    assert!(out.stderr().contains("invalid"), "{}", out.stderr());
}

// ----- doctor ---------------------------------------------------------------------------------

/// `(status, check name)` of every line the doctor printed.
fn checks(out: &Run) -> Vec<(String, String)> {
    out.lines()
        .iter()
        .map(|line| {
            let (status, rest) = line.split_once(' ').expect("a status, then the check");
            let name = rest
                .trim_start()
                .split_once(':')
                .expect("the check's name, then the reason")
                .0;
            (status.to_string(), name.to_string())
        })
        .collect()
}

const CHECKS: [&str; 7] = [
    "configuration",
    "data directory",
    "database",
    "migrations",
    "master key",
    "sandbox provider",
    "repo host",
];

fn assert_passed(out: &Run) {
    let stdout = out.ok();
    let checks = checks(out);
    assert_eq!(
        checks.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(),
        CHECKS,
        "one line per check:\n{stdout}"
    );
    assert!(
        checks.iter().all(|(status, _)| status != "FAIL"),
        "{stdout}"
    );
    // No flag names a provider: `local` when a bridge sits next to the binary, else none.
    assert!(
        stdout.contains("sandbox provider: none (no switchboard-bridge next to this binary")
            || stdout.contains("sandbox provider: local: bridge "),
        "says plainly which provider runs sandboxes:\n{stdout}"
    );
    assert!(
        stdout.contains("ok   repo host: none configured (no --repo-grant)"),
        "{stdout}"
    );
}

/// The line of `check`, after its status and name.
fn check_line(out: &Run, check: &str) -> (String, String) {
    out.lines()
        .iter()
        .find_map(|line| {
            let (status, rest) = line.split_once(' ')?;
            let detail = rest.trim_start().strip_prefix(&format!("{check}: "))?;
            Some((status.to_string(), detail.to_string()))
        })
        .unwrap_or_else(|| panic!("no {check} line in:\n{}", out.stdout()))
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_reports_the_sandbox_provider_and_the_repo_host() {
    use std::os::unix::fs::PermissionsExt;
    let dir = ScratchDir::create("sb-cli").unwrap();
    let data = dir_arg(&dir.join("data"));
    assert!(run(switchboard(&["migrate", "--data-dir", &data]))
        .await
        .ok()
        .starts_with("migrated:"));

    let out = run(switchboard(&[
        "doctor",
        "--data-dir",
        &data,
        "--sandbox-provider",
        "none",
    ]))
    .await;
    let (status, detail) = check_line(&out, "sandbox provider");
    assert_eq!(status, "warn", "{detail}");
    assert!(
        detail.starts_with("none (--sandbox-provider none)"),
        "{detail}"
    );

    // A local provider with a bridge: the bridge is named, and isolation said plainly.
    let bridge = dir.join("bridge");
    std::fs::write(&bridge, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&bridge, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bridge = dir_arg(&bridge);
    let out = run(switchboard(&[
        "doctor",
        "--data-dir",
        &data,
        "--bridge",
        &bridge,
    ]))
    .await;
    let (status, detail) = check_line(&out, "sandbox provider");
    assert!(
        detail.starts_with(&format!("local: bridge {bridge}; ")),
        "{detail}"
    );
    let bwrap_works = std::process::Command::new("bwrap")
        .args([
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--unshare-pid",
            "--",
            "true",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(bwrap_works, "CI must provide a working bubblewrap");
    }
    if bwrap_works {
        assert_eq!(status, "ok", "{detail}");
        assert!(detail.contains("isolation: bubblewrap ("), "{detail}");
    } else {
        assert_eq!(status, "warn", "{detail}");
        assert!(detail.contains("NOT isolated ("), "{detail}");
    }
    // `--sandbox-provider local` with no bridge anywhere fails, naming it.
    let mut cmd = switchboard(&["doctor", "--data-dir", &data, "--sandbox-provider", "local"]);
    cmd.env("PATH", "/usr/bin:/bin");
    let out = run(cmd).await;
    let (status, detail) = check_line(&out, "sandbox provider");
    if !Path::new(env!("CARGO_BIN_EXE_switchboard"))
        .with_file_name("switchboard-bridge")
        .is_file()
    {
        assert_eq!(status, "FAIL", "{detail}");
        assert!(detail.contains("switchboard-bridge"), "{detail}");
    }

    // Grants configure the git repo host; a bad grant fails the configuration and the host.
    let out = run(switchboard(&[
        "doctor",
        "--data-dir",
        &data,
        "--sandbox-provider",
        "none",
        "--repo-grant",
        "org_acme=https://github.com/acme/",
        "--repo-grant",
        "*=https://git.example.invalid/",
    ]))
    .await;
    let (status, detail) = check_line(&out, "repo host");
    assert_eq!(status, "ok", "{detail}");
    assert!(detail.starts_with("git (git version "), "{detail}");
    assert!(
        detail
            .contains("grants: org_acme=https://github.com/acme/, *=https://git.example.invalid/"),
        "{detail}"
    );
    assert!(
        !dir.join("data").join("repo-cache").exists(),
        "the doctor made the repo cache"
    );
    let mut cmd = switchboard(&["doctor", "--data-dir", &data, "--sandbox-provider", "none"]);
    cmd.env("SWITCHBOARD_REPO_GRANTS", "*=/etc");
    let out = run(cmd).await;
    assert_failed(&out, "configuration");
    assert_failed(&out, "repo host");
    assert!(
        check_line(&out, "repo host").1.contains("named org"),
        "{}",
        out.stdout()
    );
}

/// Asserts exit 1 with `check` among the failed ones.
fn assert_failed(out: &Run, check: &str) {
    assert_eq!(
        out.code(),
        1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout(),
        out.stderr()
    );
    let failed: Vec<String> = checks(out)
        .into_iter()
        .filter(|(s, _)| s == "FAIL")
        .map(|(_, name)| name)
        .collect();
    assert!(
        failed.iter().any(|name| name == check),
        "{check} should have failed:\n{}",
        out.stdout()
    );
}

/// The names of the files under `dir`, leaving out SQLite's WAL companions (`-wal`, `-shm`),
/// which come and go with every connection: what the doctor must not add to.
fn listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.retain(|name| !(name.ends_with("-wal") || name.ends_with("-shm")));
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_on_a_fresh_migrated_data_dir_and_writes_nothing() {
    let dir = ScratchDir::create("sb-cli").unwrap();
    let data = dir.join("data");
    let data_arg = dir_arg(&data);
    let migrated = run(switchboard(&["migrate", "--data-dir", &data_arg])).await;
    assert!(
        migrated.ok().starts_with("migrated:"),
        "{}",
        migrated.stdout()
    );
    let before = listing(&data);
    let out = run(switchboard(&["doctor", "--data-dir", &data_arg])).await;
    assert_passed(&out);
    assert_eq!(
        listing(&data),
        before,
        "the doctor changed the data directory"
    );
    assert!(
        !data.join("master.key").exists(),
        "the doctor must not generate the master key"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_once_an_org_exists_and_checks_the_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = ScratchDir::create("sb-cli").unwrap();
    create_org(dir.path(), "owner@acme.test", None).await;
    let key_file = dir.join("master.key");
    assert!(
        key_file.exists(),
        "opening the deployment made the key file"
    );
    assert_passed(&run(switchboard(&["doctor", "--data-dir", &dir_arg(dir.path())])).await);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_failed(
        &run(switchboard(&["doctor", "--data-dir", &dir_arg(dir.path())])).await,
        "master key",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_fails_on_a_missing_data_dir_without_creating_it() {
    let dir = ScratchDir::create("sb-cli").unwrap();
    let missing = dir.join("nowhere");
    let out = run(switchboard(&["doctor", "--data-dir", &dir_arg(&missing)])).await;
    assert_failed(&out, "data directory");
    assert_failed(&out, "database");
    assert!(!missing.exists(), "the doctor created the data directory");
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_fails_on_an_unwritable_data_dir() {
    // /proc/self is a directory in which nobody, root included, can create a file.
    let out = run(switchboard(&["doctor", "--data-dir", "/proc/self"])).await;
    assert_failed(&out, "data directory");
    // A data "directory" that is a file.
    let dir = ScratchDir::create("sb-cli").unwrap();
    std::fs::write(dir.join("file"), "x").unwrap();
    assert_failed(
        &run(switchboard(&[
            "doctor",
            "--data-dir",
            &dir_arg(&dir.join("file")),
        ]))
        .await,
        "data directory",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_fails_on_an_empty_data_dir_without_creating_the_database() {
    let dir = ScratchDir::create("sb-cli").unwrap();
    let out = run(switchboard(&["doctor", "--data-dir", &dir_arg(dir.path())])).await;
    assert_failed(&out, "database");
    assert_eq!(
        listing(dir.path()),
        Vec::<String>::new(),
        "the doctor wrote into the data directory"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_fails_on_an_invalid_configuration_or_master_key() {
    let dir = ScratchDir::create("sb-cli").unwrap();
    let data = dir_arg(dir.path());
    assert!(run(switchboard(&["migrate", "--data-dir", &data]))
        .await
        .ok()
        .starts_with("migrated:"));
    let mut cmd = switchboard(&["doctor", "--data-dir", &data]);
    cmd.env("SWITCHBOARD_PUBLIC_URL", "http://not-a-websocket");
    assert_failed(&run(cmd).await, "configuration");
    let mut cmd = switchboard(&["doctor", "--data-dir", &data]);
    cmd.env("SWITCHBOARD_MASTER_KEY", "too short");
    assert_failed(&run(cmd).await, "master key");
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_fails_on_a_schema_newer_than_the_binary() {
    let dir = ScratchDir::create("sb-cli").unwrap();
    let data = dir_arg(dir.path());
    assert!(run(switchboard(&["migrate", "--data-dir", &data]))
        .await
        .ok()
        .starts_with("migrated:"));
    let pool = connect_sqlite(&dir.join("switchboard.db"), 1)
        .await
        .unwrap();
    record_unknown_migration(&Db::Sqlite(pool.clone()), 9999)
        .await
        .unwrap();
    pool.close().await;
    let out = run(switchboard(&["doctor", "--data-dir", &data])).await;
    assert_failed(&out, "migrations");
    assert!(
        out.stdout().contains("9999"),
        "names the unknown migration:\n{}",
        out.stdout()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_fails_on_a_schema_behind_the_binary_and_does_not_migrate_it() {
    let dir = ScratchDir::create("sb-cli").unwrap();
    let data = dir_arg(dir.path());
    // A database file with no schema at all.
    connect_sqlite(&dir.join("switchboard.db"), 1)
        .await
        .unwrap()
        .close()
        .await;
    for _ in 0..2 {
        // Twice: had the first run migrated, the second would pass.
        let out = run(switchboard(&["doctor", "--data-dir", &data])).await;
        assert_failed(&out, "migrations");
        assert!(
            out.stdout().contains("switchboard migrate"),
            "says how to fix it:\n{}",
            out.stdout()
        );
    }
    assert!(run(switchboard(&["migrate", "--data-dir", &data]))
        .await
        .ok()
        .starts_with("migrated:"));
    assert_passed(&run(switchboard(&["doctor", "--data-dir", &data])).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_on_a_migrated_postgres() {
    if !postgres_available() {
        return;
    }
    let pg = ScratchPostgres::create()
        .await
        .expect("a scratch Postgres database");
    let dir = ScratchDir::create("sb-cli").unwrap();
    let data = dir_arg(dir.path());
    let mut migrate = switchboard(&["migrate", "--data-dir", &data]);
    migrate.env("DATABASE_URL", &pg.url);
    assert!(run(migrate).await.ok().contains("Postgres"));
    let mut doctor = switchboard(&["doctor", "--data-dir", &data]);
    doctor.env("DATABASE_URL", &pg.url);
    assert_passed(&run(doctor).await);
    let pool = connect_postgres(&pg.url, 1).await.unwrap();
    record_unknown_migration(&Db::Postgres(pool.clone()), 9999)
        .await
        .unwrap();
    pool.close().await;
    let mut newer = switchboard(&["doctor", "--data-dir", &data]);
    newer.env("DATABASE_URL", &pg.url);
    assert_failed(&run(newer).await, "migrations");
    let mut unreachable = switchboard(&["doctor", "--data-dir", &data]);
    unreachable.env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none");
    assert_failed(&run(unreachable).await, "database");
}

// ----- session new / prompt / list / tail -----------------------------------------------------

/// The in-memory provider, telling the test each spawn as it happens (so the test can play the
/// sandbox without polling).
struct NotifyingProvider {
    inner: InMemorySandboxProvider,
    spawned: mpsc::UnboundedSender<(SandboxId, SpawnSpec)>,
}

#[async_trait]
impl SandboxProvider for NotifyingProvider {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<SandboxId, SandboxProviderError> {
        let id = self.inner.spawn(spec).await?;
        let _ = self.spawned.send((id.clone(), spec.clone()));
        Ok(id)
    }
    async fn status(&self, id: &SandboxId) -> Result<SandboxState, SandboxProviderError> {
        self.inner.status(id).await
    }
    async fn terminate(&self, id: &SandboxId) -> Result<(), SandboxProviderError> {
        self.inner.terminate(id).await
    }
    async fn snapshot(&self, id: &SandboxId) -> Result<String, SandboxProviderError> {
        self.inner.snapshot(id).await
    }
}

/// A real server on scratch SQLite, and the spawns of its sandbox provider.
struct Served {
    server: RunningServer,
    spawns: mpsc::UnboundedReceiver<(SandboxId, SpawnSpec)>,
    _dir: ScratchDir,
}

impl Served {
    async fn start() -> Served {
        let dir = ScratchDir::create("sb-cli").unwrap();
        let (tx, spawns) = mpsc::unbounded_channel();
        let provider = Arc::new(NotifyingProvider {
            inner: InMemorySandboxProvider::new(),
            spawned: tx,
        });
        let server = serve::start(
            ServeConfig::embedded(dir.path().to_path_buf()),
            provider,
            Arc::new(SystemClock::new()),
        )
        .await
        .expect("the server starts");
        Served {
            server,
            spawns,
            _dir: dir,
        }
    }

    /// A new org, its key and principal, with a BYOK key for the model's provider.
    async fn tenant(&self, name: &str) -> (String, Principal) {
        let app = &self.server.deployment.app;
        let created = app.create_org(name, None).await.expect("an org");
        let principal = app
            .authenticate(Some(&format!("Bearer {}", created.api_key)))
            .await
            .expect("its key works");
        app.put_credential(&principal, "openai", "sk-byok-cli-test-0000000042")
            .await
            .expect("a BYOK key");
        (created.api_key, principal)
    }

    /// `switchboard session --server … --api-key KEY <args>`.
    fn session(&self, key: &str, args: &[&str]) -> Command {
        let url = self.server.http_url();
        let mut all = vec!["session", "--server", url.as_str(), "--api-key", key];
        all.extend_from_slice(args);
        switchboard(&all)
    }

    async fn next_spawn(&mut self) -> (SandboxId, SpawnSpec) {
        tokio::time::timeout(WAIT, self.spawns.recv())
            .await
            .expect("a sandbox spawn in time")
            .expect("the provider lives")
    }
}

/// Plays one sandbox: dials back with the spawn's token, says hello, answers the first `run` with
/// a reply in two deltas and a completed `run_finished`.
async fn play_sandbox(id: SandboxId, spec: SpawnSpec, reply: [&str; 2]) -> String {
    let mut request = spec
        .callback_url
        .as_str()
        .into_client_request()
        .expect("a ws:// callback");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", spec.token).parse().unwrap(),
    );
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("in time")
        .expect("the dial-back is accepted");
    let send = |m: SandboxMessage| Message::text(serde_json::to_string(&m).unwrap());
    ws.send(send(SandboxMessage::Hello {
        sandbox_id: id,
        agent: "scripted".into(),
        agent_version: "1".into(),
    }))
    .await
    .unwrap();
    let (run_id, text) = loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a run in time")
            .expect("the socket stays open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            if let Ok(ServerToSandbox::Run { run_id, text, .. }) =
                serde_json::from_str(text.as_str())
            {
                break (run_id, text);
            }
        }
    };
    for (n, piece) in reply.iter().enumerate() {
        let event = Event::MessageDelta {
            text: piece.to_string(),
        };
        ws.send(send(SandboxMessage::Event {
            run_id: run_id.clone(),
            n: n as u64 + 1,
            event,
        }))
        .await
        .unwrap();
    }
    let usage = Usage {
        input_tokens: 12,
        output_tokens: 5,
    };
    let finished = SandboxMessage::RunFinished {
        run_id,
        n: 3,
        status: TerminalStatus::Completed,
        stop_reason: Some("end_turn".into()),
        usage,
        error: None,
    };
    ws.send(send(finished)).await.unwrap();
    // Keep the socket open until the server acknowledges the last message (it is then durable).
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an ack in time");
        match frame {
            Some(Ok(Message::Text(t)))
                if matches!(
                    serde_json::from_str(t.as_str()),
                    Ok(ServerToSandbox::Ack { n: 3 })
                ) =>
            {
                break
            }
            Some(Ok(_)) => continue,
            _ => break,
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn session_new_prompt_and_list_against_a_real_server() {
    let served = Served::start().await;
    let (key, _) = served.tenant("cli sessions").await;

    let created = run(served.session(&key, &["new", "--model", MODEL])).await;
    let id = created.ok().trim().to_string();
    assert_eq!(created.lines().len(), 1, "new prints the id alone");
    assert!(id.starts_with("ses_"), "a session id: {id}");

    let queued = run(served.session(&key, &["prompt", &id, "list the files"])).await;
    let line = queued.ok();
    assert!(line.starts_with("run_"), "the run id first: {line}");
    assert!(
        line.contains("position 0"),
        "the first prompt runs now: {line}"
    );
    let second = run(served.session(&key, &["prompt", &id, "and then the tests"]))
        .await
        .ok();
    assert!(
        second.contains("position 1"),
        "the second waits behind the first: {second}"
    );

    // Through the environment instead of flags.
    let mut list = switchboard(&["session", "list"]);
    list.env("SWITCHBOARD_URL", served.server.http_url())
        .env("SWITCHBOARD_API_KEY", &key);
    let listed = run(list).await;
    let lines = listed.lines();
    assert_eq!(lines.len(), 1, "{}", listed.stdout());
    assert!(
        lines[0].starts_with(&format!("{id}  ")) && lines[0].contains(MODEL),
        "{}",
        lines[0]
    );

    // Another org sees none of it.
    let (other, _) = served.tenant("cli other").await;
    let theirs = run(served.session(&other, &["list"])).await;
    assert_eq!(theirs.ok(), "");
    let refused = run(served.session(&other, &["prompt", &id, "hello"])).await;
    assert_eq!(refused.code(), 1);
    assert!(
        refused.stderr().starts_with("error: not_found: "),
        "{}",
        refused.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn session_errors_print_the_api_error_and_exit_1() {
    let served = Served::start().await;
    let (key, _) = served.tenant("cli errors").await;

    let no_provider = run(served.session(&key, &["new", "--model", "gpt-4o"])).await;
    assert_eq!(no_provider.code(), 1);
    assert_eq!(no_provider.stdout(), "");
    assert!(
        no_provider.stderr().starts_with("error: invalid_model: "),
        "{}",
        no_provider.stderr()
    );

    let bad_key = run(served.session("sk_wrong", &["list"])).await;
    assert_eq!(bad_key.code(), 1);
    assert!(
        bad_key.stderr().starts_with("error: unauthorized: "),
        "{}",
        bad_key.stderr()
    );

    let bad_tail = run(served.session("sk_wrong", &["tail", "ses_whatever"])).await;
    assert_eq!(bad_tail.code(), 1);
    assert!(
        bad_tail.stderr().starts_with("error: unauthorized: "),
        "{}",
        bad_tail.stderr()
    );

    let no_key = run(switchboard(&[
        "session",
        "--server",
        &served.server.http_url(),
        "list",
    ]))
    .await;
    assert_eq!(no_key.code(), 1);
    assert!(
        no_key
            .stderr()
            .starts_with("error: unauthorized: no API key"),
        "{}",
        no_key.stderr()
    );

    let nobody = run(switchboard(&[
        "session",
        "--server",
        "http://127.0.0.1:1",
        "--api-key",
        &key,
        "list",
    ]))
    .await;
    assert_eq!(nobody.code(), 1);
    assert!(
        nobody
            .stderr()
            .starts_with("error: unavailable: cannot reach"),
        "{}",
        nobody.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn session_new_with_a_prompt_streams_the_run_until_it_completes() {
    let mut served = Served::start().await;
    let (key, _) = served.tenant("cli stream").await;
    let client =
        Spawned::start(served.session(&key, &["new", "--model", MODEL, "--prompt", "say hello"]));
    let (sandbox_id, spec) = served.next_spawn().await;
    let prompt = play_sandbox(sandbox_id, spec, ["Hello from ", "the sandbox"]).await;
    assert_eq!(prompt, "say hello");

    let out = client.finish().await;
    let stdout = out.ok();
    let lines = out.lines();
    assert!(
        lines[0].starts_with("ses_"),
        "the session id first:\n{stdout}"
    );
    let kinds: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap_or(""))
        .collect();
    for kind in [
        "run.queued",
        "run.started",
        "message.delta",
        "execution_complete",
    ] {
        assert!(kinds.contains(&kind), "{kind} is shown:\n{stdout}");
    }
    assert!(
        stdout.contains("Hello from") && stdout.contains("the sandbox"),
        "the reply is shown:\n{stdout}"
    );
    let last = lines.last().unwrap();
    assert!(
        last.contains("execution_complete")
            && last.contains("completed")
            && last.contains("12 in / 5 out"),
        "{last}"
    );
    let seqs: Vec<u64> = lines[1..]
        .iter()
        .map(|l| {
            l.trim_start_matches('#')
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "each event once, in order: {seqs:?}"
    );
    assert!(
        !out.stderr().contains('\u{280b}'),
        "no spinner without a terminal:\n{}",
        out.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn session_tail_streams_until_the_session_closes() {
    let served = Served::start().await;
    let (key, principal) = served.tenant("cli tail").await;
    let id = run(served.session(&key, &["new", "--model", MODEL]))
        .await
        .ok()
        .trim()
        .to_string();
    let tail = Spawned::start(served.session(&key, &["tail", &id]));
    served
        .server
        .deployment
        .app
        .close(&principal, &id)
        .await
        .expect("the session closes");
    let out = tail.finish().await;
    let stdout = out.ok();
    let last = out.lines().last().cloned().unwrap_or_default();
    assert!(
        last.contains("session.status") && last.ends_with("closed"),
        "ends on the close:\n{stdout}"
    );
    assert!(
        stdout.lines().next().is_some_and(|l| l.starts_with("#1 ")),
        "replays from the first event:\n{stdout}"
    );

    // `--after` skips what was seen: after the last event, a closed session prints nothing more.
    let last_seq = last
        .trim_start_matches('#')
        .split_whitespace()
        .next()
        .expect("a seq")
        .to_string();
    let again = run(served.session(&key, &["tail", &id, "--after", &last_seq])).await;
    assert_eq!(again.ok(), "", "nothing after the last event");
}
