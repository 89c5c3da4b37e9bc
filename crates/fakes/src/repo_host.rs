//! `InMemoryRepoHost`: repositories granted to tenants, with their file lists, and short-lived clone
//! tokens whose expiry comes from the `Clock` port.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::protocol::RepoSpec;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{OrgId, Timestamp};
use switchboard_ports::sandbox::RepoToken;
use switchboard_ports::{Clock, RepoHost, RepoHostError, SecretString};

/// How long a clone token lives unless set otherwise (GitHub installation tokens live an hour).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// One repository as granted to one tenant.
struct Repo {
    /// The ref used when a [`RepoSpec`] names none: the first ref registered.
    default_ref: String,
    /// Files per ref, as sorted relative paths.
    refs: BTreeMap<String, Vec<String>>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<(OrgId, String), Repo>,
    next_token: u64,
    /// Issued tokens (by their text) and when each expires.
    tokens: BTreeMap<String, Timestamp>,
}

/// An in-memory [`RepoHost`]. A repository is visible only to the org it was added for.
pub struct InMemoryRepoHost {
    clock: Arc<dyn Clock>,
    token_ttl: Duration,
    state: Mutex<State>,
}

impl InMemoryRepoHost {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        InMemoryRepoHost {
            clock,
            token_ttl: DEFAULT_TOKEN_TTL,
            state: Mutex::new(State::default()),
        }
    }

    /// Sets how long clone tokens live.
    pub fn with_token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// Grants repository `url` at `git_ref` with `files` to `org`. The first ref added for a
    /// repository is its default branch. Adding the same ref again replaces its file list.
    pub fn add_repo(
        &self,
        org: &OrgId,
        url: &str,
        git_ref: &str,
        files: impl IntoIterator<Item = impl Into<String>>,
    ) {
        let mut files: Vec<String> = files.into_iter().map(Into::into).collect();
        files.sort();
        files.dedup();
        let mut st = self.state.lock().unwrap();
        let repo = st
            .repos
            .entry((org.clone(), url.to_string()))
            .or_insert_with(|| Repo {
                default_ref: git_ref.to_string(),
                refs: BTreeMap::new(),
            });
        repo.refs.insert(git_ref.to_string(), files);
    }

    /// Whether `token` was issued by this host and has not expired by the clock's `now()`.
    pub fn token_is_valid(&self, token: &str) -> bool {
        let now = self.clock.now();
        self.state
            .lock()
            .unwrap()
            .tokens
            .get(token)
            .is_some_and(|expires| now < *expires)
    }

    /// How many clone tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        self.state.lock().unwrap().tokens.len()
    }

    /// The files of `repo` at its ref as `tenant` sees them, or `NotFound`.
    fn files_of(
        st: &State,
        tenant: &TenantContext,
        repo: &RepoSpec,
    ) -> Result<Vec<String>, RepoHostError> {
        if repo.url.trim().is_empty() {
            return Err(RepoHostError::Invalid("a repository needs a URL".into()));
        }
        // Another tenant's repository answers exactly like one that does not exist.
        let found = st
            .repos
            .get(&(tenant.org().clone(), repo.url.clone()))
            .ok_or_else(|| RepoHostError::NotFound(format!("no repository {}", repo.url)))?;
        let git_ref = repo.git_ref.as_deref().unwrap_or(&found.default_ref);
        found
            .refs
            .get(git_ref)
            .cloned()
            .ok_or_else(|| RepoHostError::NotFound(format!("no ref {git_ref} in {}", repo.url)))
    }
}

#[async_trait]
impl RepoHost for InMemoryRepoHost {
    async fn clone_token(
        &self,
        tenant: &TenantContext,
        repo: &RepoSpec,
    ) -> Result<RepoToken, RepoHostError> {
        let now = self.clock.now();
        let mut st = self.state.lock().unwrap();
        Self::files_of(&st, tenant, repo)?;
        st.next_token += 1;
        let token = format!("ghs_fake_{}_{}", tenant.org(), st.next_token);
        let expires_at = now.add(self.token_ttl);
        st.tokens.insert(token.clone(), expires_at);
        Ok(RepoToken {
            token: SecretString::new(token),
            expires_at,
        })
    }

    async fn list_files(
        &self,
        tenant: &TenantContext,
        repo: &RepoSpec,
    ) -> Result<Vec<String>, RepoHostError> {
        let st = self.state.lock().unwrap();
        Self::files_of(&st, tenant, repo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemoryClock;
    use switchboard_core::{Principal, UserId};

    fn tenant(org: &str) -> TenantContext {
        Principal::from_verified_credential(
            OrgId::parse(org).unwrap(),
            UserId::parse("u").unwrap(),
            None,
            vec![],
        )
        .tenant()
    }

    #[test]
    fn refs_default_and_tokens_expire() {
        futures::FutureExt::now_or_never(async {
            let clock = InMemoryClock::new();
            let host = InMemoryRepoHost::new(Arc::new(clock.clone()))
                .with_token_ttl(Duration::from_secs(60));
            let org = tenant("o1");
            host.add_repo(
                org.org(),
                "https://git.example/r",
                "main",
                ["b.txt", "a.txt"],
            );
            host.add_repo(org.org(), "https://git.example/r", "dev", ["c.txt"]);
            let spec = |r: Option<&str>| RepoSpec {
                url: "https://git.example/r".into(),
                git_ref: r.map(Into::into),
            };
            assert_eq!(
                host.list_files(&org, &spec(None)).await.unwrap(),
                ["a.txt", "b.txt"]
            );
            assert_eq!(
                host.list_files(&org, &spec(Some("dev"))).await.unwrap(),
                ["c.txt"]
            );
            assert!(matches!(
                host.list_files(&org, &spec(Some("x"))).await,
                Err(RepoHostError::NotFound(_))
            ));
            assert!(matches!(
                host.list_files(&tenant("o2"), &spec(None)).await,
                Err(RepoHostError::NotFound(_))
            ));
            let token = host.clone_token(&org, &spec(None)).await.unwrap();
            assert_eq!(token.expires_at, clock.now().add(Duration::from_secs(60)));
            assert!(host.token_is_valid(token.token.expose()));
            clock.advance(Duration::from_secs(60));
            assert!(!host.token_is_valid(token.token.expose()));
        })
        .expect("in-memory fakes never wait");
    }
}
