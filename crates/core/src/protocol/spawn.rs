//! The spawn spec a `SandboxProvider` receives.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Idle and maximum lifetimes, in seconds, that the provider enforces on its side too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnTimeouts {
    pub idle_s: u64,
    pub max_s: u64,
}

/// A repository to clone into the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoSpec {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
}

/// `{"session_key", "callback_url", "token", "agent", "repo"?, "env", "timeouts"}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnSpec {
    /// `org:session`.
    pub session_key: String,
    pub callback_url: String,
    /// The one-time sandbox token, in clear: only the provider and the sandbox ever see it.
    pub token: String,
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<RepoSpec>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub timeouts: SpawnTimeouts,
}

impl std::fmt::Debug for SpawnSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnSpec")
            .field("session_key", &self.session_key)
            .field("callback_url", &self.callback_url)
            .field("token", &"<redacted>")
            .field("agent", &self.agent)
            .field("repo", &self.repo)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("timeouts", &self.timeouts)
            .finish()
    }
}
