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
            hibernate_after_s: 60,
            sandbox_idle_timeout_s: 600,
            sandbox_provider: None,
            bridge: None,
            agent_command: None,
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
            ("hibernate after", self.hibernate_after_s),
            ("sandbox idle timeout", self.sandbox_idle_timeout_s),
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
            hibernate_after: Duration::from_secs(self.hibernate_after_s),
            sandbox_idle_timeout: Duration::from_secs(self.sandbox_idle_timeout_s),
            ..SessionConfig::default()
        }
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
