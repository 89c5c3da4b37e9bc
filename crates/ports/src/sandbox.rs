//! Sandbox plane: dev boxes (`SandboxProvider`), repositories (`RepoHost`) and the blobs runs
//! produce (`ArtifactStore`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use switchboard_core::protocol::{RepoSpec, SpawnSpec};
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{RunId, SandboxId, SessionId, Timestamp};

crate::port_error!(
    /// Errors of [`SandboxProvider`].
    SandboxProviderError,
    "sandbox provider"
);
crate::port_error!(
    /// Errors of [`RepoHost`].
    RepoHostError,
    "repo host"
);
crate::port_error!(
    /// Errors of [`ArtifactStore`].
    ArtifactStoreError,
    "artifact store"
);

/// What a provider knows of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SandboxState {
    Starting,
    Running,
    Exited { reason: String },
}

/// Creates, watches and ends dev boxes. The spec carries the callback URL and the one-time token.
///
/// # Contract
/// - `spawn_returns_distinct_ids`: each spawn returns a new sandbox id that reports `Starting` or
///   `Running`.
/// - `terminate_is_idempotent`: after `terminate` the status is `Exited`; terminating again is fine.
/// - `unknown_sandbox_not_found`: status, terminate and snapshot of an unknown id are `NotFound`.
/// - `spec_reaches_sandbox`: the callback URL and token handed to `spawn` are what the sandbox gets.
/// - `snapshot_running`: a running sandbox can be snapshotted; an exited one is `Conflict`.
#[async_trait]
pub trait SandboxProvider: Send + Sync {
    async fn spawn(&self, spec: &SpawnSpec) -> Result<SandboxId, SandboxProviderError>;
    async fn status(&self, id: &SandboxId) -> Result<SandboxState, SandboxProviderError>;
    async fn terminate(&self, id: &SandboxId) -> Result<(), SandboxProviderError>;
    async fn snapshot(&self, id: &SandboxId) -> Result<String, SandboxProviderError>;
}

/// A short-lived credential for cloning or pushing a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoToken {
    pub token: crate::SecretString,
    pub expires_at: Timestamp,
}

/// Repositories: short-lived clone tokens and tree listings for environment autodiscovery.
///
/// # Contract
/// - `list_files_of_known_repo`: lists the files of a repository the tenant can reach, as relative
///   paths.
/// - `unknown_repo_not_found`: an unknown repository (or ref) is `NotFound`.
/// - `other_tenant_repo_not_found`: a repository granted to another tenant is `NotFound`.
/// - `clone_token_expires`: clone tokens carry an expiry in the future.
///
/// A listing is the whole tree or an error, never a partial list: a host that bounds listings
/// (time, file count) fails past the bound. What a clone token is (a minted short-lived
/// credential, a leased configured one, or an opaque token when none is needed) is the
/// adapter's to document; callers only rely on it being unusable after `expires_at`.
#[async_trait]
pub trait RepoHost: Send + Sync {
    async fn clone_token(
        &self,
        tenant: &TenantContext,
        repo: &RepoSpec,
    ) -> Result<RepoToken, RepoHostError>;
    async fn list_files(
        &self,
        tenant: &TenantContext,
        repo: &RepoSpec,
    ) -> Result<Vec<String>, RepoHostError>;
}

/// The address of one artifact, always within a tenant and session.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArtifactKey {
    pub session: SessionId,
    pub run: Option<RunId>,
    /// A relative name such as `logs/agent.txt`: no `..`, no leading `/`.
    pub name: String,
}

/// What is known of a stored artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    pub key: ArtifactKey,
    pub size: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
}

/// Blobs a run produces: logs, diffs, files.
///
/// # Contract
/// - `put_then_get`: bytes stored are returned unchanged with their size and SHA-256.
/// - `overwrite_replaces`: a second put under the same key replaces the content.
/// - `list_by_session`: `list` returns the session's artifacts only.
/// - `tenant_isolation`: another tenant cannot get, list or delete them (`NotFound`).
/// - `path_traversal_refused`: names with `..`, a leading `/` or empty segments are `Invalid`.
/// - `delete_removes`: after delete, get is `NotFound`.
#[async_trait]
pub trait ArtifactStore: Send + Sync {
    async fn put(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
        bytes: Vec<u8>,
    ) -> Result<ArtifactMeta, ArtifactStoreError>;
    async fn get(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
    ) -> Result<Vec<u8>, ArtifactStoreError>;
    async fn list(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
    ) -> Result<Vec<ArtifactMeta>, ArtifactStoreError>;
    async fn delete(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
    ) -> Result<(), ArtifactStoreError>;
}

/// Checks an artifact name: relative, no `..`, no empty segment, at most 512 bytes.
pub fn valid_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 512
        && !name.starts_with('/')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && seg != ".." && seg != ".")
}
