//! `switchboard demo`: the whole product on this machine, on the real data plane. It starts the
//! server on the embedded default (SQLite in a fresh temporary data directory) with the local
//! sandbox provider, and the scripted OpenAI-compatible model server as provider `openai`; then,
//! as a client over real HTTP and WebSocket ([`crate::cli::client`], [`crate::cli::tail`]), it
//! creates an org, stores a BYOK key, opens a session, sends a prompt that makes the agent run a
//! real command in its sandbox, prints the events as they arrive, and ends with the run's record
//! from the ledger. Then it shuts everything down and checks that no process of the sandbox is
//! left.
//!
//! The agent is real OpenCode when it is installed (`--opencode`, `SWITCHBOARD_OPENCODE`, the
//! repository's `tools/` directory, or `opencode` on `PATH`), else the scripted ACP agent
//! (`scripted-acp-agent`, next to this binary). With OpenCode the demo also shows that the model
//! server received exactly the tenant's BYOK key.
//!
//! Every wait has a deadline; the exit code is 0 only when the run completed, its ledger record
//! was read (and, with OpenCode, the model server saw the tenant's key) and the shutdown was clean.

use crate::cli::client::{CliError, Connection};
use crate::cli::render;
use crate::cli::tail::{self, TailEnd, Until};
use crate::config::ServeConfig;
use crate::deployment::OpenOptions;
use crate::scripted_model::ScriptedModelServer;
use async_trait::async_trait;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_adapters::local_sandbox::{LocalProcessSandboxProvider, BRIDGE_PROGRAM};
use switchboard_core::protocol::SpawnSpec;
use switchboard_core::SandboxId;
use switchboard_ports::sandbox::SandboxState;
use switchboard_ports::{SandboxProvider, SandboxProviderError};

/// The model the demo's session uses: a provider the scripted model server stands in for, and a
/// model the embedded price book prices (so the run has a cost).
pub const MODEL: &str = "openai/gpt-4o-mini";
/// The provider of [`MODEL`], routed to the scripted model server.
pub const PROVIDER: &str = "openai";
/// The scripted ACP agent's program (a binary of `switchboard-adapters`).
pub const SCRIPTED_AGENT_PROGRAM: &str = "scripted-acp-agent";
/// Where `scripts/` installs the pinned OpenCode, relative to the repository.
pub const OPENCODE_IN_TOOLS: &str =
    "tools/opencode-1.18.33/node_modules/opencode-linux-x64/bin/opencode";
/// The default prompt: the agent runs a real command in its sandbox's workspace.
pub const DEFAULT_PROMPT: &str =
    "tool:uname -sm && pwd && echo \"hello from the sandbox\" > hello.txt && ls";

/// How long the ledger may take to hold a finished run.
const LEDGER_WAIT: Duration = Duration::from_secs(30);
/// How long closing the session may take to end its sandbox.
const SANDBOX_END_WAIT: Duration = Duration::from_secs(30);
/// How long stopping the server or the model server may take.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// Which agent the demo runs in the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentChoice {
    /// OpenCode when it is installed, else the scripted ACP agent.
    Auto,
    /// OpenCode; an error when it is not installed.
    Opencode,
    /// The scripted ACP agent (no model: it follows a script and runs real commands).
    Scripted,
}

/// `switchboard demo [--agent auto|opencode|scripted] [--opencode PATH] …`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// The agent to run in the sandbox.
    #[arg(long, value_enum, default_value = "auto")]
    pub agent: AgentChoice,
    /// The OpenCode program (default: the repository's tools/ directory, then `opencode` on PATH).
    #[arg(long, env = "SWITCHBOARD_OPENCODE")]
    pub opencode: Option<PathBuf>,
    /// The prompt to send (`tool:<command>` makes the agent run `<command>` in its sandbox).
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// The longest the run may take, from the prompt to its `execution_complete`, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// Keep the temporary data directory (database, sandbox logs) instead of removing it.
    #[arg(long)]
    pub keep_data: bool,
}

/// The agent the demo settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agent {
    OpenCode { program: PathBuf, found: String },
    Scripted { program: PathBuf, why: String },
}

impl Agent {
    /// The session's agent name.
    fn name(&self) -> &'static str {
        match self {
            Agent::OpenCode { .. } => crate::app::DEFAULT_AGENT,
            Agent::Scripted { .. } => "scripted",
        }
    }

    fn program(&self) -> &Path {
        match self {
            Agent::OpenCode { program, .. } | Agent::Scripted { program, .. } => program,
        }
    }

    /// The command line the bridge starts the agent with.
    fn command_line(&self) -> String {
        match self {
            Agent::OpenCode { program, .. } => format!("{} acp", program.display()),
            Agent::Scripted { program, .. } => program.display().to_string(),
        }
    }
}

/// The command that builds the binaries the demo needs, for this binary's profile.
fn build_command() -> String {
    let release = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.file_name().map(|n| n == "release"))
        .unwrap_or(false);
    format!(
        "cargo build --locked --bins{}",
        if release { " --release" } else { "" }
    )
}

/// `name` next to the running `switchboard` binary, or an error saying how to build it.
pub fn sibling_binary(name: &str, package: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no directory", exe.display()))?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{name} is missing: the demo needs it at {} (next to this binary). Build it with `{}` at the repository root (it is the package {package})",
            path.display(),
            build_command()
        ))
    }
}

/// Where OpenCode is, and how it was found; `Ok(None)` when it is not installed. An explicitly
/// given path (flag or `SWITCHBOARD_OPENCODE`) that is not a file is an error.
pub fn find_opencode(given: Option<&Path>) -> Result<Option<(PathBuf, String)>, String> {
    if let Some(path) = given {
        return if path.is_file() {
            Ok(Some((
                absolute(path)?,
                "--opencode / SWITCHBOARD_OPENCODE".into(),
            )))
        } else {
            Err(format!(
                "OpenCode was given as {} (--opencode or SWITCHBOARD_OPENCODE), which is not a file",
                path.display()
            ))
        };
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    for root in [cwd, repo] {
        let candidate = root.join(OPENCODE_IN_TOOLS);
        if candidate.is_file() {
            let path = candidate.canonicalize().unwrap_or(candidate);
            return Ok(Some((path, "the repository's tools/ directory".into())));
        }
    }
    Ok(
        switchboard_adapters::local_sandbox::find_on_path("opencode")
            .map(|path| (path, "opencode on PATH".into())),
    )
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(path))
    }
}

/// Settles the agent from the choice and what is installed.
pub fn choose_agent(choice: AgentChoice, opencode: Option<&Path>) -> Result<Agent, String> {
    let scripted = |why: String| -> Result<Agent, String> {
        Ok(Agent::Scripted {
            program: sibling_binary(SCRIPTED_AGENT_PROGRAM, "switchboard-adapters")?,
            why,
        })
    };
    let agent = match choice {
        AgentChoice::Scripted => scripted("--agent scripted".into())?,
        AgentChoice::Opencode => match find_opencode(opencode)? {
            Some((program, found)) => Agent::OpenCode { program, found },
            None => {
                return Err(format!(
                    "--agent opencode: OpenCode is not installed. Give its program with --opencode PATH or SWITCHBOARD_OPENCODE, install it with `scripts/install-opencode.sh` (into {OPENCODE_IN_TOOLS}), or put `opencode` on PATH"
                ))
            }
        },
        AgentChoice::Auto => match find_opencode(opencode)? {
            Some((program, found)) => Agent::OpenCode { program, found },
            None => scripted(format!(
                "OpenCode is not installed: no --opencode, no SWITCHBOARD_OPENCODE, no {OPENCODE_IN_TOOLS}, no opencode on PATH; `scripts/install-opencode.sh` installs it"
            ))?,
        },
    };
    if agent
        .program()
        .to_string_lossy()
        .contains(char::is_whitespace)
    {
        return Err(format!(
            "the agent program's path {} holds a space, which an agent command line cannot carry",
            agent.program().display()
        ));
    }
    Ok(agent)
}

/// A key as it may be shown: its first eight characters and its last four.
pub fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 12 {
        return "…".to_string();
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// The local sandbox provider, remembering which sandboxes it spawned so that the demo can check
/// each one ended.
struct RecordingSandboxProvider {
    inner: Arc<LocalProcessSandboxProvider>,
    spawned: Mutex<Vec<SandboxId>>,
}

impl RecordingSandboxProvider {
    fn spawned(&self) -> Vec<SandboxId> {
        self.spawned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl SandboxProvider for RecordingSandboxProvider {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<SandboxId, SandboxProviderError> {
        let id = self.inner.spawn(spec).await?;
        self.spawned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.clone());
        if let Some(pgid) = self.inner.process_group(&id) {
            println!(
                "  sandbox    {id} started: process group {pgid}, workspace {}",
                self.inner
                    .workspace(&id)
                    .map(|w| w.display().to_string())
                    .unwrap_or_default()
            );
        }
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

/// The processes (pids) of process group `pgid` that are still alive (zombies count as gone).
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let mut fields = after.split_whitespace();
            let state = fields.next().unwrap_or("X");
            let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
            group == Some(pgid) && state != "Z" && state != "X"
        })
        .collect()
}

/// What the journey part of the demo produced.
#[derive(Default)]
struct Journey {
    /// The org's API key, once the org exists.
    api_key: Option<String>,
    /// The session, once it exists.
    session_id: Option<String>,
}

/// Runs the demo; `Err` is the sentence to print. Everything started is stopped either way.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    crate::serve::install_crypto_provider();
    let agent = choose_agent(args.agent, args.opencode.as_deref())?;
    let bridge = sibling_binary(BRIDGE_PROGRAM, "switchboard-bridge")?;

    println!("switchboard demo: the server, a local sandbox running the bridge and an agent, a scripted model server");
    match &agent {
        Agent::OpenCode { program, found } => {
            println!(
                "  agent      OpenCode at {} (found: {found})",
                program.display()
            )
        }
        Agent::Scripted { program, why } => println!(
            "  agent      the scripted ACP agent at {} ({why})",
            program.display()
        ),
    }

    let data_dir =
        std::env::temp_dir().join(format!("switchboard-demo-{}", crate::mint::uuid_v7()));
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    println!(
        "  data       {} (a fresh embedded SQLite deployment; {})",
        data_dir.display(),
        if args.keep_data {
            "kept at the end (--keep-data)"
        } else {
            "removed at the end unless --keep-data"
        }
    );

    let outcome = with_data_dir(&args, &agent, &bridge, &data_dir).await;
    if args.keep_data {
        println!("  data       kept at {}", data_dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(&data_dir) {
        eprintln!("could not remove {}: {e}", data_dir.display());
    }
    outcome
}

/// Starts the scripted model server, runs the rest, and stops it.
async fn with_data_dir(
    args: &DemoArgs,
    agent: &Agent,
    bridge: &Path,
    data_dir: &Path,
) -> Result<(), String> {
    let model = ScriptedModelServer::start()
        .await
        .map_err(|e| format!("cannot start the scripted model server: {e}"))?;
    println!(
        "  model      the scripted OpenAI-compatible model server at {} (provider {PROVIDER})",
        model.base_url()
    );
    let outcome = with_model_server(args, agent, bridge, data_dir, &model).await;
    if tokio::time::timeout(STOP_WAIT, model.stop()).await.is_err() {
        return Err(format!(
            "the scripted model server did not stop within {STOP_WAIT:?}"
        ));
    }
    outcome?;
    println!("  model      the scripted model server stopped");
    Ok(())
}

/// What the model server saw: with OpenCode, it must have been called, and always with exactly
/// the tenant's key.
fn check_byok(agent: &Agent, model: &ScriptedModelServer, byok: &str) -> Result<(), String> {
    let requests = model.requests();
    match agent {
        Agent::OpenCode { .. } => {
            let expected = format!("Bearer {byok}");
            let wrong: Vec<String> = requests
                .iter()
                .filter(|r| r.authorization.as_deref() != Some(expected.as_str()))
                .map(|r| {
                    r.authorization
                        .as_deref()
                        .map(|a| redact(a.strip_prefix("Bearer ").unwrap_or(a)))
                        .unwrap_or_else(|| "no Authorization".into())
                })
                .collect();
            if requests.is_empty() {
                return Err("BYOK: OpenCode never called the model server".into());
            }
            if !wrong.is_empty() {
                return Err(format!(
                    "BYOK: the model server saw {} of {} requests without the tenant's key (it saw {})",
                    wrong.len(),
                    requests.len(),
                    wrong.join(", ")
                ));
            }
            println!(
                "BYOK: the model server saw {} requests, every one with Authorization: Bearer {} (the tenant's key)",
                requests.len(),
                redact(byok)
            );
        }
        Agent::Scripted { .. } => println!(
            "BYOK: the scripted ACP agent calls no model (the model server saw {} requests); with OpenCode the demo shows the tenant's key reaching the model server",
            requests.len()
        ),
    }
    Ok(())
}

/// Starts the server, runs the journey and checks what the model server saw; stops the server.
async fn with_model_server(
    args: &DemoArgs,
    agent: &Agent,
    bridge: &Path,
    data_dir: &Path,
    model: &ScriptedModelServer,
) -> Result<(), String> {
    let mut config = ServeConfig::embedded(data_dir.to_path_buf());
    config.bridge = Some(bridge.to_path_buf());
    config.providers = vec![(PROVIDER.to_string(), model.base_url())];
    let mut local = config.local_sandbox();
    local = local.with_agent_command(agent.name(), agent.command_line());
    let provider = Arc::new(
        LocalProcessSandboxProvider::new(local)
            .map_err(|e| format!("the local sandbox provider: {e}"))?,
    );
    println!("  sandboxes  {}", provider.isolation());
    let recorded = Arc::new(RecordingSandboxProvider {
        inner: provider.clone(),
        spawned: Mutex::new(Vec::new()),
    });
    let clock = Arc::new(switchboard_adapters::system_clock::SystemClock::new());
    let server =
        crate::serve::start_with(config, recorded.clone(), clock, OpenOptions::default()).await?;
    println!(
        "  server     {} ({})",
        server.http_url(),
        server.deployment.described
    );

    let byok = crate::mint::secret("sk-demo-").expose()[..32].to_string();
    let mut journey = Journey::default();
    let result = match client_journey(args, agent, &server, &byok, &mut journey).await {
        Ok(()) => check_byok(agent, model, &byok),
        Err(e) => Err(e),
    };

    // Shut down, whatever happened: the session, its sandbox, the server.
    println!("shutting down:");
    let mut problems = Vec::new();
    if let (Some(key), Some(id)) = (&journey.api_key, &journey.session_id) {
        match close_session(&server, key, id).await {
            Ok(()) => println!("  session    {id} closed"),
            Err(e) => problems.push(format!("closing the session: {e}")),
        }
    }
    for id in recorded.spawned() {
        match end_sandbox(&provider, &id).await {
            Ok(line) => println!("  sandbox    {line}"),
            Err(e) => problems.push(e),
        }
    }
    match tokio::time::timeout(STOP_WAIT, server.stop()).await {
        Ok(Ok(())) => println!("  server     stopped"),
        Ok(Err(e)) => problems.push(format!("the server ended with an error: {e}")),
        Err(_) => problems.push(format!("the server did not stop within {STOP_WAIT:?}")),
    }
    match (result, problems.is_empty()) {
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => Err(format!("while shutting down: {}", problems.join("; "))),
        (Err(e), true) => Err(e),
        (Err(e), false) => Err(format!(
            "{e}; and while shutting down: {}",
            problems.join("; ")
        )),
    }
}

/// Closes the session over the API (the server then ends its sandbox).
async fn close_session(
    server: &crate::serve::RunningServer,
    api_key: &str,
    id: &str,
) -> Result<(), String> {
    let conn = Connection::new(&server.http_url(), Some(api_key)).map_err(cli)?;
    tokio::time::timeout(STOP_WAIT, conn.close_session(id))
        .await
        .map_err(|_| format!("DELETE /v1/sessions/{id} took longer than {STOP_WAIT:?}"))?
        .map_err(cli)
}

/// Waits for sandbox `id` to end after the session closed (terminating it when it does not), then
/// checks that no process of its group is left.
async fn end_sandbox(
    provider: &LocalProcessSandboxProvider,
    id: &SandboxId,
) -> Result<String, String> {
    let pgid = provider.process_group(id);
    let exited = provider.exited(id).map_err(|e| e.to_string())?;
    let reason = match tokio::time::timeout(SANDBOX_END_WAIT, exited).await {
        Ok(reason) => reason,
        Err(_) => {
            // The server did not end it in time: end it here, and say so.
            provider
                .terminate(id)
                .await
                .map_err(|e| format!("sandbox {id} did not end: {e}"))?;
            format!(
                "terminated by the demo after the server left it running for {SANDBOX_END_WAIT:?}"
            )
        }
    };
    let Some(pgid) = pgid else {
        return Ok(format!("{id} ended ({reason})"));
    };
    let deadline = tokio::time::Instant::now() + SANDBOX_END_WAIT;
    loop {
        let left = group_members(pgid);
        if left.is_empty() {
            return Ok(format!(
                "{id} ended ({reason}); process group {pgid}: no process left"
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "sandbox {id}: processes {left:?} of its group {pgid} are still running"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cli(e: CliError) -> String {
    e.to_string()
}

/// The client's part: org, BYOK key, session, prompt, events, ledger record. What it created is
/// noted in `journey` as it goes, for the shutdown.
async fn client_journey(
    args: &DemoArgs,
    agent: &Agent,
    server: &crate::serve::RunningServer,
    byok: &str,
    journey: &mut Journey,
) -> Result<(), String> {
    let org = server
        .deployment
        .app
        .create_org("switchboard demo", None)
        .await
        .map_err(|e| format!("creating the org: {}: {}", e.code, e.message))?;
    journey.api_key = Some(org.api_key.clone());
    println!(
        "  org        {} with API key {}",
        org.org_id,
        redact(&org.api_key)
    );
    let conn = Connection::new(&server.http_url(), Some(&org.api_key)).map_err(cli)?;
    conn.put_credential(PROVIDER, byok).await.map_err(cli)?;
    println!(
        "  BYOK       PUT /v1/credentials/{PROVIDER}: the tenant's key {} is sealed in the vault",
        redact(byok)
    );
    let session = conn
        .create_session(MODEL, Some(agent.name()))
        .await
        .map_err(cli)?;
    let id = field(&session, "id")?;
    journey.session_id = Some(id.clone());
    println!("  session    {id} (model {MODEL}, agent {})", agent.name());
    let queued = conn.prompt(&id, &args.prompt).await.map_err(cli)?;
    let run_id = field(&queued, "run_id")?;
    println!("  prompt     {run_id}: {}", render::clip(&args.prompt, 200));
    println!("events, as the client receives them over the WebSocket:");
    let limit = Duration::from_secs(args.timeout_s.max(1));
    let end = tokio::time::timeout(
        limit,
        tail::tail(&conn, &id, None, Until::RunFinished(run_id.clone())),
    )
    .await
    .map_err(|_| {
        format!(
            "the run did not finish within {limit:?} (--timeout-s); the sandbox's log is bridge.log in its directory (--keep-data keeps it)"
        )
    })?
    .map_err(cli)?;
    match &end {
        TailEnd::RunFinished { status } if status == "completed" => {}
        TailEnd::RunFinished { status } => {
            return Err(format!("the run ended {status}, not completed"))
        }
        TailEnd::Closed => return Err("the session closed before the run finished".into()),
        TailEnd::Failed => return Err("the session failed before the run finished".into()),
        TailEnd::Interrupted => return Err("interrupted".into()),
    }

    // The ledger is written through an outbox: poll it, with a deadline.
    let deadline = tokio::time::Instant::now() + LEDGER_WAIT;
    let record = loop {
        match conn.run(&run_id).await {
            Ok(record) => break record,
            Err(e) if e.code == "not_found" && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(format!(
                    "the run's record is not in the ledger (GET /v1/runs/{run_id}): {e}"
                ))
            }
        }
    };
    print_record(&run_id, &record);
    Ok(())
}

fn field(value: &Value, name: &str) -> Result<String, String> {
    value
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("the server's answer has no \"{name}\": {value}"))
}

fn print_record(run_id: &str, record: &Value) {
    let s = |f: &str| record.get(f).and_then(Value::as_str).unwrap_or("-");
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let usage = record.get("usage");
    println!("run record from the ledger (GET /v1/runs/{run_id}):");
    println!(
        "  status {}, usage {} in / {} out tokens, cost {} µ$, {} events",
        s("status"),
        n(usage.and_then(|u| u.get("input_tokens"))),
        n(usage.and_then(|u| u.get("output_tokens"))),
        n(record.get("cost_micros")),
        n(record.get("event_count"))
    );
    println!(
        "  model {} (provider {}), session {}, org {}, API key {}",
        s("model"),
        s("provider"),
        s("session_id"),
        s("org_id"),
        s("api_key_id")
    );
    println!(
        "  queued {}, started {}, ended {}",
        s("queued_at"),
        s("started_at"),
        s("ended_at")
    );
    if let Some(events) = record.get("events").and_then(Value::as_array) {
        let kinds: Vec<&str> = events
            .iter()
            .filter_map(|e| e.get("type").and_then(Value::as_str))
            .collect();
        println!("  events {}", kinds.join(", "));
    }
}

/// `switchboard demo` from `main`: runs it on its own runtime, prints the outcome; the exit code.
pub fn main(args: DemoArgs) -> i32 {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard demo: cannot start a tokio runtime: {e}");
            return 1;
        }
    };
    let outcome = rt.block_on(run(args));
    rt.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(()) => {
            println!("demo complete: the run completed in the sandbox and its record was read from the ledger");
            0
        }
        Err(e) => {
            eprintln!("switchboard demo failed: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shown_by_prefix_and_last_four() {
        assert_eq!(redact("sk-demo-0123456789abcdef"), "sk-demo-…cdef");
        assert_eq!(redact("short"), "…");
    }

    #[test]
    fn an_explicit_opencode_that_is_not_a_file_is_an_error() {
        let e = find_opencode(Some(Path::new("/nonexistent/opencode"))).unwrap_err();
        assert!(
            e.contains("/nonexistent/opencode") && e.contains("not a file"),
            "{e}"
        );
        let e = choose_agent(
            AgentChoice::Opencode,
            Some(Path::new("/nonexistent/opencode")),
        )
        .unwrap_err();
        assert!(e.contains("SWITCHBOARD_OPENCODE"), "{e}");
    }

    #[test]
    fn a_missing_binary_names_the_command_that_builds_it() {
        let e = sibling_binary("no-such-program", "switchboard-nothing").unwrap_err();
        assert!(e.contains("no-such-program is missing"), "{e}");
        assert!(e.contains("cargo build --locked --bins"), "{e}");
    }
}
