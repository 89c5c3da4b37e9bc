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
        }
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
}
