//! `LocalProcessSandboxProvider`: the embedded default `SandboxProvider`. A sandbox is a fresh
//! directory on this machine and the bridge program started as a child in its own process group,
//! with a minimal environment, under bubblewrap when it is installed.
//!
//! # Layout
//! `<root>/<sandbox id>/` holds `workspace/` (the agent's cwd: empty, or a `git clone` of the spec's
//! repository at its ref), `home/` (the sandbox's private `HOME`), `bridge.log` (the bridge's
//! stdout and stderr) and `snapshots/<n>.tar.gz`. `terminate` removes `workspace/` and `home/`
//! and keeps the log and the snapshots. The server uses `<data dir>/sandboxes` as the root.
//!
//! # Environment of the bridge
//! Never the server's own environment (no `DATABASE_URL`, no `SWITCHBOARD_MASTER_KEY`): only
//! `PATH` and `LANG` (the server's values, or defaults), `HOME` (the private `home/`), the
//! variables the operator configured with [`LocalSandboxConfig::with_env`], the spec's `env`, and
//! the variables named by the `ENV_*` constants of this module (these always win over a spec
//! variable of the same name). `SWITCHBOARD_AGENT_COMMAND` is set when the provider knows a command
//! for the spec's agent ([`LocalSandboxConfig::with_agent_command`]; `opencode` → `opencode acp`).
//! Under bubblewrap the bridge also sees `PWD` (bwrap sets it to the workspace).
//!
//! # Isolation
//! With bubblewrap (`bwrap`) installed and working, the bridge runs under it: the system is
//! mounted read-only, the workspace and home read-write at their own paths, `/tmp` is private, the
//! configured hidden paths (the server's data directory) are covered by empty tmpfs mounts, PID,
//! IPC and UTS namespaces are private, and the network is shared so the bridge can dial back.
//! The bridge program, and the agent's program when its command names it by absolute path, are
//! bound in read-only even when they live under `/tmp` or a hidden path; anything else the agent
//! needs must be outside those. The rest of the file system (the server user's home included) is
//! visible read-only.
//! Without it the bridge is a plain process of the server's user; [`LocalProcessSandboxProvider::isolation`]
//! says so and the provider logs it once when it is built.
//!
//! # Lifetimes
//! `status` is the bridge's own state: `Running` while the process lives, `Exited` with its exit
//! code or signal once it ended. When the bridge exits, whatever it left in its process group is
//! killed. `terminate` sends SIGTERM to the whole group (under bubblewrap: to every member but
//! bwrap itself, so the bridge gets its grace), SIGKILL after a grace period, and is idempotent. A sandbox older than its spec's `max_s` is terminated by the provider; the idle
//! timeout is the bridge's to enforce (`SWITCHBOARD_IDLE_TIMEOUT_S`). Dropping the provider kills
//! every sandbox it still runs. If the server process itself dies, its bridges live on until their
//! idle timeout.
//!
//! # Snapshots
//! `snapshot` of a running sandbox writes a gzipped tarball of its workspace and returns the
//! tarball's absolute path; an exited sandbox is `Conflict`.
//!
//! # Prepared ahead
//! Under bubblewrap, setting up a sandbox (its directories, then bwrap's namespaces and mounts)
//! takes a few milliseconds of a session's start. So after each spawn the provider prepares the
//! next sandbox on a thread of its own ([`LocalSandboxConfig::prepare_ahead`], on by default):
//! its directories and log made, bubblewrap running with the same mounts as any other sandbox,
//! and inside it, instead of the bridge, a `/bin/sh` launcher waiting on its stdin (a pipe from
//! the provider). The next spawn without a repository takes it and writes to that pipe a
//! one-line script that execs `env -i` with the bridge's environment, program and arguments, each
//! single-quoted; the launcher sources it (so the shell reads it in blocks, not a byte per system
//! call), and the bridge runs with exactly that environment (plus `PWD`, as bwrap sets it for a
//! sandbox started directly) and stdin from /dev/null, so its process, group and environment are
//! those of a sandbox started at the spawn. Nothing secret is in the prepared sandbox before it is
//! taken; its lifetime starts when it is taken. A launcher whose pipe closes without the whole
//! script (the server died) exits without running anything. A spawn that cannot use it (a
//! repository to clone, another agent program to bind, a variable name `env` could misread, a
//! bridge path with `=`, or the launcher gone) starts its sandbox directly. Dropping the provider kills and removes the prepared sandbox; a server that dies
//! leaves at most its unused directory.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use switchboard_core::protocol::{RepoSpec, SpawnSpec};
use switchboard_core::SandboxId;
use switchboard_ports::sandbox::SandboxState;
use switchboard_ports::{SandboxProvider, SandboxProviderError};
use tokio::sync::watch;

/// The callback URL the bridge dials (`ws://…/sandbox/v1/sessions/{org}/{session}/ws`).
pub const ENV_CALLBACK_URL: &str = "SWITCHBOARD_CALLBACK_URL";
/// The one-time sandbox token, sent as `Authorization: Bearer`.
pub const ENV_SANDBOX_TOKEN: &str = "SWITCHBOARD_SANDBOX_TOKEN";
/// The sandbox's id, as the provider knows it (for `hello`).
pub const ENV_SANDBOX_ID: &str = "SWITCHBOARD_SANDBOX_ID";
/// `org:session`.
pub const ENV_SESSION_KEY: &str = "SWITCHBOARD_SESSION_KEY";
/// The absolute path of the workspace (also the bridge's cwd).
pub const ENV_WORKSPACE: &str = "SWITCHBOARD_WORKSPACE";
/// Seconds without a control plane after which the bridge ends itself (the spec's `idle_s`).
pub const ENV_IDLE_TIMEOUT_S: &str = "SWITCHBOARD_IDLE_TIMEOUT_S";
/// The longest the sandbox may live, in seconds (the spec's `max_s`; the provider enforces it).
pub const ENV_MAX_LIFETIME_S: &str = "SWITCHBOARD_MAX_LIFETIME_S";
/// The spec's agent name (e.g. `opencode`).
pub const ENV_AGENT: &str = "SWITCHBOARD_AGENT";
/// The agent's command line, program then arguments separated by spaces (e.g. `opencode acp`);
/// absent when the provider knows no command for the agent.
pub const ENV_AGENT_COMMAND: &str = "SWITCHBOARD_AGENT_COMMAND";

/// The bridge program's file name.
pub const BRIDGE_PROGRAM: &str = "switchboard-bridge";

const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const DEFAULT_LANG: &str = "C.UTF-8";
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;
/// The shell that runs [`LAUNCHER`] in a sandbox prepared ahead.
const LAUNCHER_SHELL: &str = "/bin/sh";
/// Where `env` may live (the launcher runs the bridge through `env -i`).
const ENV_PROGRAMS: [&str; 2] = ["/usr/bin/env", "/bin/env"];
/// The launcher of a sandbox prepared ahead (`sh -c LAUNCHER <env program>`): runs the script it
/// is sent on stdin, `{ exec "$0" -i 'NAME=value'… 'program' 'arg'… </dev/null; }` (see
/// `launch_message`). The shell reads a sourced file in blocks, where `read` would take a system
/// call per byte (a millisecond of a session's start for a 1 KiB message). Input that ends before
/// the closing brace is a syntax error, which `command` keeps from ending the shell: nothing runs
/// (exit 70).
const LAUNCHER: &str = "command . /dev/stdin; exit 70";
/// How long to wait for a group to die after SIGKILL before calling the sandbox lost.
const KILL_WAIT: Duration = Duration::from_secs(10);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Signals process groups. `pgid` is always one this provider created (its bridge's pid).
mod sys {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }

    /// Sends `sig` to every process of group `pgid`; false when the group is gone.
    pub fn signal_group(pgid: i32, sig: i32) -> bool {
        if pgid <= 1 {
            return false;
        }
        // SAFETY: kill(2) takes two integers and touches no memory of ours.
        unsafe { kill(-pgid, sig) == 0 }
    }

    /// Sends `sig` to every process of group `pgid` but its leader (found in /proc). Under
    /// bubblewrap the leader is bwrap itself, which would die at once on SIGTERM and leave the
    /// bridge no time to end cleanly; the bridge gets the signal directly instead.
    pub fn signal_group_but_leader(pgid: i32, sig: i32) {
        if pgid <= 1 {
            return;
        }
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for pid in entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            if pid != pgid && group_of(pid) == Some(pgid) {
                // SAFETY: as above.
                unsafe {
                    kill(pid, sig);
                }
            }
        }
    }

    /// The process group of `pid`, from `/proc/<pid>/stat`.
    fn group_of(pid: i32) -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let after = &stat[stat.rfind(')')? + 1..];
        after.split_whitespace().nth(2)?.parse().ok()
    }
}

/// Asks a sandbox to end (SIGTERM) so that its bridge can stop its agent cleanly.
fn ask_to_end(pgid: i32, under_bwrap: bool) {
    if under_bwrap {
        sys::signal_group_but_leader(pgid, SIGTERM);
    } else {
        sys::signal_group(pgid, SIGTERM);
    }
}

/// How the provider should isolate sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsolationChoice {
    /// Bubblewrap when `bwrap` is on `PATH` and works here, else none (said plainly).
    Auto,
    /// No isolation beyond the minimal environment and the private workspace.
    Off,
    /// Bubblewrap at this path; building the provider fails when it does not work.
    Bubblewrap(PathBuf),
}

/// How the provider actually isolates sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// Each bridge runs under bubblewrap.
    Bubblewrap { program: PathBuf },
    /// Each bridge is a plain process of the server's user; `reason` says why.
    None { reason: String },
}

impl Isolation {
    /// Whether sandboxes run under bubblewrap.
    pub fn is_isolated(&self) -> bool {
        matches!(self, Isolation::Bubblewrap { .. })
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Isolation::Bubblewrap { program } => write!(
                f,
                "bubblewrap ({}): read-only system, private workspace, home and /tmp, shared network",
                program.display()
            ),
            Isolation::None { reason } => write!(
                f,
                "NOT isolated ({reason}): each sandbox runs as a plain process of this user, with a minimal environment and its own workspace directory"
            ),
        }
    }
}

/// Settings of a [`LocalProcessSandboxProvider`].
#[derive(Debug, Clone)]
pub struct LocalSandboxConfig {
    /// Where sandbox directories are made (`<data dir>/sandboxes` for the server).
    pub root: PathBuf,
    /// The bridge program (default: [`default_bridge`], else `switchboard-bridge` on `PATH`).
    pub bridge: PathBuf,
    /// Arguments given to the bridge.
    pub bridge_args: Vec<String>,
    pub isolation: IsolationChoice,
    /// Agent name → command line, handed to the bridge as `SWITCHBOARD_AGENT_COMMAND`.
    pub agent_commands: BTreeMap<String, String>,
    /// Variables the operator gives every sandbox (e.g. `RUST_LOG`).
    pub env: BTreeMap<String, String>,
    /// Paths covered by an empty tmpfs under bubblewrap (the server's data directory).
    pub hidden: Vec<PathBuf>,
    /// How long `terminate` waits after SIGTERM before SIGKILL.
    pub terminate_grace: Duration,
    /// How long a `git clone` may take.
    pub clone_timeout: Duration,
    /// Under bubblewrap, keep the next sandbox prepared (see the module docs).
    pub prepare_ahead: bool,
}

impl LocalSandboxConfig {
    /// Defaults rooted at `root`: the default bridge, automatic isolation, `opencode` → `opencode
    /// acp`, a 5 s terminate grace and a 5 min clone timeout. `root` is hidden from sandboxes.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        LocalSandboxConfig {
            hidden: vec![root.clone()],
            root,
            bridge: default_bridge()
                .or_else(|| find_on_path(BRIDGE_PROGRAM))
                .unwrap_or_else(|| PathBuf::from(BRIDGE_PROGRAM)),
            bridge_args: Vec::new(),
            isolation: IsolationChoice::Auto,
            agent_commands: BTreeMap::from([("opencode".to_string(), "opencode acp".to_string())]),
            env: BTreeMap::new(),
            terminate_grace: Duration::from_secs(5),
            clone_timeout: Duration::from_secs(300),
            prepare_ahead: true,
        }
    }

    /// Runs `program` with `args` as the bridge.
    pub fn with_bridge(mut self, program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        self.bridge = program.into();
        self.bridge_args = args;
        self
    }

    pub fn with_isolation(mut self, isolation: IsolationChoice) -> Self {
        self.isolation = isolation;
        self
    }

    /// Hands `command` (program then arguments, separated by spaces) to bridges of `agent`.
    pub fn with_agent_command(
        mut self,
        agent: impl Into<String>,
        command: impl Into<String>,
    ) -> Self {
        self.agent_commands.insert(agent.into(), command.into());
        self
    }

    /// Gives every sandbox `name=value` (the reserved `SWITCHBOARD_*` variables still win).
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Covers `path` with an empty tmpfs inside bubblewrap.
    pub fn hide(mut self, path: impl Into<PathBuf>) -> Self {
        self.hidden.push(path.into());
        self
    }

    pub fn with_terminate_grace(mut self, grace: Duration) -> Self {
        self.terminate_grace = grace;
        self
    }

    pub fn with_clone_timeout(mut self, timeout: Duration) -> Self {
        self.clone_timeout = timeout;
        self
    }

    /// Whether to keep the next sandbox prepared under bubblewrap (default: yes).
    pub fn with_prepare_ahead(mut self, prepare_ahead: bool) -> Self {
        self.prepare_ahead = prepare_ahead;
        self
    }
}

/// `switchboard-bridge` next to the running executable, when it exists there.
pub fn bridge_next_to_current_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.join(BRIDGE_PROGRAM);
    candidate.is_file().then_some(candidate)
}

/// The default bridge: next to the running executable; for a test binary under
/// `target/<profile>/deps/`, the one in `target/<profile>/`.
pub fn default_bridge() -> Option<PathBuf> {
    bridge_next_to_current_exe().or_else(|| {
        let exe = std::env::current_exe().ok()?;
        let dir = exe.parent()?;
        if dir.file_name()? != "deps" {
            return None;
        }
        let candidate = dir.parent()?.join(BRIDGE_PROGRAM);
        candidate.is_file().then_some(candidate)
    })
}

/// The first `name` on the server's `PATH` that is a file.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The base arguments of bubblewrap: the system read-only, private /dev, /proc and /tmp, private
/// PID, IPC and UTS namespaces; the network is shared.
fn bwrap_base_args() -> Vec<String> {
    [
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
    ]
    .map(String::from)
    .to_vec()
}

/// Whether bubblewrap at `program` can start a process here (it needs user namespaces or setuid).
fn probe_bwrap(program: &Path) -> Result<(), String> {
    let mut args = bwrap_base_args();
    args.extend(["--".to_string(), "true".to_string()]);
    let out = std::process::Command::new(program)
        .args(&args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{} cannot start a sandbox here ({}): {}",
            program.display(),
            describe(Ok(out.status)),
            err.trim()
        ))
    }
}

/// How sandboxes would be isolated under `choice`, probing bubblewrap (it runs `true` in a
/// throw-away sandbox and writes nothing). `Err` when an explicit bubblewrap does not work.
pub fn resolve_isolation(choice: &IsolationChoice) -> Result<Isolation, String> {
    match choice {
        IsolationChoice::Off => Ok(Isolation::None {
            reason: "isolation is turned off by configuration".into(),
        }),
        IsolationChoice::Bubblewrap(program) => {
            probe_bwrap(program)?;
            Ok(Isolation::Bubblewrap {
                program: program.clone(),
            })
        }
        IsolationChoice::Auto => match find_on_path("bwrap") {
            None => Ok(Isolation::None {
                reason: "bubblewrap (bwrap) is not installed".into(),
            }),
            Some(program) => match probe_bwrap(&program) {
                Ok(()) => Ok(Isolation::Bubblewrap { program }),
                Err(e) => Ok(Isolation::None { reason: e }),
            },
        },
    }
}

/// Whether `path` is a file someone may execute.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What the exit of the bridge looks like in `SandboxState::Exited`.
fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "exited".to_string(),
        },
        Err(e) => format!("lost track of the bridge process: {e}"),
    }
}

struct Sandbox {
    pgid: i32,
    dir: PathBuf,
    workspace: PathBuf,
    /// `Some(reason)` once the bridge has exited (set by its waiter thread).
    exit: watch::Receiver<Option<String>>,
    terminated: bool,
    /// Whether `terminate` found the bridge still running (then the reason says so).
    terminated_while_running: bool,
    snapshots: u64,
}

/// A sandbox prepared ahead of its spawn: bubblewrap set up, the launcher waiting on `launch`.
struct Prepared {
    id: SandboxId,
    dir: PathBuf,
    workspace: PathBuf,
    home: PathBuf,
    /// The agent program bound into it; a spawn for another one does not take it.
    agent_program: Option<PathBuf>,
    child: std::process::Child,
    launch: std::process::ChildStdin,
}

impl Prepared {
    /// Kills it and removes its directory (blocks until bwrap is reaped).
    fn discard(mut self) {
        sys::signal_group(self.child.id() as i32, SIGKILL);
        drop(self.launch);
        let _ = self.child.wait();
        let _ = remove_tree(&self.dir);
    }
}

/// The prepared sandbox, shared with the thread that prepares it.
#[derive(Default)]
struct Ahead {
    ready: Option<Prepared>,
    preparing: Option<std::thread::JoinHandle<()>>,
    /// The provider is dropped: nothing more is prepared, and what is finished is discarded.
    closed: bool,
}

/// A [`SandboxProvider`] that runs each sandbox as a local process group. See the module docs.
pub struct LocalProcessSandboxProvider {
    config: LocalSandboxConfig,
    isolation: Isolation,
    boxes: Mutex<HashMap<SandboxId, Sandbox>>,
    /// The `env` program the launcher of a prepared sandbox runs, when sandboxes are prepared.
    launcher_env: Option<PathBuf>,
    ahead: Arc<Mutex<Ahead>>,
}

impl std::fmt::Debug for LocalProcessSandboxProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProcessSandboxProvider")
            .field("root", &self.config.root)
            .field("bridge", &self.config.bridge)
            .field("isolation", &self.isolation)
            .finish_non_exhaustive()
    }
}

fn not_found(id: &SandboxId) -> SandboxProviderError {
    SandboxProviderError::NotFound(format!("no sandbox {id}"))
}

fn unavailable(what: impl std::fmt::Display) -> SandboxProviderError {
    SandboxProviderError::Unavailable(what.to_string())
}

/// Makes a private (0700) directory and its parents.
fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Removes `path` and everything under it, first making read-only directories writable.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    fn writable(path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(path)?;
        if meta.is_dir() {
            let mut perms = meta.permissions();
            if perms.mode() & 0o700 != 0o700 {
                perms.set_mode(perms.mode() | 0o700);
                std::fs::set_permissions(path, perms)?;
            }
            for entry in std::fs::read_dir(path)? {
                writable(&entry?.path())?;
            }
        }
        Ok(())
    }
    match writable(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        _ => {}
    }
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `url` with any `user:password@` replaced by `***@`.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_string(),
    }
}

/// The user-info part of `url` (`user:password`), if any.
fn userinfo(url: &str) -> Option<&str> {
    let scheme_end = url.find("://")? + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(&rest[..at]).filter(|s| !s.is_empty())
}

/// The last few non-empty lines of a tool's stderr, with the repository's credentials scrubbed.
fn tail_of(stderr: &[u8], url: &str) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut text = text.replace(url, &redact_url(url));
    if let Some(info) = userinfo(url) {
        // The whole user info, then its secret half on its own (the password, or a lone token).
        let secret = info.split_once(':').map_or(info, |(_, password)| password);
        text = text.replace(info, "***");
        if !secret.is_empty() {
            text = text.replace(secret, "***");
        }
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    tail.chars().take(500).collect()
}

impl LocalProcessSandboxProvider {
    /// Builds the provider: makes `root`, resolves the bridge to an absolute path and the isolation
    /// (logging plainly when there is none). `Err` says what is wrong.
    pub fn new(mut config: LocalSandboxConfig) -> Result<Self, String> {
        private_dir(&config.root)
            .map_err(|e| format!("cannot create {}: {e}", config.root.display()))?;
        let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
        if config.root.is_relative() {
            config.root = cwd.join(&config.root);
        }
        config.hidden = config
            .hidden
            .iter()
            .map(|p| {
                if p.is_relative() {
                    cwd.join(p)
                } else {
                    p.clone()
                }
            })
            .collect();
        // A bare name is looked up on PATH now; a relative path is taken from the current
        // directory (the bridge's cwd is its workspace, so it must not be resolved from there).
        if config.bridge.components().count() == 1 && config.bridge.is_relative() {
            if let Some(found) = find_on_path(&config.bridge.to_string_lossy()) {
                config.bridge = found;
            }
        } else if config.bridge.is_relative() {
            config.bridge = cwd.join(&config.bridge);
        }
        let isolation = resolve_isolation(&config.isolation)?;
        if isolation.is_isolated() {
            tracing::info!(isolation = %isolation, bridge = %config.bridge.display(), "local sandboxes");
        } else {
            tracing::warn!(bridge = %config.bridge.display(), "local sandboxes are {isolation}");
        }
        // The launcher's programs must be there, and visible inside a sandbox.
        let usable =
            |program: &Path| is_executable(program) && !covered_in_sandbox(&config.hidden, program);
        let launcher_env =
            (config.prepare_ahead && isolation.is_isolated() && usable(Path::new(LAUNCHER_SHELL)))
                .then(|| ENV_PROGRAMS.iter().map(PathBuf::from).find(|p| usable(p)))
                .flatten();
        Ok(LocalProcessSandboxProvider {
            config,
            isolation,
            boxes: Mutex::new(HashMap::new()),
            launcher_env,
            ahead: Arc::default(),
        })
    }

    /// How sandboxes are isolated, in words an operator can act on.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// The bridge program this provider starts.
    pub fn bridge(&self) -> &Path {
        &self.config.bridge
    }

    /// Where sandbox directories are made.
    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// The workspace directory of sandbox `id`.
    pub fn workspace(&self, id: &SandboxId) -> Option<PathBuf> {
        self.lock().get(id).map(|b| b.workspace.clone())
    }

    /// The process group of sandbox `id` (its bridge's pid), for inspection.
    pub fn process_group(&self, id: &SandboxId) -> Option<i32> {
        self.lock().get(id).map(|b| b.pgid)
    }

    /// A future that resolves with the exit reason once sandbox `id`'s bridge has exited and
    /// whatever it left in its process group was killed. It does not borrow the provider.
    pub fn exited(
        &self,
        id: &SandboxId,
    ) -> Result<impl std::future::Future<Output = String> + Send + 'static, SandboxProviderError>
    {
        let mut exit = self
            .lock()
            .get(id)
            .ok_or_else(|| not_found(id))?
            .exit
            .clone();
        Ok(async move {
            match exit.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or_default(),
                Err(_) => "lost track of the bridge process".to_string(),
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, Sandbox>> {
        self.boxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bridge's whole environment.
    fn sandbox_env(
        &self,
        spec: &SpawnSpec,
        id: &SandboxId,
        workspace: &Path,
        home: &Path,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string()),
        );
        env.insert(
            "LANG".to_string(),
            std::env::var("LANG").unwrap_or_else(|_| DEFAULT_LANG.to_string()),
        );
        env.extend(self.config.env.clone());
        env.extend(spec.env.clone());
        let mut reserved = vec![
            ("HOME", home.display().to_string()),
            (ENV_CALLBACK_URL, spec.callback_url.clone()),
            (ENV_SANDBOX_TOKEN, spec.token.clone()),
            (ENV_SANDBOX_ID, id.to_string()),
            (ENV_SESSION_KEY, spec.session_key.clone()),
            (ENV_WORKSPACE, workspace.display().to_string()),
            (ENV_IDLE_TIMEOUT_S, spec.timeouts.idle_s.to_string()),
            (ENV_MAX_LIFETIME_S, spec.timeouts.max_s.to_string()),
            (ENV_AGENT, spec.agent.clone()),
        ];
        env.remove(ENV_AGENT_COMMAND);
        if let Some(command) = self.config.agent_commands.get(&spec.agent) {
            reserved.push((ENV_AGENT_COMMAND, command.clone()));
        }
        for (name, value) in reserved {
            env.insert(name.to_string(), value);
        }
        env
    }

    /// The command that starts the bridge, directly or under bubblewrap.
    fn bridge_command(
        &self,
        workspace: &Path,
        home: &Path,
        agent_program: Option<&Path>,
    ) -> std::process::Command {
        match &self.isolation {
            Isolation::None { .. } => {
                let mut cmd = std::process::Command::new(&self.config.bridge);
                cmd.args(&self.config.bridge_args);
                cmd
            }
            Isolation::Bubblewrap { program } => {
                let mut cmd = self.bwrap_command(program, workspace, home, agent_program);
                cmd.arg(&self.config.bridge);
                cmd.args(&self.config.bridge_args);
                cmd
            }
        }
    }

    /// Bubblewrap at `program` with a sandbox's mounts, up to and including `--` (the command
    /// to run inside follows).
    fn bwrap_command(
        &self,
        program: &Path,
        workspace: &Path,
        home: &Path,
        agent_program: Option<&Path>,
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        cmd.args(bwrap_base_args());
        // Outermost first; a path inside another hidden one is covered already.
        let mut hidden: Vec<&PathBuf> = self.config.hidden.iter().collect();
        hidden.sort_by_key(|p| p.components().count());
        let mut covered: Vec<&PathBuf> = Vec::new();
        for path in hidden {
            if path.exists() && !covered.iter().any(|c| path.starts_with(c)) {
                cmd.arg("--tmpfs").arg(path);
                covered.push(path);
            }
        }
        // The bridge and an agent given by absolute path stay reachable even when they live
        // under /tmp or a hidden path (elsewhere the read-only system shows them already).
        let agent = agent_program.filter(|p| p.is_absolute() && p.exists());
        for program in std::iter::once(self.config.bridge.as_path()).chain(agent) {
            if covered_in_sandbox(&self.config.hidden, program) {
                cmd.arg("--ro-bind").arg(program).arg(program);
            }
        }
        cmd.arg("--bind").arg(workspace).arg(workspace);
        cmd.arg("--bind").arg(home).arg(home);
        cmd.arg("--chdir").arg(workspace);
        cmd.arg("--");
        cmd
    }

    /// The program of `agent`'s command line, when the provider knows one.
    fn agent_program(&self, agent: &str) -> Option<PathBuf> {
        self.config
            .agent_commands
            .get(agent)
            .and_then(|line| line.split_whitespace().next())
            .map(PathBuf::from)
    }

    fn ahead(&self) -> std::sync::MutexGuard<'_, Ahead> {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts preparing the next sandbox (for `agent`) on a thread of its own, unless sandboxes
    /// are not prepared here or one is ready or on its way.
    fn prepare_next(&self, agent: &str) {
        let (Some(env_program), Isolation::Bubblewrap { program }) =
            (&self.launcher_env, &self.isolation)
        else {
            return;
        };
        let mut ahead = self.ahead();
        let busy = ahead.preparing.as_ref().is_some_and(|t| !t.is_finished());
        if ahead.closed || ahead.ready.is_some() || busy {
            return;
        }
        if let Some(finished) = ahead.preparing.take() {
            let _ = finished.join();
        }
        let id = new_sandbox_id();
        let dir = self.config.root.join(id.as_str());
        let (workspace, home) = (dir.join("workspace"), dir.join("home"));
        let agent_program = self.agent_program(agent);
        let mut cmd = self.bwrap_command(program, &workspace, &home, agent_program.as_deref());
        cmd.arg(LAUNCHER_SHELL)
            .arg("-c")
            .arg(LAUNCHER)
            .arg(env_program)
            .env_clear()
            .current_dir(&workspace)
            .process_group(0)
            .stdin(Stdio::piped());
        let slot = self.ahead.clone();
        let thread = std::thread::Builder::new()
            .name("sandbox-prepare".into())
            .spawn(move || match prepare(cmd, &dir, &workspace, &home) {
                Ok((child, launch)) => {
                    let prepared = Prepared {
                        id,
                        dir,
                        workspace,
                        home,
                        agent_program,
                        child,
                        launch,
                    };
                    let mut ahead = slot.lock().unwrap_or_else(|p| p.into_inner());
                    if ahead.closed || ahead.ready.is_some() {
                        drop(ahead);
                        prepared.discard();
                    } else {
                        ahead.ready = Some(prepared);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not prepare a sandbox ahead");
                    let _ = remove_tree(&dir);
                }
            });
        ahead.preparing = thread.ok();
    }

    /// Hands `prepared` back for a later spawn.
    fn keep_prepared(&self, prepared: Prepared) {
        let mut ahead = self.ahead();
        if ahead.ready.is_none() && !ahead.closed {
            ahead.ready = Some(prepared);
        } else {
            drop(ahead);
            tokio::task::spawn_blocking(move || prepared.discard());
        }
    }

    /// What the launcher of a prepared sandbox is sent for `spec`: one brace group that runs
    /// `env -i` (the launcher's `$0`) with the bridge's environment (with `PWD`), its program and
    /// its arguments, each single-quoted, and stdin from /dev/null. `None` when `env` could
    /// misread them (a variable name other than letters, digits and `_`, not starting with a
    /// digit; `=` in the program's path, which `env` would take for a variable), for a program
    /// that is not an absolute path, or past [`MAX_LAUNCH_MESSAGE`].
    fn launch_message(
        &self,
        spec: &SpawnSpec,
        id: &SandboxId,
        workspace: &Path,
        home: &Path,
    ) -> Option<Vec<u8>> {
        let mut env = self.sandbox_env(spec, id, workspace, home);
        env.insert("PWD".to_string(), workspace.to_str()?.to_string());
        let mut message = String::from("{ exec \"$0\" -i");
        for (name, value) in &env {
            // A name `env` could take for an option or split wrongly goes the direct way.
            let plain = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain {
                return None;
            }
            push_quoted(&mut message, &format!("{name}={value}"));
        }
        let program = self.config.bridge.to_str()?;
        if !self.config.bridge.is_absolute() || program.contains('=') {
            return None;
        }
        push_quoted(&mut message, program);
        for arg in &self.config.bridge_args {
            push_quoted(&mut message, arg);
        }
        message.push_str(" </dev/null; }\n");
        (message.len() <= MAX_LAUNCH_MESSAGE).then(|| message.into_bytes())
    }

    /// Starts `spec`'s bridge in the prepared sandbox, when there is one it can use (then
    /// prepares the next); `None` when the sandbox is to be started directly.
    async fn start_prepared(
        &self,
        spec: &SpawnSpec,
    ) -> Result<Option<SandboxId>, SandboxProviderError> {
        if self.launcher_env.is_none() || spec.repo.is_some() {
            return Ok(None);
        }
        let Some(mut prepared) = self.ahead().ready.take() else {
            return Ok(None);
        };
        if prepared.agent_program != self.agent_program(&spec.agent) {
            // Prepared for another agent: replaced by one for this agent after this spawn.
            tokio::task::spawn_blocking(move || prepared.discard());
            return Ok(None);
        }
        if !is_executable(&self.config.bridge) {
            self.keep_prepared(prepared);
            return Err(unavailable(format!(
                "the bridge {} is not an executable file (see --bridge)",
                self.config.bridge.display()
            )));
        }
        let message = self.launch_message(spec, &prepared.id, &prepared.workspace, &prepared.home);
        let Some(message) = message else {
            self.keep_prepared(prepared);
            return Ok(None);
        };
        if let Err(e) = std::io::Write::write_all(&mut prepared.launch, &message) {
            tracing::warn!(sandbox = %prepared.id, error = %e, "the prepared sandbox is gone; starting one directly");
            tokio::task::spawn_blocking(move || prepared.discard());
            return Ok(None);
        }
        let Prepared {
            id,
            dir,
            workspace,
            child,
            launch,
            ..
        } = prepared;
        drop(launch);
        match self.watch(spec, &id, &dir, workspace, child) {
            Ok(sandbox) => {
                tracing::info!(sandbox = %id, session = %spec.session_key, pgid = sandbox.pgid, isolated = true, prepared = true, "sandbox started");
                self.lock().insert(id.clone(), sandbox);
                self.prepare_next(&spec.agent);
                Ok(Some(id))
            }
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || remove_tree(&dir)).await;
                tracing::warn!(session = %spec.session_key, error = %e, "sandbox did not start");
                Err(e)
            }
        }
    }

    /// `git clone` of `repo` into `workspace` (which must not exist yet), then a checkout of its
    /// ref. A bad URL or ref is `Invalid`, git missing is `Unavailable`, too slow is `Timeout`.
    async fn clone_repo(
        &self,
        repo: &RepoSpec,
        workspace: &Path,
        home: &Path,
    ) -> Result<(), SandboxProviderError> {
        if repo.url.trim().is_empty() || repo.url.starts_with('-') {
            return Err(SandboxProviderError::Invalid(format!(
                "{:?} is not a repository URL",
                redact_url(&repo.url)
            )));
        }
        if let Some(r) = &repo.git_ref {
            if r.is_empty() || r.starts_with('-') || r.contains(char::is_whitespace) {
                return Err(SandboxProviderError::Invalid(format!(
                    "{r:?} is not a git ref"
                )));
            }
        }
        let shown = redact_url(&repo.url);
        let mut steps: Vec<Vec<std::ffi::OsString>> = vec![vec![
            "clone".into(),
            "--quiet".into(),
            "--no-hardlinks".into(),
            "--".into(),
            repo.url.clone().into(),
            workspace.as_os_str().to_owned(),
        ]];
        if let Some(r) = &repo.git_ref {
            steps.push(vec![
                "-C".into(),
                workspace.as_os_str().to_owned(),
                "checkout".into(),
                "--quiet".into(),
                r.into(),
                "--".into(),
            ]);
        }
        let deadline = tokio::time::Instant::now() + self.config.clone_timeout;
        for args in steps {
            let mut cmd = tokio::process::Command::new("git");
            cmd.args(&args)
                .env_clear()
                .env(
                    "PATH",
                    std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string()),
                )
                .env("HOME", home)
                .env("LANG", "C")
                .env("GIT_TERMINAL_PROMPT", "0")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            let child = cmd
                .spawn()
                .map_err(|e| unavailable(format!("cannot run git to clone {shown}: {e}")))?;
            let pgid = child.id().map(|p| p as i32);
            match tokio::time::timeout_at(deadline, child.wait_with_output()).await {
                Ok(Ok(out)) if out.status.success() => {}
                Ok(Ok(out)) => {
                    return Err(SandboxProviderError::Invalid(format!(
                        "cannot clone {shown}{} ({}): {}",
                        repo.git_ref
                            .as_ref()
                            .map(|r| format!(" at {r}"))
                            .unwrap_or_default(),
                        describe(Ok(out.status)),
                        tail_of(&out.stderr, &repo.url)
                    )))
                }
                Ok(Err(e)) => return Err(unavailable(format!("git clone of {shown}: {e}"))),
                Err(_) => {
                    if let Some(pgid) = pgid {
                        sys::signal_group(pgid, SIGKILL);
                    }
                    return Err(SandboxProviderError::Timeout(format!(
                        "cloning {shown} took longer than {:?}",
                        self.config.clone_timeout
                    )));
                }
            }
        }
        Ok(())
    }

    /// Makes the sandbox's directories, clones its repository and starts its bridge.
    async fn start(
        &self,
        spec: &SpawnSpec,
        id: &SandboxId,
        dir: &Path,
    ) -> Result<Sandbox, SandboxProviderError> {
        let (workspace, home) = (dir.join("workspace"), dir.join("home"));
        private_dir(&home)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", home.display())))?;
        match &spec.repo {
            Some(repo) => self.clone_repo(repo, &workspace, &home).await?,
            None => private_dir(&workspace)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", workspace.display())))?,
        }
        // Checked here because under bubblewrap a missing bridge would only show once bwrap ran.
        if !is_executable(&self.config.bridge) {
            return Err(unavailable(format!(
                "the bridge {} is not an executable file (see --bridge)",
                self.config.bridge.display()
            )));
        }
        let log_path = dir.join("bridge.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", log_path.display())))?;
        let log_err = log.try_clone().map_err(unavailable)?;
        let agent_program = self.agent_program(&spec.agent);
        let mut cmd = self.bridge_command(&workspace, &home, agent_program.as_deref());
        cmd.env_clear()
            .envs(self.sandbox_env(spec, id, &workspace, &home))
            .current_dir(&workspace)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd.spawn().map_err(|e| {
            unavailable(format!(
                "cannot start the bridge {}: {e}",
                self.config.bridge.display()
            ))
        })?;
        self.watch(spec, id, dir, workspace, child)
    }

    /// Watches a started sandbox: a thread reaps its bridge (then kills what is left of its
    /// group) and publishes the exit; another ends it at the spec's maximum lifetime.
    fn watch(
        &self,
        spec: &SpawnSpec,
        id: &SandboxId,
        dir: &Path,
        workspace: PathBuf,
        mut child: std::process::Child,
    ) -> Result<Sandbox, SandboxProviderError> {
        let pgid = child.id() as i32;

        // The waiter reaps the bridge, kills what it left in its group, and publishes the exit.
        let (exit_tx, exit_rx) = watch::channel(None);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let waiter = std::thread::Builder::new()
            .name(format!("sandbox-{id}"))
            .spawn(move || {
                let status = child.wait();
                sys::signal_group(pgid, SIGKILL);
                let _ = done_tx.send(());
                exit_tx.send_replace(Some(describe(status)));
            });
        if let Err(e) = waiter {
            sys::signal_group(pgid, SIGKILL);
            return Err(unavailable(format!("cannot watch the bridge: {e}")));
        }
        // The deadline ends a sandbox that outlives its spec's maximum lifetime.
        if spec.timeouts.max_s > 0 {
            let (max, grace, sandbox, under_bwrap) = (
                Duration::from_secs(spec.timeouts.max_s),
                self.config.terminate_grace,
                id.clone(),
                self.isolation.is_isolated(),
            );
            let deadline = std::thread::Builder::new()
                .name(format!("sandbox-{id}-deadline"))
                .spawn(move || {
                    use std::sync::mpsc::RecvTimeoutError::Timeout;
                    if let Err(Timeout) = done_rx.recv_timeout(max) {
                        tracing::warn!(sandbox = %sandbox, "the sandbox reached its maximum lifetime of {max:?}; ending it");
                        ask_to_end(pgid, under_bwrap);
                        if let Err(Timeout) = done_rx.recv_timeout(grace) {
                            sys::signal_group(pgid, SIGKILL);
                        }
                    }
                });
            if let Err(e) = deadline {
                sys::signal_group(pgid, SIGKILL);
                return Err(unavailable(format!(
                    "cannot watch the sandbox's lifetime: {e}"
                )));
            }
        }
        Ok(Sandbox {
            pgid,
            dir: dir.to_path_buf(),
            workspace,
            exit: exit_rx,
            terminated: false,
            terminated_while_running: false,
            snapshots: 0,
        })
    }
}

/// Whether `program` lies under a path a sandbox sees covered (its private /tmp, /dev and /proc,
/// or one of the `hidden` paths), as given or with its links resolved; one that cannot be
/// resolved counts as covered.
fn covered_in_sandbox(hidden: &[PathBuf], program: &Path) -> bool {
    let under = |path: &Path| {
        ["/tmp", "/dev", "/proc"]
            .iter()
            .any(|private| path.starts_with(private))
            || hidden.iter().any(|hidden| {
                path.starts_with(hidden)
                    || std::fs::canonicalize(hidden).is_ok_and(|real| path.starts_with(real))
            })
    };
    under(program) || std::fs::canonicalize(program).map_or(true, |real| under(&real))
}

fn new_sandbox_id() -> SandboxId {
    SandboxId::parse(format!("lp-{}", uuid::Uuid::now_v7().simple()))
        .expect("lp-<hex> is a valid sandbox id")
}

/// Appends ` 'word'` to a shell script: inside single quotes every character but `'` stands for
/// itself, and `'` is written `'\''` (close, an escaped quote, reopen).
fn push_quoted(script: &mut String, word: &str) {
    script.push_str(" '");
    script.push_str(&word.replace('\'', "'\\''"));
    script.push('\'');
}

/// The longest launch message sent to a prepared sandbox (well within a pipe's buffer, so the
/// write never waits on the launcher); a longer one starts its sandbox directly.
const MAX_LAUNCH_MESSAGE: usize = 16 * 1024;

/// Makes a prepared sandbox's directories and log, and starts `cmd` (bubblewrap running the
/// launcher) with its stdin a pipe. `dir` is made without its parents: a root that was removed
/// (the server's data directory) is not made again.
fn prepare(
    mut cmd: std::process::Command,
    dir: &Path,
    workspace: &Path,
    home: &Path,
) -> std::io::Result<(std::process::Child, std::process::ChildStdin)> {
    for path in [dir, home, workspace] {
        std::fs::DirBuilder::new().mode(0o700).create(path)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("bridge.log"))?;
    let log_err = log.try_clone()?;
    let mut child = cmd.stdout(log).stderr(log_err).spawn()?;
    match child.stdin.take() {
        Some(launch) => Ok((child, launch)),
        None => {
            sys::signal_group(child.id() as i32, SIGKILL);
            let _ = child.wait();
            Err(std::io::Error::other("the launcher has no stdin pipe"))
        }
    }
}

/// Waits until the bridge's exit is published, at most `within`.
async fn exited_within(exit: &mut watch::Receiver<Option<String>>, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, exit.wait_for(Option::is_some)).await,
        Ok(Ok(_))
    )
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

#[async_trait]
impl SandboxProvider for LocalProcessSandboxProvider {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<SandboxId, SandboxProviderError> {
        if spec.callback_url.is_empty() || spec.token.is_empty() {
            return Err(SandboxProviderError::Invalid(
                "a spawn spec needs a callback URL and a token".into(),
            ));
        }
        if let Some((name, _)) = spec
            .env
            .iter()
            .find(|(k, v)| !valid_env_name(k) || v.contains('\0'))
        {
            return Err(SandboxProviderError::Invalid(format!(
                "{name:?} cannot be an environment variable"
            )));
        }
        if let Some(id) = self.start_prepared(spec).await? {
            return Ok(id);
        }
        let id = new_sandbox_id();
        let dir = self.config.root.join(id.as_str());
        private_dir(&dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        match self.start(spec, &id, &dir).await {
            Ok(sandbox) => {
                tracing::info!(sandbox = %id, session = %spec.session_key, pgid = sandbox.pgid, isolated = self.isolation.is_isolated(), "sandbox started");
                self.lock().insert(id.clone(), sandbox);
                if spec.repo.is_none() {
                    self.prepare_next(&spec.agent);
                }
                Ok(id)
            }
            Err(e) => {
                let dir = dir.clone();
                let _ = tokio::task::spawn_blocking(move || remove_tree(&dir)).await;
                tracing::warn!(session = %spec.session_key, error = %e, "sandbox did not start");
                Err(e)
            }
        }
    }

    async fn status(&self, id: &SandboxId) -> Result<SandboxState, SandboxProviderError> {
        let boxes = self.lock();
        let sandbox = boxes.get(id).ok_or_else(|| not_found(id))?;
        let exit = sandbox.exit.borrow().clone();
        Ok(match exit {
            None => SandboxState::Running,
            Some(reason) if sandbox.terminated_while_running => SandboxState::Exited {
                reason: format!("terminated ({reason})"),
            },
            Some(reason) => SandboxState::Exited { reason },
        })
    }

    async fn terminate(&self, id: &SandboxId) -> Result<(), SandboxProviderError> {
        let (pgid, mut exit, first, dir) = {
            let mut boxes = self.lock();
            let sandbox = boxes.get_mut(id).ok_or_else(|| not_found(id))?;
            let first = !sandbox.terminated;
            if first {
                sandbox.terminated = true;
                sandbox.terminated_while_running = sandbox.exit.borrow().is_none();
            }
            (
                sandbox.pgid,
                sandbox.exit.clone(),
                first,
                sandbox.dir.clone(),
            )
        };
        let grace = self.config.terminate_grace;
        if first && exit.borrow().is_none() {
            ask_to_end(pgid, self.isolation.is_isolated());
            if !exited_within(&mut exit, grace).await {
                tracing::warn!(sandbox = %id, "the sandbox ignored SIGTERM for {grace:?}; killing it");
                sys::signal_group(pgid, SIGKILL);
            }
        }
        // A concurrent or repeated terminate waits for the same end.
        if !exited_within(&mut exit, grace + KILL_WAIT).await {
            return Err(unavailable(format!(
                "sandbox {id} (process group {pgid}) did not end after SIGKILL"
            )));
        }
        if first {
            let removed = tokio::task::spawn_blocking(move || {
                remove_tree(&dir.join("workspace"))?;
                remove_tree(&dir.join("home"))
            })
            .await;
            if let Ok(Err(e)) = removed {
                tracing::warn!(sandbox = %id, error = %e, "could not remove the sandbox's workspace");
            }
            tracing::info!(sandbox = %id, "sandbox terminated");
        }
        Ok(())
    }

    async fn snapshot(&self, id: &SandboxId) -> Result<String, SandboxProviderError> {
        let (workspace, file) = {
            let mut boxes = self.lock();
            let sandbox = boxes.get_mut(id).ok_or_else(|| not_found(id))?;
            if sandbox.terminated || sandbox.exit.borrow().is_some() {
                return Err(SandboxProviderError::Conflict(format!(
                    "sandbox {id} has exited"
                )));
            }
            sandbox.snapshots += 1;
            (
                sandbox.workspace.clone(),
                sandbox
                    .dir
                    .join("snapshots")
                    .join(format!("{}.tar.gz", sandbox.snapshots)),
            )
        };
        if let Some(parent) = file.parent() {
            private_dir(parent)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", parent.display())))?;
        }
        let child = tokio::process::Command::new("tar")
            .arg("-czf")
            .arg(&file)
            .arg("-C")
            .arg(&workspace)
            .arg(".")
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string()),
            )
            .env("LANG", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| unavailable(format!("cannot run tar: {e}")))?;
        match tokio::time::timeout(SNAPSHOT_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => Ok(file.display().to_string()),
            Ok(Ok(out)) => {
                let _ = std::fs::remove_file(&file);
                Err(unavailable(format!(
                    "tar of the workspace of {id} failed ({}): {}",
                    describe(Ok(out.status)),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
            Ok(Err(e)) => Err(unavailable(format!("tar of the workspace of {id}: {e}"))),
            Err(_) => {
                let _ = std::fs::remove_file(&file);
                Err(SandboxProviderError::Timeout(format!(
                    "the snapshot of {id} took longer than {SNAPSHOT_TIMEOUT:?}"
                )))
            }
        }
    }
}

impl Drop for LocalProcessSandboxProvider {
    /// Kills every sandbox still running (the waiter threads reap them) and removes the prepared
    /// one, waiting for one being prepared.
    fn drop(&mut self) {
        let (ready, preparing) = {
            let mut ahead = self.ahead();
            ahead.closed = true;
            (ahead.ready.take(), ahead.preparing.take())
        };
        if let Some(thread) = preparing {
            let _ = thread.join();
        }
        if let Some(prepared) = ready {
            prepared.discard();
        }
        let boxes = self.boxes.get_mut().unwrap_or_else(|p| p.into_inner());
        for (id, sandbox) in boxes.iter() {
            if sandbox.exit.borrow().is_none() {
                tracing::info!(sandbox = %id, "the provider is dropped: killing the sandbox");
                sys::signal_group(sandbox.pgid, SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_appear_in_messages() {
        let url = "https://x-access-token:ghs_secret123@github.com/acme/app.git";
        assert_eq!(redact_url(url), "https://***@github.com/acme/app.git");
        assert_eq!(userinfo(url), Some("x-access-token:ghs_secret123"));
        let stderr = format!("fatal: unable to access '{url}': 403\nremote: ghs_secret123 bad\n");
        let tail = tail_of(stderr.as_bytes(), url);
        assert!(!tail.contains("ghs_secret123"), "{tail}");
        assert!(tail.contains("403"), "{tail}");
        assert_eq!(redact_url("/srv/repo"), "/srv/repo");
        assert_eq!(
            redact_url("file:///srv/a@b/repo"),
            "file:///srv/a@b/repo",
            "an @ in the path is not user info"
        );
    }

    /// Runs the launcher as a prepared sandbox does (without bubblewrap), sends it `message`
    /// and closes the pipe; its exit status and stdout.
    fn launch(message: &[u8]) -> (ExitStatus, String) {
        use std::io::Write;
        let env_program = ENV_PROGRAMS
            .iter()
            .find(|p| is_executable(Path::new(p)))
            .expect("env is installed");
        let mut child = std::process::Command::new(LAUNCHER_SHELL)
            .arg("-c")
            .arg(LAUNCHER)
            .arg(env_program)
            .env_clear()
            .env("LEAKED", "from the launcher's own environment")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(message).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status, String::from_utf8(out.stdout).unwrap())
    }

    /// The launcher's script for `words` (`NAME=value`…, program, arguments), as
    /// `launch_message` writes it.
    fn script(words: &[&str]) -> Vec<u8> {
        let mut script = String::from("{ exec \"$0\" -i");
        for word in words {
            push_quoted(&mut script, word);
        }
        script.push_str(" </dev/null; }\n");
        script.into_bytes()
    }

    #[test]
    fn the_launcher_runs_exactly_the_environment_and_command_it_is_sent() {
        let (status, out) = launch(&script(&[
            "A=1",
            "B=two  words = 'q' $HOME \\ `x` \"y\"",
            "C=line one\nline two",
            "/bin/sh",
            "-c",
            "env -0; readlink /proc/$$/fd/0",
        ]));
        assert!(status.success(), "{status:?}");
        let (env, stdin) = out.rsplit_once('\0').expect("env -0 printed");
        let mut vars: Vec<&str> = env.split('\0').collect();
        vars.sort();
        // `sh` adds PWD (a prepared sandbox sends its own, as bwrap sets it for a direct start).
        vars.retain(|l| !l.starts_with("PWD="));
        assert_eq!(
            vars,
            [
                "A=1",
                "B=two  words = 'q' $HOME \\ `x` \"y\"",
                "C=line one\nline two"
            ]
        );
        assert_eq!(stdin.trim(), "/dev/null", "the bridge's stdin is /dev/null");
    }

    #[test]
    fn a_launch_cut_short_runs_nothing() {
        let marker = std::env::temp_dir().join(format!(
            "sb-launcher-cut-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        let whole = script(&["A=1", "/usr/bin/touch", &marker.display().to_string()]);
        // Cut anywhere before the closing brace: in a quote, between words, before `}`.
        for cut in [whole.len() / 2, whole.len() - 12, whole.len() - 3, 0] {
            let (status, _) = launch(&whole[..cut]);
            assert_eq!(status.code(), Some(70), "cut at {cut}");
            assert!(!marker.exists(), "nothing ran (cut at {cut})");
        }
        let (status, _) = launch(&whole);
        assert!(status.success(), "{status:?}");
        assert!(marker.exists(), "the whole script runs");
        let _ = std::fs::remove_file(&marker);
    }

    fn spawn_spec(env: BTreeMap<String, String>) -> SpawnSpec {
        SpawnSpec {
            session_key: "org_1:ses_1".into(),
            callback_url: "ws://127.0.0.1:9/sandbox".into(),
            token: "one-time-token".into(),
            agent: "opencode".into(),
            repo: None,
            env,
            timeouts: switchboard_core::protocol::SpawnTimeouts {
                idle_s: 45,
                max_s: 600,
            },
        }
    }

    #[test]
    fn a_launch_message_is_refused_when_lines_cannot_carry_it() {
        let root = std::env::temp_dir().join(format!("sb-launch-msg-{}", std::process::id()));
        let p = LocalProcessSandboxProvider::new(
            LocalSandboxConfig::new(&root)
                .with_isolation(IsolationChoice::Off)
                .with_bridge("/opt/bridge", vec!["serve".into()]),
        )
        .unwrap();
        let _ = std::fs::remove_dir(&root);
        let id = new_sandbox_id();
        let (workspace, home) = (root.join("w"), root.join("h"));
        let message = |spec: &SpawnSpec| p.launch_message(spec, &id, &workspace, &home);
        let sent = String::from_utf8(message(&spawn_spec(BTreeMap::new())).unwrap()).unwrap();
        assert!(
            sent.starts_with("{ exec \"$0\" -i '")
                && sent.ends_with(" '/opt/bridge' 'serve' </dev/null; }\n"),
            "{sent}"
        );
        assert!(
            sent.contains(&format!(" 'PWD={}' ", workspace.display())),
            "{sent}"
        );
        assert!(
            sent.contains(" 'SWITCHBOARD_SANDBOX_TOKEN=one-time-token' "),
            "{sent}"
        );
        let option_like = BTreeMap::from([("-u".to_string(), "x".to_string())]);
        assert_eq!(message(&spawn_spec(option_like)), None);
        let huge = BTreeMap::from([("X".to_string(), "x".repeat(MAX_LAUNCH_MESSAGE))]);
        assert_eq!(message(&spawn_spec(huge)), None);
        for bridge in ["/opt/a=b/bridge", "no-such-bridge-on-path"] {
            let p = LocalProcessSandboxProvider::new(
                LocalSandboxConfig::new(&root)
                    .with_isolation(IsolationChoice::Off)
                    .with_bridge(bridge, vec![]),
            )
            .unwrap();
            let _ = std::fs::remove_dir(&root);
            assert_eq!(
                p.launch_message(&spawn_spec(BTreeMap::new()), &id, &workspace, &home),
                None,
                "{bridge}"
            );
        }
    }

    #[test]
    fn a_launch_message_carries_any_value_to_the_bridge_exactly() {
        let root = std::env::temp_dir().join(format!("sb-launch-exact-{}", std::process::id()));
        let p = LocalProcessSandboxProvider::new(
            LocalSandboxConfig::new(&root)
                .with_isolation(IsolationChoice::Off)
                .with_bridge(
                    "/bin/sh",
                    vec![
                        "-c".into(),
                        r#"env -0; printf '%s[%s]' "$#" "$1""#.into(),
                        "sh".into(),
                        String::new(),
                    ],
                ),
        )
        .unwrap();
        let _ = std::fs::remove_dir(&root);
        let id = new_sandbox_id();
        let (workspace, home) = (root.join("w'x"), root.join("h"));
        let tricky = BTreeMap::from([
            ("NEWLINE".to_string(), "a\nb".to_string()),
            ("QUOTES".to_string(), "it's \"q\" '' \\'".to_string()),
            (
                "SHELLISH".to_string(),
                "$HOME $(id) `id` ; } { exit 3".to_string(),
            ),
            ("EMPTY".to_string(), String::new()),
        ]);
        let spec = spawn_spec(tricky);
        let message = p.launch_message(&spec, &id, &workspace, &home).unwrap();
        let (status, out) = launch(&message);
        assert!(status.success(), "{status:?}");
        let (env, args) = out.rsplit_once('\0').expect("env -0 printed");
        assert_eq!(args, "1[]", "one argument, empty, got through");
        // The bridge here is a shell, which sets PWD to where it runs (a sandbox runs it in the
        // workspace, the PWD it is sent; this test does not).
        let expected = p.sandbox_env(&spec, &id, &workspace, &home);
        let mut env = environ(env.as_bytes());
        env.remove("PWD");
        assert_eq!(env, expected);
    }

    /// A NUL-separated environment as a map.
    fn environ(bytes: &[u8]) -> BTreeMap<String, String> {
        bytes
            .split(|b| *b == 0)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (name, value) = entry.split_once('=').unwrap_or((&entry, ""));
                (name.to_string(), value.to_string())
            })
            .collect()
    }

    /// The content of `path` once it has some, within a few seconds.
    async fn written(path: &Path) -> Vec<u8> {
        for _ in 0..500 {
            match std::fs::read(path) {
                Ok(bytes) if !bytes.is_empty() => return bytes,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("{} was never written", path.display());
    }

    /// Whether a live process (not a zombie) is in group `pgid`, within a few seconds of now.
    async fn group_lives(pgid: i32) -> bool {
        for _ in 0..250 {
            let members = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                        return false;
                    };
                    let fields: Vec<&str> = after.split_whitespace().collect();
                    fields
                        .first()
                        .is_some_and(|state| *state != "Z" && *state != "X")
                        && fields.get(3).and_then(|g| g.parse().ok()) == Some(pgid)
                })
                .count();
            if members == 0 {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The prepared sandbox, once it is ready: its id, process group and directory.
    async fn prepared(p: &LocalProcessSandboxProvider) -> (SandboxId, i32, PathBuf) {
        for _ in 0..500 {
            if let Some(ready) = p.ahead().ready.as_ref() {
                return (ready.id.clone(), ready.child.id() as i32, ready.dir.clone());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no sandbox was prepared");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_prepared_sandbox_runs_the_bridge_as_a_direct_start_does() {
        let scratch = std::env::temp_dir().join(format!(
            "sb-prepared-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&scratch).unwrap();
        let bridge = scratch.join("bridge");
        std::fs::write(
            &bridge,
            "#!/bin/bash\ncat /proc/$$/environ > \"$SWITCHBOARD_WORKSPACE/.environ\"\nreadlink /proc/$$/fd/0 > \"$SWITCHBOARD_WORKSPACE/.stdin\"\nexec sleep 600\n",
        )
        .unwrap();
        std::fs::set_permissions(&bridge, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let p = LocalProcessSandboxProvider::new(
            LocalSandboxConfig::new(scratch.join("sandboxes")).with_bridge(&bridge, Vec::new()),
        )
        .unwrap();
        if !p.isolation().is_isolated() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "under CI local sandboxes must be isolated: {}",
                p.isolation()
            );
            eprintln!(
                "skipped: sandboxes are prepared only under bubblewrap ({})",
                p.isolation()
            );
            let _ = std::fs::remove_dir_all(&scratch);
            return;
        }
        let spec = spawn_spec(BTreeMap::from([("CASE".to_string(), "a b".to_string())]));
        let direct = p.spawn(&spec).await.unwrap();
        let (prepared_id, _, _) = prepared(&p).await;
        let from_prepared = p.spawn(&spec).await.unwrap();
        assert_eq!(
            from_prepared, prepared_id,
            "the second spawn took the prepared sandbox"
        );
        assert_ne!(direct, from_prepared);

        let mut seen = Vec::new();
        for id in [&direct, &from_prepared] {
            let workspace = p.workspace(id).unwrap();
            let env = environ(&written(&workspace.join(".environ")).await);
            let stdin = written(&workspace.join(".stdin")).await;
            assert_eq!(String::from_utf8_lossy(&stdin).trim(), "/dev/null");
            assert_eq!(env["PWD"], workspace.display().to_string());
            assert_eq!(env[ENV_WORKSPACE], workspace.display().to_string());
            assert_eq!(env[ENV_SANDBOX_ID], id.to_string());
            assert!(env["HOME"].starts_with(&p.root().join(id.as_str()).display().to_string()));
            seen.push(env);
        }
        let per_sandbox = ["PWD", ENV_WORKSPACE, ENV_SANDBOX_ID, "HOME"];
        let common = |env: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            env.iter()
                .filter(|(name, _)| !per_sandbox.contains(&name.as_str()))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        };
        assert_eq!(
            seen[0].keys().collect::<Vec<_>>(),
            seen[1].keys().collect::<Vec<_>>(),
            "the same variables"
        );
        assert_eq!(common(&seen[0]), common(&seen[1]), "with the same values");
        assert_eq!(seen[1]["CASE"], "a b");

        // Terminating ends the group of a prepared sandbox as of any other.
        let pgid = p.process_group(&from_prepared).unwrap();
        p.terminate(&from_prepared).await.unwrap();
        assert!(
            !group_lives(pgid).await,
            "the prepared sandbox's group is gone"
        );
        p.terminate(&direct).await.unwrap();

        // Dropping the provider kills and removes the next prepared sandbox.
        let (_, pgid, dir) = prepared(&p).await;
        assert!(dir.join("workspace").is_dir());
        drop(p);
        assert!(!dir.exists(), "the unused prepared sandbox is removed");
        assert!(!group_lives(pgid).await, "and its processes are gone");
        let _ = std::fs::remove_dir_all(&scratch);
    }

    #[test]
    fn exit_reasons_name_the_code_or_signal() {
        assert_eq!(
            describe(Ok(ExitStatus::from_raw(3 << 8))),
            "exited with code 3"
        );
        assert_eq!(describe(Ok(ExitStatus::from_raw(9))), "killed by signal 9");
    }
}
