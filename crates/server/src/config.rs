//! Configuration of `switchboard serve`, from flags and environment, validated at start with
//! errors an operator can act on. No configuration at all is the embedded default: SQLite under
//! `./switchboard-data`, listening on 127.0.0.1:8080.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use switchboard_core::session::SessionConfig;

/// Everything `serve` needs.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the embedded default keeps its data (SQLite files, session stores, the key file).
    #[arg(
        long,
        env = "SWITCHBOARD_DATA_DIR",
        default_value = "./switchboard-data"
    )]
    pub data_dir: PathBuf,
    /// Postgres for identity, vault, ledger and audit (`postgres://…`); unset = embedded SQLite.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The base URL sandboxes dial back to (`ws://host:port`); defaults to the listen address.
    #[arg(long, env = "SWITCHBOARD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// A sandbox must dial back within this many seconds of being spawned.
    #[arg(long, env = "SWITCHBOARD_SPAWN_TIMEOUT_S", default_value_t = 120)]
    pub spawn_timeout_s: u64,
    /// A running run must show life within this many seconds.
    #[arg(long, env = "SWITCHBOARD_RUN_IDLE_TIMEOUT_S", default_value_t = 300)]
    pub run_idle_timeout_s: u64,
    /// A sandbox whose socket dropped may dial back within this many seconds; then it is lost
    /// (its run fails `sandbox_lost`) and the next prompt gets a new sandbox.
    #[arg(
        long,
        env = "SWITCHBOARD_SANDBOX_RECONNECT_GRACE_S",
        default_value_t = 30
    )]
    pub sandbox_reconnect_grace_s: u64,
    /// An idle session with no clients is dropped from memory after this many seconds.
    #[arg(long, env = "SWITCHBOARD_HIBERNATE_AFTER_S", default_value_t = 60)]
    pub hibernate_after_s: u64,
    /// An idle sandbox is shut down after this many seconds.
    #[arg(
        long,
        env = "SWITCHBOARD_SANDBOX_IDLE_TIMEOUT_S",
        default_value_t = 600
    )]
    pub sandbox_idle_timeout_s: u64,
    /// Who starts sandboxes: `local` (each sandbox is a process group on this machine running
    /// the bridge, under bubblewrap when it is installed) or `none` (sessions wait for a sandbox
    /// to dial back with its token). Default: `local` when the bridge is found (next to this
    /// binary, or given with `--bridge`), else `none`.
    #[arg(long, env = "SWITCHBOARD_SANDBOX_PROVIDER", value_enum)]
    pub sandbox_provider: Option<SandboxProviderChoice>,
    /// The bridge program local sandboxes run (default: `switchboard-bridge` next to this
    /// binary, else on PATH).
    #[arg(long, env = "SWITCHBOARD_BRIDGE")]
    pub bridge: Option<PathBuf>,
    /// The command line local sandboxes start the default agent (`opencode`) with, program then
    /// arguments separated by spaces (default: `opencode acp`).
    #[arg(long, env = "SWITCHBOARD_AGENT_COMMAND")]
    pub agent_command: Option<String>,
    /// An `ask` permission request waits this many seconds for a client's answer; then the
    /// session policy's `ask_default` applies.
    #[arg(long, env = "SWITCHBOARD_PERMISSION_TIMEOUT_S", default_value_t = 60)]
    pub permission_timeout_s: u64,
    /// Repositories tenants may list with `POST /v1/environment/detect {"repo"}`, as
    /// `ORG_ID=URL_PREFIX` (`*=URL_PREFIX`: every org, remote prefixes only; a local path must
    /// name its org). Repeat the flag or separate with commas. None: no repo host is configured.
    #[arg(
        long = "repo-grant",
        env = "SWITCHBOARD_REPO_GRANTS",
        value_delimiter = ','
    )]
    pub repo_grants: Vec<String>,
    /// Model providers routed to a base URL of the operator's choosing, as `NAME=URL` (e.g.
    /// `openai=http://127.0.0.1:4000/v1`), replacing a default route of the same name. Repeat the
    /// flag or separate with commas. Added after `SWITCHBOARD_PROVIDER_<NAME>_BASE_URL`, so these
    /// win.
    #[arg(
        long = "provider",
        env = "SWITCHBOARD_PROVIDERS",
        value_delimiter = ',',
        value_parser = parse_provider
    )]
    pub providers: Vec<(String, String)>,
}

/// `NAME=URL` of `--provider`.
fn parse_provider(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, url)) if !name.trim().is_empty() && !url.trim().is_empty() => {
            Ok((name.trim().to_string(), url.trim().to_string()))
        }
        _ => Err(format!("{s:?} is not NAME=URL")),
    }
}

/// The sandbox providers `serve` can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxProviderChoice {
    /// A local process group per sandbox, running the bridge.
    Local,
    /// None: sessions wait for a sandbox to dial back with its token.
    None,
}

impl ServeConfig {
    /// The embedded default, rooted at `data_dir`, on an ephemeral loopback port.
    pub fn embedded(data_dir: PathBuf) -> Self {
        ServeConfig {
            listen: "127.0.0.1:0".parse().expect("a valid address"),
            data_dir,
            database_url: None,
            public_url: None,
            spawn_timeout_s: 120,
            run_idle_timeout_s: 300,
            sandbox_reconnect_grace_s: 30,
            hibernate_after_s: 60,
            sandbox_idle_timeout_s: 600,
            sandbox_provider: None,
            bridge: None,
            agent_command: None,
            permission_timeout_s: 60,
            repo_grants: Vec::new(),
            providers: Vec::new(),
        }
    }

    /// The sandbox provider to use: the one asked for, else `local` when a bridge was given or
    /// sits next to this binary, else `none`.
    pub fn sandbox_choice(&self) -> SandboxProviderChoice {
        match self.sandbox_provider {
            Some(choice) => choice,
            None if self.bridge.is_some()
                || switchboard_adapters::local_sandbox::bridge_next_to_current_exe().is_some() =>
            {
                SandboxProviderChoice::Local
            }
            None => SandboxProviderChoice::None,
        }
    }

    /// The local sandbox provider's settings: sandboxes under `<data dir>/sandboxes`, the data
    /// directory hidden from them, the configured bridge and agent command.
    pub fn local_sandbox(&self) -> switchboard_adapters::local_sandbox::LocalSandboxConfig {
        let mut local = switchboard_adapters::local_sandbox::LocalSandboxConfig::new(
            self.data_dir.join("sandboxes"),
        )
        .hide(self.data_dir.clone());
        if let Some(bridge) = &self.bridge {
            local = local.with_bridge(bridge.clone(), Vec::new());
        }
        if let Some(command) = &self.agent_command {
            local = local.with_agent_command(crate::app::DEFAULT_AGENT, command.clone());
        }
        local
    }

    /// Checks what can be checked before opening anything.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(format!(
                    "DATABASE_URL must be a postgres:// URL, got {:?}",
                    url.split('@').next_back().unwrap_or("")
                ));
            }
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(format!(
                    "SWITCHBOARD_PUBLIC_URL must start with ws:// or wss://, got {url:?}"
                ));
            }
        }
        for (name, value) in [
            ("spawn timeout", self.spawn_timeout_s),
            ("run idle timeout", self.run_idle_timeout_s),
            ("sandbox reconnect grace", self.sandbox_reconnect_grace_s),
            ("hibernate after", self.hibernate_after_s),
            ("sandbox idle timeout", self.sandbox_idle_timeout_s),
            ("permission timeout", self.permission_timeout_s),
        ] {
            if value == 0 {
                return Err(format!("the {name} must be at least 1 second"));
            }
        }
        if let Some(bridge) = &self.bridge {
            if !bridge.is_file() {
                return Err(format!(
                    "the bridge {} (--bridge, SWITCHBOARD_BRIDGE) is not a file",
                    bridge.display()
                ));
            }
        }
        self.repo_host()?;
        if self
            .agent_command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(
                "the agent command (--agent-command, SWITCHBOARD_AGENT_COMMAND) is empty".into(),
            );
        }
        Ok(())
    }

    /// The session machine's configuration from these settings.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            spawn_timeout: Duration::from_secs(self.spawn_timeout_s),
            run_idle_timeout: Duration::from_secs(self.run_idle_timeout_s),
            sandbox_reconnect_grace: Duration::from_secs(self.sandbox_reconnect_grace_s),
            hibernate_after: Duration::from_secs(self.hibernate_after_s),
            sandbox_idle_timeout: Duration::from_secs(self.sandbox_idle_timeout_s),
            permission_timeout: Duration::from_secs(self.permission_timeout_s),
            ..SessionConfig::default()
        }
    }

    /// The repo host's settings: a git host caching under `<data dir>/repo-cache` with the
    /// `--repo-grant`s; `None` when no grant is configured (no repo host). `Err` names a bad grant.
    pub fn repo_host(
        &self,
    ) -> Result<Option<switchboard_adapters::git_repo_host::GitRepoConfig>, String> {
        use switchboard_adapters::git_repo_host::{GitRepoConfig, RepoGrant};
        let grants: Vec<&str> = self
            .repo_grants
            .iter()
            .map(|g| g.trim())
            .filter(|g| !g.is_empty())
            .collect();
        if grants.is_empty() {
            return Ok(None);
        }
        let mut config = GitRepoConfig::new(self.data_dir.join("repo-cache"));
        for grant in grants {
            config = config
                .with_grant(RepoGrant::parse(grant).map_err(|e| format!("--repo-grant: {e}"))?);
        }
        Ok(Some(config))
    }

    /// Where sandboxes dial back: the public URL, or the address actually bound.
    pub fn callback_base(&self, bound: SocketAddr) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("ws://{bound}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let mut c = ServeConfig::embedded("/tmp/x".into());
        assert!(c.validate().is_ok());
        c.database_url = Some("mysql://x".into());
        assert!(c.validate().unwrap_err().contains("DATABASE_URL"));
        c.database_url = None;
        c.public_url = Some("http://x".into());
        assert!(c.validate().unwrap_err().contains("SWITCHBOARD_PUBLIC_URL"));
        c.public_url = None;
        c.spawn_timeout_s = 0;
        assert!(c.validate().unwrap_err().contains("spawn timeout"));
    }

    #[test]
    fn providers_are_name_equals_url() {
        assert_eq!(
            parse_provider(" openai = http://127.0.0.1:9/v1 "),
            Ok(("openai".to_string(), "http://127.0.0.1:9/v1".to_string()))
        );
        assert!(parse_provider("openai").unwrap_err().contains("NAME=URL"));
        assert!(parse_provider("=http://x").is_err());
    }

    #[test]
    fn the_sandbox_provider_follows_the_flags() {
        let mut c = ServeConfig::embedded("/tmp/x".into());
        c.sandbox_provider = Some(SandboxProviderChoice::None);
        assert_eq!(c.sandbox_choice(), SandboxProviderChoice::None);
        c.sandbox_provider = None;
        c.bridge = Some("/bin/sh".into());
        assert_eq!(
            c.sandbox_choice(),
            SandboxProviderChoice::Local,
            "a given bridge means local"
        );
        assert!(c.validate().is_ok());
        let local = c.local_sandbox();
        assert_eq!(local.root, PathBuf::from("/tmp/x/sandboxes"));
        assert!(
            local.hidden.contains(&PathBuf::from("/tmp/x")),
            "the data dir is hidden from sandboxes"
        );
        assert_eq!(local.bridge, PathBuf::from("/bin/sh"));
        c.bridge = Some("/tmp/x/no-such-bridge".into());
        assert!(c.validate().unwrap_err().contains("--bridge"));
        c.bridge = None;
        c.agent_command = Some("scripted-acp-agent --script demo".into());
        assert_eq!(
            c.local_sandbox().agent_commands[crate::app::DEFAULT_AGENT],
            "scripted-acp-agent --script demo"
        );
    }
}
