//! The bridge's configuration: what it reads from the environment (`SWITCHBOARD_*`), the
//! defaults, and the timings (heartbeat, backoff, idle timeout) that tests shorten.

use std::path::PathBuf;
use std::time::Duration;
use switchboard_core::SandboxId;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::BridgeError;

/// The command line the agent is started with when `SWITCHBOARD_AGENT_COMMAND` is not set.
pub const DEFAULT_AGENT_COMMAND: &str = "opencode acp";
/// Seconds without a connection to the control plane after which the bridge stops the agent and
/// exits, when `SWITCHBOARD_IDLE_TIMEOUT_S` is not set.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 900;
/// The most files a `workspace` message lists.
pub const DEFAULT_MAX_WORKSPACE_FILES: usize = 10_000;

/// Reconnection delays: `initial`, doubled after every failed attempt, never above `max`.
/// Deterministic (no jitter): one sandbox dials one session, so there is no herd to spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before reconnection attempt number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
        }
    }
}

/// The agent's command line: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCommand {
    pub program: String,
    pub args: Vec<String>,
}

impl AgentCommand {
    /// Splits a command line on whitespace (no shell quoting): `opencode acp` is `opencode` with
    /// the argument `acp`. `None` when the line holds no word.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace().map(str::to_string);
        let program = words.next()?;
        Some(AgentCommand {
            program,
            args: words.collect(),
        })
    }

    /// The agent's name for `hello`: the program's file name (`/usr/bin/opencode` is `opencode`).
    pub fn name(&self) -> String {
        self.program
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.program)
            .to_string()
    }
}

/// Everything [`crate::run`] needs. [`BridgeConfig::new`] gives the production timings;
/// [`BridgeConfig::from_env`] reads the `SWITCHBOARD_*` variables.
#[derive(Clone)]
pub struct BridgeConfig {
    /// `ws://` or `wss://…/sandbox/v1/sessions/{org}/{session}/ws`.
    pub callback_url: String,
    /// The one-time sandbox token, sent as `Authorization: Bearer <token>`. Never logged.
    pub token: String,
    pub sandbox_id: SandboxId,
    /// The agent's name and version, for `hello`.
    pub agent: String,
    pub agent_version: String,
    /// How the agent is started (used by the binary to build its driver; `run` only reports it).
    pub agent_command: AgentCommand,
    /// The agent's working directory; its file list is reported once in a `workspace` message.
    pub workspace: PathBuf,
    /// How long the bridge may go without a connection before it stops the agent and exits.
    pub idle_timeout: Duration,
    /// How often a `heartbeat` is sent while connected.
    pub heartbeat_interval: Duration,
    /// A connection that hears nothing (not even the server's pings, every 20 s) for this long is
    /// given up and re-dialled.
    pub silence_timeout: Duration,
    /// The most one dial (TCP, TLS and WebSocket handshake) may take.
    pub connect_timeout: Duration,
    pub backoff: Backoff,
    pub max_workspace_files: usize,
    /// How long stopping the agent (and the bridge's own worker) may take at exit.
    pub stop_grace: Duration,
}

impl std::fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeConfig")
            .field("callback_url", &self.callback_url)
            .field("token", &"<redacted>")
            .field("sandbox_id", &self.sandbox_id)
            .field("agent", &self.agent)
            .field("agent_version", &self.agent_version)
            .field("agent_command", &self.agent_command)
            .field("workspace", &self.workspace)
            .field("idle_timeout", &self.idle_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("silence_timeout", &self.silence_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &self.backoff)
            .field("max_workspace_files", &self.max_workspace_files)
            .field("stop_grace", &self.stop_grace)
            .finish()
    }
}

impl BridgeConfig {
    /// A configuration with the production timings and the default agent command.
    pub fn new(
        callback_url: impl Into<String>,
        token: impl Into<String>,
        sandbox_id: SandboxId,
        workspace: impl Into<PathBuf>,
    ) -> Self {
        let agent_command =
            AgentCommand::parse(DEFAULT_AGENT_COMMAND).expect("the default command has a word");
        BridgeConfig {
            callback_url: callback_url.into(),
            token: token.into(),
            sandbox_id,
            agent: agent_command.name(),
            agent_version: "unknown".to_string(),
            agent_command,
            workspace: workspace.into(),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_S),
            heartbeat_interval: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_workspace_files: DEFAULT_MAX_WORKSPACE_FILES,
            stop_grace: Duration::from_secs(10),
        }
    }

    /// Reads the process environment; see [`BridgeConfig::from_vars`].
    pub fn from_env() -> Result<Self, BridgeError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads `SWITCHBOARD_CALLBACK_URL` and `SWITCHBOARD_SANDBOX_TOKEN` (required),
    /// `SWITCHBOARD_AGENT_COMMAND` (default `opencode acp`), `SWITCHBOARD_WORKSPACE` (default the
    /// current directory), `SWITCHBOARD_SANDBOX_ID` (default `sandbox-<pid>`),
    /// `SWITCHBOARD_IDLE_TIMEOUT_S` (default 900), and for `hello` `SWITCHBOARD_AGENT` (default the
    /// command's program name) and `SWITCHBOARD_AGENT_VERSION` (default `unknown`) through `get`.
    /// A variable set to blanks counts as not set.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, BridgeError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let callback_url = get("SWITCHBOARD_CALLBACK_URL")
            .ok_or_else(|| BridgeError::Config("SWITCHBOARD_CALLBACK_URL is not set".into()))?;
        let token = get("SWITCHBOARD_SANDBOX_TOKEN")
            .ok_or_else(|| BridgeError::Config("SWITCHBOARD_SANDBOX_TOKEN is not set".into()))?;
        let line = get("SWITCHBOARD_AGENT_COMMAND").unwrap_or_else(|| DEFAULT_AGENT_COMMAND.into());
        let agent_command = AgentCommand::parse(&line).ok_or_else(|| {
            BridgeError::Config("SWITCHBOARD_AGENT_COMMAND holds no command".into())
        })?;
        let workspace = match get("SWITCHBOARD_WORKSPACE") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::current_dir().map_err(|e| {
                BridgeError::Config(format!("the current directory is unreadable: {e}"))
            })?,
        };
        let sandbox_id = get("SWITCHBOARD_SANDBOX_ID")
            .unwrap_or_else(|| format!("sandbox-{}", std::process::id()));
        let sandbox_id = SandboxId::parse(sandbox_id)
            .map_err(|e| BridgeError::Config(format!("SWITCHBOARD_SANDBOX_ID: {e}")))?;
        let mut config = BridgeConfig::new(callback_url, token, sandbox_id, workspace);
        config.agent = get("SWITCHBOARD_AGENT").unwrap_or_else(|| agent_command.name());
        config.agent_command = agent_command;
        if let Some(version) = get("SWITCHBOARD_AGENT_VERSION") {
            config.agent_version = version;
        }
        if let Some(seconds) = get("SWITCHBOARD_IDLE_TIMEOUT_S") {
            let seconds: u64 = seconds.trim().parse().map_err(|_| {
                BridgeError::Config(format!(
                    "SWITCHBOARD_IDLE_TIMEOUT_S must be a whole number of seconds, got {seconds:?}"
                ))
            })?;
            config.idle_timeout = Duration::from_secs(seconds);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what can be checked before dialling: the URL's scheme and shape, an absolute
    /// workspace.
    pub fn validate(&self) -> Result<(), BridgeError> {
        let url = self.callback_url.as_str();
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(BridgeError::Config(format!(
                "SWITCHBOARD_CALLBACK_URL must start with ws:// or wss://, got {url:?}"
            )));
        }
        url.into_client_request().map_err(|e| {
            BridgeError::Config(format!("SWITCHBOARD_CALLBACK_URL {url:?} is unusable: {e}"))
        })?;
        if !self.workspace.is_absolute() {
            return Err(BridgeError::Config(format!(
                "the workspace {:?} is not an absolute path",
                self.workspace
            )));
        }
        if self.token.is_empty() {
            return Err(BridgeError::Config("the sandbox token is empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_the_environment_with_defaults() {
        let c = BridgeConfig::from_vars(vars(&[
            (
                "SWITCHBOARD_CALLBACK_URL",
                "wss://sb.example/sandbox/v1/sessions/o/s/ws",
            ),
            ("SWITCHBOARD_SANDBOX_TOKEN", "tok"),
            ("SWITCHBOARD_WORKSPACE", "/work/space"),
            ("SWITCHBOARD_SANDBOX_ID", "sbx-1"),
            ("SWITCHBOARD_AGENT", "opencode-pinned"),
        ]))
        .unwrap();
        assert_eq!(c.agent_version, "unknown");
        assert_eq!(c.agent_command.program, "opencode");
        assert_eq!(c.agent_command.args, vec!["acp".to_string()]);
        assert_eq!(c.agent, "opencode-pinned", "the spec's agent name wins");
        assert_eq!(c.workspace, PathBuf::from("/work/space"));
        assert_eq!(c.sandbox_id.as_str(), "sbx-1");
        assert_eq!(c.idle_timeout, Duration::from_secs(900));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert!(!format!("{c:?}").contains("tok\""), "the token is redacted");
    }

    #[test]
    fn reads_the_agent_command_and_idle_timeout() {
        let c = BridgeConfig::from_vars(vars(&[
            (
                "SWITCHBOARD_CALLBACK_URL",
                "ws://127.0.0.1:9/sandbox/v1/sessions/o/s/ws",
            ),
            ("SWITCHBOARD_SANDBOX_TOKEN", "tok"),
            ("SWITCHBOARD_WORKSPACE", "/w"),
            (
                "SWITCHBOARD_AGENT_COMMAND",
                "/opt/bin/scripted-acp-agent  --flag x",
            ),
            ("SWITCHBOARD_IDLE_TIMEOUT_S", "30"),
            ("SWITCHBOARD_AGENT_VERSION", "1.2.3"),
        ]))
        .unwrap();
        assert_eq!(c.agent_version, "1.2.3");
        assert_eq!(c.agent_command.program, "/opt/bin/scripted-acp-agent");
        assert_eq!(c.agent_command.args, vec!["--flag", "x"]);
        assert_eq!(c.agent, "scripted-acp-agent");
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert!(c.sandbox_id.as_str().starts_with("sandbox-"));
    }

    #[test]
    fn refuses_missing_or_malformed_settings() {
        let base = [
            (
                "SWITCHBOARD_CALLBACK_URL",
                "ws://h/sandbox/v1/sessions/o/s/ws",
            ),
            ("SWITCHBOARD_SANDBOX_TOKEN", "tok"),
            ("SWITCHBOARD_WORKSPACE", "/w"),
        ];
        assert!(BridgeConfig::from_vars(vars(&base)).is_ok());
        for (name, value) in [
            ("SWITCHBOARD_CALLBACK_URL", ""),
            ("SWITCHBOARD_CALLBACK_URL", "https://h/x"),
            ("SWITCHBOARD_SANDBOX_TOKEN", " "),
            ("SWITCHBOARD_WORKSPACE", "relative/dir"),
            ("SWITCHBOARD_IDLE_TIMEOUT_S", "soon"),
            ("SWITCHBOARD_SANDBOX_ID", "bad id"),
            ("SWITCHBOARD_AGENT_COMMAND", "   "),
        ] {
            let mut pairs: Vec<(&str, &str)> =
                base.iter().copied().filter(|(k, _)| *k != name).collect();
            pairs.push((name, value));
            if name == "SWITCHBOARD_AGENT_COMMAND" {
                // Blank means "not set": the default command applies.
                assert!(BridgeConfig::from_vars(vars(&pairs)).is_ok());
                continue;
            }
            let err = BridgeConfig::from_vars(vars(&pairs)).unwrap_err();
            assert!(
                matches!(err, BridgeError::Config(_)),
                "{name}={value:?}: {err}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<u64> = (0..6).map(|a| b.delay(a).as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }
}
