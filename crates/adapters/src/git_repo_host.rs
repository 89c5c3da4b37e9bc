//! `GitRepoHost`: the `RepoHost` port on the `git` command line (run with `tokio::process`; no
//! libgit2).
//!
//! # Listing
//! `list_files` resolves the ref with `git ls-remote` (no ref: the repository's `HEAD`; a name:
//! `refs/heads/<name>`, then `refs/tags/<name>`; a full `refs/…` name; or a commit id), fetches that
//! one commit without file contents (`git fetch --depth 1 --filter=blob:none`) into a bare cache
//! repository under the configured cache directory (one per repository URL, reused: a commit
//! already there is not fetched again), and answers `git ls-tree -r --name-only` of it: every
//! tracked path, relative, sorted. The whole call is bounded by [`GitRepoConfig::timeout`]
//! (`Timeout` after it, and the cache repository is dropped so that no half-written fetch is
//! reused) and the answer by [`GitRepoConfig::max_files`] (more is `Invalid`: never a partial list
//! passed off as the repository's files).
//!
//! # Tenancy
//! Repositories are *granted* to orgs by the operator: a [`RepoGrant`] is an org (or `*`, every
//! org) and a URL prefix. A repository no grant of the caller's org covers is `NotFound`, with the
//! same message as one that does not exist, so that nothing reveals it exists. A prefix covers
//! the URL itself (a trailing `/` or `.git` aside) and everything below it at a `/` boundary
//! (`https://github.com/acme` covers `https://github.com/acme/app.git`, not
//! `https://github.com/acme-evil/app`); URLs are compared as written. Local repositories (an
//! absolute path or a `file://` URL) are only covered by grants that are themselves local paths and
//! name an org (never `*`): a tenant cannot read the server's file system unless the operator says
//! so. Local paths are compared after resolving symbolic links, component by component. Anything
//! that is not an `https://`, `http://`, `ssh://`, `git://` or `file://` URL, a `user@host:path`,
//! or an absolute path is `Invalid`, as is a path with `.` or `..` segments; git itself may only
//! use those transports (`GIT_ALLOW_PROTOCOL`), never prompts (`GIT_TERMINAL_PROMPT=0`, ssh in
//! batch mode) and runs no hooks.
//!
//! # Errors
//! An unknown repository or ref, and one git cannot read with the configured credentials, are
//! `NotFound`; git missing, an unreachable host or a server error are `Unavailable`; HTTP 429 is
//! `RateLimited`. Messages carry the tail of git's stderr with credentials scrubbed.
//!
//! # Clone tokens
//! `clone_token` first checks, like `list_files`, that the caller may reach the repository and
//! that the ref exists (`NotFound` otherwise). Then:
//! - when the operator configured a credential for a prefix covering the URL
//!   ([`RepoCredential`], the longest prefix wins), the token IS that credential's secret, leased
//!   for [`GitRepoConfig::token_ttl`]: the holder must not use it after `expires_at` and asks for
//!   a new one, and rotating the secret itself is the operator's business (this host does not mint
//!   short-lived credentials; a GitHub App host would);
//! - otherwise git needs no credential for the repository, and the token is a fresh random opaque
//!   string that grants nothing; it exists so that callers treat every repository alike.
//!
//! Credentials reach git only through its environment (`http.<prefix>.extraHeader`, scoped to the
//! prefix), never its arguments, and are never logged or echoed in errors.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use switchboard_core::protocol::RepoSpec;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::OrgId;
use switchboard_ports::sandbox::RepoToken;
use switchboard_ports::{Clock, RepoHost, RepoHostError, SecretString};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;

/// The transports git may use (`GIT_ALLOW_PROTOCOL`).
const ALLOWED_PROTOCOLS: &str = "file:git:http:https:ssh";

/// Which orgs a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantOrgs {
    /// Every org (`*`); only for remote prefixes.
    Every,
    One(OrgId),
}

/// A repository prefix granted to an org. See the module docs for how prefixes match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoGrant {
    pub orgs: GrantOrgs,
    pub prefix: String,
}

impl RepoGrant {
    /// A grant of `prefix` to `org`. `Err` when the prefix is not a repository location.
    pub fn new(org: OrgId, prefix: impl Into<String>) -> Result<Self, String> {
        Self::build(GrantOrgs::One(org), prefix.into())
    }

    /// A grant of a remote `prefix` to every org. `Err` for a local prefix.
    pub fn every_org(prefix: impl Into<String>) -> Result<Self, String> {
        Self::build(GrantOrgs::Every, prefix.into())
    }

    /// Parses `ORG=PREFIX` (`*=PREFIX` for every org), as `serve --repo-grant` takes it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (org, prefix) = text
            .split_once('=')
            .ok_or_else(|| format!("a repo grant is ORG=URL_PREFIX, got {text:?}"))?;
        let org = org.trim();
        if org == "*" {
            return Self::every_org(prefix.trim());
        }
        let org = OrgId::parse(org).map_err(|e| format!("the org of repo grant {text:?}: {e}"))?;
        Self::new(org, prefix.trim())
    }

    fn build(orgs: GrantOrgs, prefix: String) -> Result<Self, String> {
        let location = Location::parse(&prefix)
            .map_err(|e| format!("repo grant prefix {prefix:?}: {}", e.message()))?;
        if matches!(location, Location::Local(_)) && orgs == GrantOrgs::Every {
            return Err(format!(
                "a local repository path ({prefix}) must be granted to a named org, not to every org"
            ));
        }
        Ok(RepoGrant { orgs, prefix })
    }

    fn covers_org(&self, org: &OrgId) -> bool {
        match &self.orgs {
            GrantOrgs::Every => true,
            GrantOrgs::One(one) => one == org,
        }
    }
}

impl std::fmt::Display for RepoGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.orgs {
            GrantOrgs::Every => write!(f, "*={}", self.prefix),
            GrantOrgs::One(org) => write!(f, "{org}={}", self.prefix),
        }
    }
}

/// A credential git presents for repositories under an `http(s)://` prefix, as HTTP basic auth
/// (`username:secret`; GitHub tokens take any username, e.g. `x-access-token`).
#[derive(Clone)]
pub struct RepoCredential {
    pub prefix: String,
    pub username: String,
    pub secret: SecretString,
}

impl std::fmt::Debug for RepoCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoCredential")
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("secret", &self.secret)
            .finish()
    }
}

/// Settings of a [`GitRepoHost`].
#[derive(Debug, Clone)]
pub struct GitRepoConfig {
    /// Where bare cache repositories are kept (`<data dir>/repo-cache` for the server).
    pub cache_dir: PathBuf,
    /// The git program (default `git`, looked up on `PATH`).
    pub git: PathBuf,
    /// Bound on one whole `list_files` or `clone_token` call.
    pub timeout: Duration,
    /// The most files `list_files` answers; a larger tree is `Invalid`.
    pub max_files: usize,
    /// How long a clone token is leased for.
    pub token_ttl: Duration,
    pub grants: Vec<RepoGrant>,
    pub credentials: Vec<RepoCredential>,
    /// `(from, to)`: URLs starting with `from` are fetched from `to` + the rest (git's
    /// `url.<to>.insteadOf = <from>`; mirrors, tests). Grants apply to the URL as requested.
    pub rewrites: Vec<(String, String)>,
}

impl GitRepoConfig {
    /// Defaults: `git` on `PATH`, 120 s per call, at most 100 000 files, one-hour tokens, no
    /// grants (every repository is `NotFound`).
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        GitRepoConfig {
            cache_dir: cache_dir.into(),
            git: PathBuf::from("git"),
            timeout: Duration::from_secs(120),
            max_files: 100_000,
            token_ttl: Duration::from_secs(3600),
            grants: Vec::new(),
            credentials: Vec::new(),
            rewrites: Vec::new(),
        }
    }

    pub fn with_git(mut self, git: impl Into<PathBuf>) -> Self {
        self.git = git.into();
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_max_files(mut self, max_files: usize) -> Self {
        self.max_files = max_files;
        self
    }

    pub fn with_token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    pub fn with_grant(mut self, grant: RepoGrant) -> Self {
        self.grants.push(grant);
        self
    }

    pub fn with_credential(
        mut self,
        prefix: impl Into<String>,
        username: impl Into<String>,
        secret: SecretString,
    ) -> Self {
        self.credentials.push(RepoCredential {
            prefix: prefix.into(),
            username: username.into(),
            secret,
        });
        self
    }

    pub fn with_rewrite(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.rewrites.push((from.into(), to.into()));
        self
    }
}

/// Where a repository is, as parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// A URL git reaches over the network (or through a rewrite), as written.
    Remote(String),
    /// An absolute local path (from a path or a `file://` URL), not yet resolved.
    Local(PathBuf),
}

fn invalid(message: impl Into<String>) -> RepoHostError {
    RepoHostError::Invalid(message.into())
}

/// Whether any `/`-separated segment of `path` is `.` or `..`, or the path hides one behind
/// percent-encoding.
fn has_dot_segments(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || path.split(['/', '\\']).any(|s| s == "." || s == "..")
}

impl Location {
    fn parse(url: &str) -> Result<Location, RepoHostError> {
        const SHAPES: &str = "a repository is an https://, http://, ssh://, git:// or file:// URL, a user@host:path, or an absolute path";
        if url.is_empty() {
            return Err(invalid("a repository needs a URL"));
        }
        if url.len() > 2048 {
            return Err(invalid("a repository URL is at most 2048 bytes"));
        }
        // `<transport>::<address>` asks git for a remote helper (`ext::` runs a command).
        if url.chars().any(|c| c.is_whitespace() || c.is_control())
            || url.starts_with('-')
            || url.contains("::")
        {
            return Err(invalid(format!(
                "{:?} is not a repository location: {SHAPES}",
                redact(url)
            )));
        }
        let local = |path: &str| {
            if !path.starts_with('/') || has_dot_segments(path) || path.contains('%') {
                return Err(invalid(format!(
                    "{path:?} is not an absolute, plain local path"
                )));
            }
            Ok(Location::Local(PathBuf::from(path)))
        };
        if let Some(path) = url.strip_prefix("file://") {
            return local(path);
        }
        if url.starts_with('/') {
            return local(url);
        }
        for scheme in ["https://", "http://", "ssh://", "git://"] {
            if let Some(rest) = url.strip_prefix(scheme) {
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                if host.is_empty() || has_dot_segments(path) {
                    return Err(invalid(format!(
                        "{:?} is not a plain repository URL",
                        redact(url)
                    )));
                }
                return Ok(Location::Remote(url.to_string()));
            }
        }
        // scp-like `user@host:path` (or `host:path`): no scheme, a ':' before any '/'.
        if !url.contains("://") {
            if let Some((host, path)) = url.split_once(':') {
                let host_ok = !host.is_empty()
                    && !host.contains('/')
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "@._-".contains(c));
                if host_ok && !path.is_empty() && !has_dot_segments(path) {
                    return Ok(Location::Remote(url.to_string()));
                }
            }
        }
        Err(invalid(format!(
            "{:?} is not a repository location: {SHAPES}",
            redact(url)
        )))
    }
}

/// A URL without its trailing `/` and `.git`, for comparing a repository with a prefix.
fn trimmed(url: &str) -> &str {
    let url = url.trim_end_matches('/');
    url.strip_suffix(".git")
        .unwrap_or(url)
        .trim_end_matches('/')
}

/// Whether remote `prefix` covers `url`: the same repository, or below it at a boundary.
fn prefix_covers(prefix: &str, url: &str) -> bool {
    if trimmed(prefix) == trimmed(url) {
        return true;
    }
    let bounded = if prefix.ends_with('/') || prefix.ends_with(':') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    url.starts_with(&bounded)
}

/// `url` with any `user:password@` replaced by `***@`.
fn redact(url: &str) -> String {
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

/// A repository the caller may read, ready for git.
struct Target {
    /// What git is given (a resolved `file://` URL for local repositories).
    git_url: String,
    /// How messages name it (credentials redacted).
    shown: String,
}

/// A git command that failed, as the port reports it.
fn classify_git_failure(what: &str, shown: &str, stderr: &str) -> RepoHostError {
    let lower = stderr.to_ascii_lowercase();
    let tail = stderr_tail(stderr);
    let any = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if any(&["returned error: 429", "rate limit"]) {
        return RepoHostError::RateLimited(format!("{what} {shown}: {tail}"));
    }
    if any(&[
        "could not resolve host",
        "could not resolve hostname",
        "connection refused",
        "connection timed out",
        "failed to connect",
        "network is unreachable",
        "returned error: 5",
        "ssl",
        "tls",
        "early eof",
        "the remote end hung up unexpectedly",
    ]) && !any(&["repository not found", "does not exist"])
    {
        return RepoHostError::Unavailable(format!("{what} {shown}: {tail}"));
    }
    if any(&[
        "not found",
        "does not exist",
        "does not appear to be a git repository",
        "not a git repository",
        "couldn't find remote ref",
        "could not find remote ref",
        "no such ref",
        "not our ref",
        "unadvertised object",
        "could not read from remote repository",
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "permission denied",
        "returned error: 401",
        "returned error: 403",
        "returned error: 404",
    ]) {
        return RepoHostError::NotFound(format!("no repository {shown} (or no such ref)"));
    }
    RepoHostError::Unavailable(format!("{what} {shown} failed: {tail}"))
}

/// The last few non-empty lines of git's stderr (at most 500 characters), credentials redacted.
fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<String> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .map(scrub_line)
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    tail.chars().take(500).collect()
}

/// Redacts the user info of every URL on a line.
fn scrub_line(line: &str) -> String {
    line.split(' ')
        .map(|word| {
            if word.contains("://") {
                let start = word.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(0);
                format!("{}{}", &word[..start], redact(&word[start..]))
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `r` names a ref git accepts (and no option or revision expression).
fn valid_ref(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && !r.starts_with('-')
        && !r.starts_with('/')
        && !r.ends_with('/')
        && !r.ends_with('.')
        && !r.ends_with(".lock")
        && !r.contains("..")
        && !r.contains("//")
        && !r.contains("@{")
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/+".contains(c))
}

fn is_commit_id(r: &str) -> bool {
    (r.len() == 40 || r.len() == 64) && r.chars().all(|c| c.is_ascii_hexdigit())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard base64 with padding (for the HTTP basic credential git sends).
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What one git command printed.
struct GitOutput {
    stdout: Vec<u8>,
}

/// The `RepoHost` on the git command line. See the module docs.
pub struct GitRepoHost {
    config: GitRepoConfig,
    clock: Arc<dyn Clock>,
    grants: RwLock<Vec<RepoGrant>>,
    /// One lock per cache repository: fetches into one repository never overlap.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for GitRepoHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitRepoHost")
            .field("cache_dir", &self.config.cache_dir)
            .field("git", &self.config.git)
            .field("grants", &self.grants())
            .finish_non_exhaustive()
    }
}

impl GitRepoHost {
    /// A host with `config`'s grants; expiry times come from `clock`. Nothing is touched until the
    /// first call (the cache directory is made then).
    pub fn new(config: GitRepoConfig, clock: Arc<dyn Clock>) -> Self {
        let grants = RwLock::new(config.grants.clone());
        GitRepoHost {
            config,
            clock,
            grants,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a grant at run time.
    pub fn grant(&self, grant: RepoGrant) {
        self.grants.write().unwrap().push(grant);
    }

    /// The grants in force.
    pub fn grants(&self) -> Vec<RepoGrant> {
        self.grants.read().unwrap().clone()
    }

    pub fn config(&self) -> &GitRepoConfig {
        &self.config
    }

    /// `git --version`, or why git cannot run (for `doctor`).
    pub async fn git_version(&self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let out = self
            .git(None, &["--version".into()], deadline, None)
            .await
            .map_err(|e| e.message().to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The repository `repo` names, when `tenant`'s org may read it; else `NotFound` (or
    /// `Invalid` for something that is no repository location at all).
    fn authorize(&self, tenant: &TenantContext, url: &str) -> Result<Target, RepoHostError> {
        let url = url.trim();
        let location = Location::parse(url)?;
        let shown = redact(url);
        let not_found = || RepoHostError::NotFound(format!("no repository {shown}"));
        let grants = self.grants();
        let org = tenant.org();
        match location {
            Location::Remote(url) => {
                let granted = grants.iter().any(|g| {
                    g.covers_org(org)
                        && matches!(Location::parse(&g.prefix), Ok(Location::Remote(_)))
                        && prefix_covers(&g.prefix, &url)
                });
                if !granted {
                    return Err(not_found());
                }
                Ok(Target {
                    git_url: url,
                    shown,
                })
            }
            Location::Local(path) => {
                // Resolved first: a symbolic link must not lead out of a granted directory.
                let real = std::fs::canonicalize(&path).map_err(|_| not_found())?;
                let granted = grants.iter().any(|g| {
                    g.orgs == GrantOrgs::One(org.clone())
                        && match Location::parse(&g.prefix) {
                            Ok(Location::Local(prefix)) => std::fs::canonicalize(&prefix)
                                .is_ok_and(|prefix| real.starts_with(prefix)),
                            _ => false,
                        }
                });
                if !granted {
                    return Err(not_found());
                }
                Ok(Target {
                    git_url: format!("file://{}", real.display()),
                    shown,
                })
            }
        }
    }

    /// Runs git with `args` (in `dir` when given) until `deadline`. A non-zero exit is classified
    /// from stderr as `what` on `shown`.
    async fn git(
        &self,
        dir: Option<&Path>,
        args: &[OsString],
        deadline: Instant,
        failure: Option<(&str, &str)>,
    ) -> Result<GitOutput, RepoHostError> {
        let mut cmd = self.command(dir);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let out = match tokio::time::timeout_at(deadline, child.wait_with_output()).await {
            Ok(out) => out.map_err(|e| {
                RepoHostError::Unavailable(format!("lost track of a git process: {e}"))
            })?,
            Err(_) => {
                return Err(RepoHostError::Timeout(format!(
                    "git did not finish within {:?}",
                    self.config.timeout
                )))
            }
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let (what, shown) = failure.unwrap_or(("git", ""));
            return Err(classify_git_failure(what, shown, &stderr));
        }
        Ok(GitOutput { stdout: out.stdout })
    }

    fn spawn_error(&self, e: std::io::Error) -> RepoHostError {
        if e.kind() == std::io::ErrorKind::NotFound {
            RepoHostError::Unavailable(format!(
                "git ({}) is not installed or not on PATH",
                self.config.git.display()
            ))
        } else {
            RepoHostError::Unavailable(format!(
                "cannot run git ({}): {e}",
                self.config.git.display()
            ))
        }
    }

    /// A git command with the host's environment: no prompts, allowed transports only, no
    /// hooks, the rewrites and the credentials as configuration.
    fn command(&self, dir: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.config.git);
        for var in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_NAMESPACE",
            "GIT_OBJECT_DIRECTORY",
            "GIT_ALTERNATE_OBJECT_DIRECTORIES",
            "GIT_COMMON_DIR",
            "GIT_CONFIG",
            "GIT_CONFIG_PARAMETERS",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GCM_INTERACTIVE", "never")
            .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
            // A commit missing from a cache repository is fetched explicitly, never lazily.
            .env("GIT_NO_LAZY_FETCH", "1")
            .env("LC_ALL", "C");
        if std::env::var_os("GIT_SSH_COMMAND").is_none() {
            cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
        }
        let mut config: Vec<(String, String)> = vec![("core.hooksPath".into(), "/dev/null".into())];
        for (from, to) in &self.config.rewrites {
            config.push((format!("url.{to}.insteadOf"), from.clone()));
        }
        for credential in &self.config.credentials {
            if credential.prefix.starts_with("https://") || credential.prefix.starts_with("http://")
            {
                let basic = base64(
                    format!("{}:{}", credential.username, credential.secret.expose()).as_bytes(),
                );
                config.push((
                    format!("http.{}.extraHeader", credential.prefix),
                    format!("Authorization: Basic {basic}"),
                ));
            }
        }
        cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
        for (i, (key, value)) in config.into_iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), key)
                .env(format!("GIT_CONFIG_VALUE_{i}"), value);
        }
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// The ref to fetch and the object it names now: `HEAD`, a branch, a tag, a full ref or a
    /// commit id. An unknown ref is `NotFound`.
    async fn resolve(
        &self,
        target: &Target,
        git_ref: Option<&str>,
        deadline: Instant,
    ) -> Result<(String, String), RepoHostError> {
        let fail = Some(("cannot read", target.shown.as_str()));
        let Some(r) = git_ref.map(str::trim).filter(|r| !r.is_empty()) else {
            let out = self
                .git(
                    None,
                    &[
                        "ls-remote".into(),
                        "--symref".into(),
                        target.git_url.clone().into(),
                        "HEAD".into(),
                    ],
                    deadline,
                    fail,
                )
                .await?;
            let text = String::from_utf8_lossy(&out.stdout);
            let head = text.lines().find_map(|line| {
                let (sha, name) = line.split_once('\t')?;
                (name == "HEAD" && is_commit_id(sha)).then(|| sha.to_string())
            });
            return head.map(|sha| ("HEAD".to_string(), sha)).ok_or_else(|| {
                RepoHostError::NotFound(format!("{} has no commits", target.shown))
            });
        };
        if !valid_ref(r) {
            return Err(invalid(format!("{r:?} is not a git ref name")));
        }
        if is_commit_id(r) {
            return Ok((r.to_string(), r.to_string()));
        }
        let candidates: Vec<String> = if r.starts_with("refs/") {
            vec![r.to_string()]
        } else {
            vec![format!("refs/heads/{r}"), format!("refs/tags/{r}")]
        };
        let mut args: Vec<OsString> = vec!["ls-remote".into(), target.git_url.clone().into()];
        args.extend(candidates.iter().map(OsString::from));
        let out = self.git(None, &args, deadline, fail).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let listed: HashMap<&str, &str> = text
            .lines()
            .filter_map(|line| {
                let (sha, name) = line.split_once('\t')?;
                Some((name, sha))
            })
            .collect();
        candidates
            .iter()
            .find_map(|name| {
                listed
                    .get(name.as_str())
                    .map(|sha| (name.clone(), sha.to_string()))
            })
            .ok_or_else(|| RepoHostError::NotFound(format!("no ref {r} in {}", target.shown)))
    }

    /// The cache repository of `target` (a bare repository with `origin` at its URL), made when
    /// missing. The caller holds its lock.
    async fn cache_repo(
        &self,
        target: &Target,
        deadline: Instant,
    ) -> Result<PathBuf, RepoHostError> {
        let dir = self.cache_path(target);
        if dir.join("HEAD").is_file() {
            return Ok(dir);
        }
        std::fs::create_dir_all(&self.config.cache_dir).map_err(|e| {
            RepoHostError::Unavailable(format!(
                "cannot create the repository cache {}: {e}",
                self.config.cache_dir.display()
            ))
        })?;
        let _ = std::fs::remove_dir_all(&dir);
        let made = async {
            self.git(
                None,
                &[
                    "init".into(),
                    "--bare".into(),
                    "--quiet".into(),
                    dir.clone().into(),
                ],
                deadline,
                None,
            )
            .await?;
            self.git(
                Some(&dir),
                &[
                    "remote".into(),
                    "add".into(),
                    "origin".into(),
                    target.git_url.clone().into(),
                ],
                deadline,
                None,
            )
            .await
        }
        .await;
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(dir)
    }

    /// Where the cache repository of `target` lives.
    fn cache_path(&self, target: &Target) -> PathBuf {
        let name = hex(&Sha256::digest(target.git_url.as_bytes())[..16]);
        self.config.cache_dir.join(format!("{name}.git"))
    }

    fn lock_for(&self, dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(dir.to_path_buf())
            .or_default()
            .clone()
    }

    /// The tracked files of `target` at `git_ref`.
    async fn files(
        &self,
        target: &Target,
        git_ref: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<String>, RepoHostError> {
        let (name, mut object) = self.resolve(target, git_ref, deadline).await?;
        let lock = self.lock_for(&self.cache_path(target));
        let _held = lock.lock().await;
        let dir = self.cache_repo(target, deadline).await?;
        let have = self
            .git(
                Some(&dir),
                &[
                    "cat-file".into(),
                    "-e".into(),
                    format!("{object}^{{tree}}").into(),
                ],
                deadline,
                None,
            )
            .await
            .is_ok();
        if !have {
            let fetched = self
                .git(
                    Some(&dir),
                    &[
                        "fetch".into(),
                        "--quiet".into(),
                        "--no-tags".into(),
                        "--no-write-fetch-head".into(),
                        "--depth".into(),
                        "1".into(),
                        "--filter=blob:none".into(),
                        "origin".into(),
                        format!("+{name}:refs/switchboard/listed").into(),
                    ],
                    deadline,
                    Some(("cannot fetch", target.shown.as_str())),
                )
                .await;
            match fetched {
                Ok(_) => {}
                Err(e) => {
                    if !matches!(e, RepoHostError::NotFound(_)) {
                        // A fetch cut short may leave locks or a half-written shallow file.
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    return Err(e);
                }
            }
            let out = self
                .git(
                    Some(&dir),
                    &[
                        "rev-parse".into(),
                        "--verify".into(),
                        "refs/switchboard/listed".into(),
                    ],
                    deadline,
                    None,
                )
                .await?;
            object = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        self.ls_tree(&dir, &object, deadline).await
    }

    /// `git ls-tree -r --name-only -z` of `object`, stopped (and `Invalid`) past the file cap.
    async fn ls_tree(
        &self,
        dir: &Path,
        object: &str,
        deadline: Instant,
    ) -> Result<Vec<String>, RepoHostError> {
        let mut cmd = self.command(Some(dir));
        cmd.args(["ls-tree", "-r", "--name-only", "-z"])
            .arg(format!("{object}^{{tree}}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let max = self.config.max_files;
        let read = async {
            let mut files = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stdout.read(&mut buf).await.map_err(|e| {
                    RepoHostError::Unavailable(format!("cannot read git's listing: {e}"))
                })?;
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|b| *b == 0) {
                    let path: Vec<u8> = pending.drain(..=end).take(end).collect();
                    files.push(String::from_utf8_lossy(&path).into_owned());
                    if files.len() > max {
                        return Err(invalid(format!(
                            "the repository tracks more than {max} files; send the file list instead"
                        )));
                    }
                }
            }
            let mut err = Vec::new();
            let _ = stderr.read_to_end(&mut err).await;
            let status = child.wait().await.map_err(|e| {
                RepoHostError::Unavailable(format!("lost track of a git process: {e}"))
            })?;
            if !status.success() {
                return Err(RepoHostError::Corrupt(format!(
                    "the cached repository could not be listed: {}",
                    stderr_tail(&String::from_utf8_lossy(&err))
                )));
            }
            Ok(files)
        };
        match tokio::time::timeout_at(deadline, read).await {
            Ok(result) => result,
            Err(_) => Err(RepoHostError::Timeout(format!(
                "listing the repository took longer than {:?}",
                self.config.timeout
            ))),
        }
    }

    /// The configured credential with the longest prefix covering `url`.
    fn credential_for(&self, url: &str) -> Option<&RepoCredential> {
        self.config
            .credentials
            .iter()
            .filter(|c| prefix_covers(&c.prefix, url))
            .max_by_key(|c| c.prefix.len())
    }
}

/// A fresh random opaque token (`sbr_` and 32 hex digits).
fn opaque_token() -> Result<String, RepoHostError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| RepoHostError::Unavailable(format!("no randomness for a token: {e}")))?;
    Ok(format!("sbr_{}", hex(&bytes)))
}

#[async_trait]
impl RepoHost for GitRepoHost {
    async fn clone_token(
        &self,
        tenant: &TenantContext,
        repo: &RepoSpec,
    ) -> Result<RepoToken, RepoHostError> {
        let deadline = Instant::now() + self.config.timeout;
        let target = self.authorize(tenant, &repo.url)?;
        self.resolve(&target, repo.git_ref.as_deref(), deadline)
            .await?;
        let expires_at = self.clock.now().add(self.config.token_ttl);
        let token = match self.credential_for(repo.url.trim()) {
            Some(credential) => credential.secret.clone(),
            None => SecretString::new(opaque_token()?),
        };
        Ok(RepoToken { token, expires_at })
    }

    async fn list_files(
        &self,
        tenant: &TenantContext,
        repo: &RepoSpec,
    ) -> Result<Vec<String>, RepoHostError> {
        let deadline = Instant::now() + self.config.timeout;
        let target = self.authorize(tenant, &repo.url)?;
        self.files(&target, repo.git_ref.as_deref(), deadline).await
    }
}

pub mod scratch {
    //! Real git repositories for tests: commits made with `git fast-import` (fast for large
    //! trees), each ref an independent commit.

    use std::io::Write;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// Whether `git` runs here; `Err` says why not (tests gate on it).
    pub fn git_gate() -> Result<(), String> {
        match Command::new("git").arg("--version").output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!("git --version failed: {}", out.status)),
            Err(e) => Err(format!("git is not installed: {e}")),
        }
    }

    /// Makes (when missing) a bare repository at `dir` and commits `files` (path, content) as the
    /// whole tree of branch `git_ref`. The first branch committed becomes the repository's `HEAD`.
    pub fn commit_files(
        dir: &Path,
        git_ref: &str,
        files: &[(String, String)],
    ) -> Result<(), String> {
        let git = |args: &[&str]| -> Result<String, String> {
            let out = Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .output()
                .map_err(|e| format!("git: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "git {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let fresh = !dir.join("HEAD").is_file();
        if fresh {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            git(&["init", "--bare", "--quiet"])?;
        }
        let mut stream = format!(
            "commit refs/heads/{git_ref}\ncommitter Switchboard Tests <tests@switchboard.invalid> 1700000000 +0000\ndata 6\nfiles\n"
        )
        .into_bytes();
        for (path, content) in files {
            stream.extend_from_slice(
                format!("M 100644 inline {path}\ndata {}\n", content.len()).as_bytes(),
            );
            stream.extend_from_slice(content.as_bytes());
            stream.push(b'\n');
        }
        stream.extend_from_slice(b"\n");
        let mut child = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["fast-import", "--quiet", "--force"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("git fast-import: {e}"))?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(&stream)
            .map_err(|e| format!("git fast-import: {e}"))?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "git fast-import: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if fresh {
            git(&["symbolic-ref", "HEAD", &format!("refs/heads/{git_ref}")])?;
        }
        Ok(())
    }

    /// Tags the tip of branch `branch` as `tag` (a lightweight tag).
    pub fn tag(dir: &Path, branch: &str, tag: &str) -> Result<(), String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["tag", tag, &format!("refs/heads/{branch}")])
            .output()
            .map_err(|e| format!("git tag: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_refuse() {
        assert_eq!(
            Location::parse("https://github.com/acme/app.git"),
            Ok(Location::Remote("https://github.com/acme/app.git".into()))
        );
        assert_eq!(
            Location::parse("git@github.com:acme/app.git"),
            Ok(Location::Remote("git@github.com:acme/app.git".into()))
        );
        assert_eq!(
            Location::parse("file:///srv/repos/app"),
            Ok(Location::Local("/srv/repos/app".into()))
        );
        assert_eq!(
            Location::parse("/srv/repos/app"),
            Ok(Location::Local("/srv/repos/app".into()))
        );
        for bad in [
            "",
            "relative/path",
            "../up",
            "ext::sh -c evil",
            "fd::3",
            "-uhello",
            "https://github.com/acme/../other/app",
            "https://github.com/acme/%2e%2e/other",
            "/srv/repos/../../etc",
            "file://host/path",
            "https://",
            "https://github.com/acme/app\n",
        ] {
            assert!(
                matches!(Location::parse(bad), Err(RepoHostError::Invalid(_))),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn prefixes_cover_at_boundaries_only() {
        assert!(prefix_covers(
            "https://github.com/acme",
            "https://github.com/acme/app.git"
        ));
        assert!(prefix_covers(
            "https://github.com/acme/",
            "https://github.com/acme/app"
        ));
        assert!(prefix_covers(
            "https://github.com/acme/app.git",
            "https://github.com/acme/app"
        ));
        assert!(prefix_covers(
            "https://github.com/acme/app",
            "https://github.com/acme/app.git/"
        ));
        assert!(prefix_covers(
            "git@github.com:",
            "git@github.com:acme/app.git"
        ));
        assert!(!prefix_covers(
            "https://github.com/acme",
            "https://github.com/acme-evil/app"
        ));
        assert!(!prefix_covers(
            "https://github.com/acme/app",
            "https://github.com/acme/app2"
        ));
        assert!(!prefix_covers(
            "https://github.com/acme",
            "http://github.com/acme/app"
        ));
    }

    #[test]
    fn grants_parse_and_local_ones_need_a_named_org() {
        let g = RepoGrant::parse("org_1=https://github.com/acme/").unwrap();
        assert_eq!(g.orgs, GrantOrgs::One(OrgId::parse("org_1").unwrap()));
        assert_eq!(g.to_string(), "org_1=https://github.com/acme/");
        assert_eq!(
            RepoGrant::parse("*=https://github.com/").unwrap().orgs,
            GrantOrgs::Every
        );
        assert!(RepoGrant::parse("*=/srv/repos")
            .unwrap_err()
            .contains("named org"));
        assert!(RepoGrant::parse("*=file:///srv").is_err());
        assert!(RepoGrant::parse("org_1=/srv/repos").is_ok());
        assert!(RepoGrant::parse("no-equals").is_err());
        assert!(RepoGrant::parse("org_1=ext::sh").is_err());
    }

    #[test]
    fn refs_are_plain_names() {
        for good in [
            "main",
            "feature/x",
            "v1.2.3",
            "refs/heads/main",
            "release-1_2+b",
        ] {
            assert!(valid_ref(good), "{good}");
        }
        for bad in [
            "-x", "a..b", "a b", "HEAD@{1}", "main^", "x.lock", "/abs", "a//b", "~1",
        ] {
            assert!(!valid_ref(bad), "{bad}");
        }
        assert!(is_commit_id(&"a".repeat(40)));
        assert!(!is_commit_id("abc123"));
    }

    #[test]
    fn failures_are_classified_and_scrubbed() {
        let e = classify_git_failure(
            "cannot read",
            "https://h/r",
            "fatal: unable to access 'https://user:hunter2@h/r/': Could not resolve host: h\n",
        );
        assert!(matches!(e, RepoHostError::Unavailable(_)), "{e:?}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = classify_git_failure(
            "cannot read",
            "https://h/r",
            "remote: Repository not found.\nfatal: repository 'https://h/r/' not found\n",
        );
        assert!(matches!(e, RepoHostError::NotFound(_)), "{e:?}");
        let e = classify_git_failure(
            "cannot read",
            "https://h/r",
            "fatal: could not read Username for 'https://h': terminal prompts disabled\n",
        );
        assert!(matches!(e, RepoHostError::NotFound(_)), "{e:?}");
        let e = classify_git_failure(
            "cannot read",
            "https://h/r",
            "fatal: unable to access 'https://h/r/': The requested URL returned error: 429\n",
        );
        assert!(matches!(e, RepoHostError::RateLimited(_)), "{e:?}");
        assert_eq!(redact("https://u:p@h/x"), "https://***@h/x");
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(
            base64(b"x-access-token:ghs_abc"),
            "eC1hY2Nlc3MtdG9rZW46Z2hzX2FiYw=="
        );
    }
}
