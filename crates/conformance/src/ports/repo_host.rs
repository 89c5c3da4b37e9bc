//! Contract cases, fault catalog, `Faulty` wrapper and disruption cases for `RepoHost`.

use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, FaultPlan, Faulty};
use crate::harness::{self, BoxFut, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchboard_core::protocol::RepoSpec;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{OrgId, Principal, UserId};
use switchboard_fakes::repo_host::InMemoryRepoHost;
use switchboard_fakes::InMemoryClock;
use switchboard_ports::error::ErrorClass;
use switchboard_ports::sandbox::RepoToken;
use switchboard_ports::{Clock, PortId, RepoHost, RepoHostError};

/// Grants a repository to an org: `(org, url, git_ref, files)`. The first ref granted for a URL is
/// its default branch.
pub type Grant = Arc<
    dyn Fn(OrgId, String, String, Vec<String>) -> BoxFut<'static, Result<(), String>> + Send + Sync,
>;

/// What every `RepoHost` case gets.
pub struct Fixture {
    pub host: Arc<dyn RepoHost>,
    /// The clock the host reads, to judge token expiry.
    pub clock: Arc<dyn Clock>,
    pub grant: Grant,
}

/// Every contract case of `RepoHost`, one per `# Contract` bullet.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "list_files_of_known_repo",
            run: |f| Box::pin(list_files_of_known_repo(f)),
        },
        Case {
            name: "unknown_repo_not_found",
            run: |f| Box::pin(unknown_repo_not_found(f)),
        },
        Case {
            name: "other_tenant_repo_not_found",
            run: |f| Box::pin(other_tenant_repo_not_found(f)),
        },
        Case {
            name: "clone_token_expires",
            run: |f| Box::pin(clone_token_expires(f)),
        },
    ]
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

fn tenant(org: &OrgId) -> TenantContext {
    Principal::from_verified_credential(
        org.clone(),
        UserId::parse("user-1").expect("a valid user id"),
        None,
        vec![],
    )
    .tenant()
}

fn unique_org() -> OrgId {
    OrgId::parse(unique("org-rh")).expect("a valid org id")
}

fn repo(url: &str, git_ref: Option<&str>) -> RepoSpec {
    RepoSpec {
        url: url.to_string(),
        git_ref: git_ref.map(str::to_string),
    }
}

fn unique_url() -> String {
    format!("https://git.example.invalid/{}/app.git", unique("acme"))
}

fn files() -> Vec<String> {
    [
        "Cargo.toml",
        "README.md",
        "src/main.rs",
        "src/lib/mod.rs",
        ".github/workflows/ci.yml",
    ]
    .map(String::from)
    .to_vec()
}

fn as_set(files: Vec<String>) -> BTreeSet<String> {
    files.into_iter().collect()
}

async fn list_files_of_known_repo(f: Fixture) -> CaseResult {
    let org = unique_org();
    let url = unique_url();
    (f.grant)(org.clone(), url.clone(), "main".into(), files()).await?;
    (f.grant)(
        org.clone(),
        url.clone(),
        "feature".into(),
        vec!["only-on-feature.txt".into()],
    )
    .await?;
    let listed = ok!(f
        .host
        .list_files(&tenant(&org), &repo(&url, Some("main")))
        .await);
    ensure!(
        listed
            .iter()
            .all(|p| !p.starts_with('/') && !p.split('/').any(|s| s.is_empty() || s == "..")),
        "paths are not relative: {listed:?}"
    );
    ensure_eq!(as_set(listed), as_set(files()), "the files of main");
    ensure_eq!(
        as_set(ok!(f
            .host
            .list_files(&tenant(&org), &repo(&url, None))
            .await)),
        as_set(files()),
        "no ref lists the default branch"
    );
    ensure_eq!(
        ok!(f
            .host
            .list_files(&tenant(&org), &repo(&url, Some("feature")))
            .await),
        vec!["only-on-feature.txt".to_string()],
        "the files of another ref"
    );
    Ok(())
}

async fn unknown_repo_not_found(f: Fixture) -> CaseResult {
    let org = unique_org();
    let url = unique_url();
    (f.grant)(org.clone(), url.clone(), "main".into(), files()).await?;
    let t = tenant(&org);
    let unknown = repo(&unique_url(), None);
    expect_class!(f.host.list_files(&t, &unknown).await, ErrorClass::NotFound);
    expect_class!(f.host.clone_token(&t, &unknown).await, ErrorClass::NotFound);
    let unknown_ref = repo(&url, Some("no-such-branch"));
    expect_class!(
        f.host.list_files(&t, &unknown_ref).await,
        ErrorClass::NotFound
    );
    expect_class!(
        f.host.clone_token(&t, &unknown_ref).await,
        ErrorClass::NotFound
    );
    Ok(())
}

async fn other_tenant_repo_not_found(f: Fixture) -> CaseResult {
    let (owner, other) = (unique_org(), unique_org());
    let url = unique_url();
    (f.grant)(owner.clone(), url.clone(), "main".into(), files()).await?;
    for spec in [repo(&url, None), repo(&url, Some("main"))] {
        expect_class!(
            f.host.list_files(&tenant(&other), &spec).await,
            ErrorClass::NotFound
        );
        expect_class!(
            f.host.clone_token(&tenant(&other), &spec).await,
            ErrorClass::NotFound
        );
    }
    ensure_eq!(
        as_set(ok!(f
            .host
            .list_files(&tenant(&owner), &repo(&url, None))
            .await)),
        as_set(files()),
        "the owner still sees it"
    );
    Ok(())
}

async fn clone_token_expires(f: Fixture) -> CaseResult {
    let org = unique_org();
    let url = unique_url();
    (f.grant)(org.clone(), url.clone(), "main".into(), files()).await?;
    let before = f.clock.now();
    let token: RepoToken = ok!(f.host.clone_token(&tenant(&org), &repo(&url, None)).await);
    ensure!(!token.token.expose().is_empty(), "the clone token is empty");
    ensure!(
        token.expires_at > before,
        "the token expires at {}, not after now() = {before}",
        token.expires_at
    );
    let second = ok!(f
        .host
        .clone_token(&tenant(&org), &repo(&url, Some("main")))
        .await);
    ensure!(
        second.expires_at > f.clock.now(),
        "a second token expires at {}, already past",
        second.expires_at
    );
    Ok(())
}

/// An in-memory host on a virtual clock, with its grant hook.
fn in_memory() -> (Arc<InMemoryRepoHost>, InMemoryClock, Grant) {
    let clock = InMemoryClock::new();
    let host = Arc::new(InMemoryRepoHost::new(Arc::new(clock.clone())));
    let granting = host.clone();
    let grant: Grant = Arc::new(move |org, url, git_ref, files| {
        granting.add_repo(&org, &url, &git_ref, files);
        Box::pin(async { Ok(()) })
    });
    (host, clock, grant)
}

/// The URL prefix of every repository the cases make up (see `unique_url`).
const CASE_URL_PREFIX: &str = "https://git.example.invalid/";

/// `GitRepoHost` over real git repositories in a scratch directory: the cases' made-up
/// `https://git.example.invalid/…` URLs are fetched from bare repositories under `repos/` through
/// a configured rewrite (git's `insteadOf`), and a grant gives the org that exact URL. Each granted
/// ref is a commit of exactly the granted files; the first ref of a URL is its `HEAD`.
async fn git_cli_fixture() -> Result<Fixture, String> {
    use switchboard_adapters::git_repo_host::{scratch, GitRepoConfig, GitRepoHost, RepoGrant};
    let dir = Arc::new(switchboard_adapters::sql::scratch::ScratchDir::create(
        "sb-repo-host",
    )?);
    let repos = dir.join("repos");
    let clock: Arc<dyn Clock> = Arc::new(switchboard_adapters::system_clock::SystemClock::new());
    let config = GitRepoConfig::new(dir.join("cache"))
        .with_rewrite(CASE_URL_PREFIX, format!("file://{}/", repos.display()));
    let host = Arc::new(GitRepoHost::new(config, clock.clone()));
    let granting = host.clone();
    let grant: Grant = Arc::new(move |org, url, git_ref, files| {
        let (host, repos, _scratch) = (granting.clone(), repos.clone(), dir.clone());
        Box::pin(async move {
            let rest = url.strip_prefix(CASE_URL_PREFIX).ok_or_else(|| {
                format!("the git fixture only makes {CASE_URL_PREFIX} repositories, not {url}")
            })?;
            let path = repos.join(rest);
            let files: Vec<(String, String)> = files
                .into_iter()
                .map(|f| {
                    let content = format!("contents of {f}\n");
                    (f, content)
                })
                .collect();
            tokio::task::spawn_blocking(move || scratch::commit_files(&path, &git_ref, &files))
                .await
                .map_err(|e| e.to_string())??;
            host.grant(RepoGrant::new(org, url)?);
            Ok(())
        })
    });
    Ok(Fixture { host, clock, grant })
}

/// The fake and every real `RepoHost`: the git command-line host.
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            let (host, clock, grant) = in_memory();
            Ok(Fixture {
                host,
                clock: Arc::new(clock),
                grant,
            })
        }),
        Implementation::new("git_cli", ImplKind::Adapter, git_cli_fixture)
            .gated(switchboard_adapters::git_repo_host::scratch::git_gate),
    ]
}

/// What callers of a repo host are promised when it fails.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "clone_token",
        outcome: "no token is issued and the caller sees `Unavailable`; no sandbox is started with a missing credential, and once the host heals a retry gets a valid token",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "clone_token",
        outcome: "the caller sees `Timeout` and holds no token; a retry after the host heals gets a valid, unexpired token",
    },
    CatalogEntry {
        fault: Fault::RateLimited,
        op: "clone_token",
        outcome: "the caller sees `RateLimited` and holds no token; a later retry succeeds",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "list_files",
        outcome: "environment autodiscovery gets `Unavailable`, never an empty or partial listing passed off as the repository's files",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "list_files",
        outcome: "the listing fails `Timeout` with no files; a retry after the host heals lists every file",
    },
    CatalogEntry {
        fault: Fault::RateLimited,
        op: "list_files",
        outcome: "the listing fails `RateLimited` with no files; a later retry lists every file",
    },
    CatalogEntry {
        fault: Fault::Corrupt,
        op: "list_files",
        outcome: "a listing that fails its integrity check is refused `Corrupt`: no file list reaches autodiscovery",
    },
    CatalogEntry {
        fault: Fault::Slow,
        op: "list_files",
        outcome: "a slow listing still returns every file of the repository",
    },
];

#[async_trait]
impl RepoHost for Faulty<dyn RepoHost> {
    async fn clone_token(
        &self,
        tenant: &TenantContext,
        repo: &RepoSpec,
    ) -> Result<RepoToken, RepoHostError> {
        self.call("clone_token", || self.inner.clone_token(tenant, repo))
            .await
    }

    async fn list_files(
        &self,
        tenant: &TenantContext,
        repo: &RepoSpec,
    ) -> Result<Vec<String>, RepoHostError> {
        self.call("list_files", || self.inner.list_files(tenant, repo))
            .await
    }
}

/// The suite of `RepoHost`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::RepoHost, cases(), implementations(), CATALOG)
}

/// Runs every `RepoHost` case against an adapter's fixtures.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    harness::check(PortId::RepoHost, name, make, &cases())
}

// ----- disruption cases ----------------------------------------------------------------------

/// One disruption case per catalog entry.
pub fn disruptions() -> Vec<DisruptionCase> {
    crate::disruption::per_entry(PortId::RepoHost, CATALOG, |entry| Box::pin(disrupt(entry)))
}

/// Injects `entry`'s fault forever, checks the caller's view and the host's state, heals, and
/// checks the flow succeeds.
async fn disrupt(entry: CatalogEntry) -> CaseResult {
    let (fake, clock, _) = in_memory();
    let org = unique_org();
    let url = unique_url();
    fake.add_repo(&org, &url, "main", files());
    let plan = FaultPlan::always(entry.op, entry.fault);
    let faulty = Faulty::new(fake.clone() as Arc<dyn RepoHost>, plan.clone());
    let (t, spec) = (tenant(&org), repo(&url, None));
    match entry.op {
        "clone_token" => {
            let answer = faulty.clone_token(&t, &spec).await;
            match entry.fault.class() {
                Some(class) => {
                    expect_class!(answer, class);
                    // Only a lost answer reaches the host; the token it minted never reached anyone.
                    let expected = usize::from(entry.fault == Fault::LostAnswer);
                    ensure_eq!(
                        fake.tokens_issued(),
                        expected,
                        "tokens issued while failing"
                    );
                }
                None => {
                    let token = ok!(answer);
                    ensure!(
                        fake.token_is_valid(token.token.expose()),
                        "a slow clone token is not valid"
                    );
                }
            }
            plan.heal();
            let token = ok!(faulty.clone_token(&t, &spec).await);
            ensure!(
                fake.token_is_valid(token.token.expose()),
                "the token issued after healing is not valid"
            );
            ensure!(
                token.expires_at > clock.now(),
                "the token issued after healing has expired"
            );
        }
        "list_files" => {
            let answer = faulty.list_files(&t, &spec).await;
            match entry.fault.class() {
                Some(class) => expect_class!(answer, class),
                None => ensure_eq!(as_set(ok!(answer)), as_set(files()), "a slow listing"),
            }
            ensure_eq!(
                as_set(ok!(fake.list_files(&t, &spec).await)),
                as_set(files()),
                "the repository after the fault"
            );
            plan.heal();
            ensure_eq!(
                as_set(ok!(faulty.list_files(&t, &spec).await)),
                as_set(files()),
                "the listing after healing"
            );
        }
        other => return Err(format!("no disruption flow for op {other}")),
    }
    ensure_eq!(
        plan.injected(),
        vec![(entry.op.to_string(), entry.fault)],
        "faults injected"
    );
    Ok(())
}
