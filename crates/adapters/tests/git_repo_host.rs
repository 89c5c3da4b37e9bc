//! `GitRepoHost` against real git repositories made in temp dirs: every kind of ref (default
//! branch, branch, tag, full ref, commit id), unknown refs and repositories, orgs without a grant
//! (answered exactly like a missing repository), local paths and symbolic links that lead out of a
//! grant, a tree of 20 000 files and the file cap, a listing that follows a moved branch, clone
//! tokens with and without a configured credential (which reaches the git server as HTTP basic auth
//! and never an error message), git missing, and a server that never answers (the timeout).
//!
//! Needs `git`: under `CI=true` a missing git fails; elsewhere the tests print NOT RUN and pass.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_adapters::git_repo_host::scratch::{commit_files, git_gate, tag};
use switchboard_adapters::git_repo_host::{GitRepoConfig, GitRepoHost, RepoGrant};
use switchboard_adapters::sql::scratch::ScratchDir;
use switchboard_adapters::system_clock::SystemClock;
use switchboard_core::protocol::RepoSpec;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{ErrorClass, OrgId, Principal, UserId};
use switchboard_ports::{Classify, Clock, RepoHost, RepoHostError, SecretString};

/// Whether git runs here. Under `CI=true` its absence fails the test.
fn git_available() -> bool {
    match git_gate() {
        Ok(()) => true,
        Err(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must provide git: {reason}")
        }
        Err(reason) => {
            eprintln!("NOT RUN: {reason}");
            false
        }
    }
}

fn tenant(org: &str) -> TenantContext {
    Principal::from_verified_credential(
        OrgId::parse(org).unwrap(),
        UserId::parse("user-1").unwrap(),
        None,
        vec![],
    )
    .tenant()
}

fn spec(url: &str, git_ref: Option<&str>) -> RepoSpec {
    RepoSpec {
        url: url.to_string(),
        git_ref: git_ref.map(str::to_string),
    }
}

fn files(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| (n.to_string(), format!("content of {n}\n")))
        .collect()
}

fn class<T: std::fmt::Debug>(r: Result<T, RepoHostError>) -> (ErrorClass, String) {
    let e = r.expect_err("an error");
    (e.class(), e.to_string())
}

/// A scratch dir with `repos/app.git` (main: three files; dev: one file; tag v1 on main) and a
/// host whose cache is `cache/`.
struct World {
    dir: ScratchDir,
    repo: PathBuf,
}

impl World {
    fn new() -> World {
        let dir = ScratchDir::create("sb-git-repo-host").unwrap();
        let repo = dir.join("repos").join("app.git");
        commit_files(
            &repo,
            "main",
            &files(&["package.json", "src/index.ts", "README.md"]),
        )
        .unwrap();
        commit_files(&repo, "dev", &files(&["only-on-dev.txt"])).unwrap();
        tag(&repo, "main", "v1").unwrap();
        World { dir, repo }
    }

    fn config(&self) -> GitRepoConfig {
        GitRepoConfig::new(self.dir.join("cache"))
    }

    /// A host granting `repos/` to org-a.
    fn host(&self) -> GitRepoHost {
        self.host_with(|c| c)
    }

    fn host_with(&self, f: impl FnOnce(GitRepoConfig) -> GitRepoConfig) -> GitRepoHost {
        let config = f(self
            .config()
            .with_grant(RepoGrant::new(OrgId::parse("org-a").unwrap(), self.repos_dir()).unwrap()));
        GitRepoHost::new(config, Arc::new(SystemClock::new()))
    }

    fn repos_dir(&self) -> String {
        self.dir.join("repos").display().to_string()
    }

    fn url(&self) -> String {
        self.repo.display().to_string()
    }
}

fn commit_of(repo: &Path, r: &str) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", r])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn every_kind_of_ref_lists_its_own_tree() {
    if !git_available() {
        return;
    }
    let w = World::new();
    let host = w.host();
    let a = tenant("org-a");
    let main = ["README.md", "package.json", "src/index.ts"];
    assert_eq!(
        host.list_files(&a, &spec(&w.url(), None)).await.unwrap(),
        main,
        "HEAD is main"
    );
    assert_eq!(
        host.list_files(&a, &spec(&w.url(), Some("main")))
            .await
            .unwrap(),
        main
    );
    assert_eq!(
        host.list_files(&a, &spec(&w.url(), Some("dev")))
            .await
            .unwrap(),
        ["only-on-dev.txt"]
    );
    assert_eq!(
        host.list_files(&a, &spec(&w.url(), Some("v1")))
            .await
            .unwrap(),
        main,
        "a tag"
    );
    assert_eq!(
        host.list_files(&a, &spec(&w.url(), Some("refs/heads/dev")))
            .await
            .unwrap(),
        ["only-on-dev.txt"],
        "a full ref"
    );
    let dev = commit_of(&w.repo, "dev");
    assert_eq!(
        host.list_files(&a, &spec(&w.url(), Some(&dev)))
            .await
            .unwrap(),
        ["only-on-dev.txt"],
        "a commit id"
    );
    let file_url = format!("file://{}", w.url());
    assert_eq!(
        host.list_files(&a, &spec(&file_url, None)).await.unwrap(),
        main,
        "a file:// URL"
    );
    // One cache repository for the one repository, whatever the ref.
    let cached = std::fs::read_dir(w.dir.join("cache")).unwrap().count();
    assert_eq!(cached, 1, "one cache repository per repository URL");
}

#[tokio::test]
async fn unknown_refs_and_repositories_are_not_found_and_bad_input_is_invalid() {
    if !git_available() {
        return;
    }
    let w = World::new();
    let host = w.host();
    let a = tenant("org-a");
    let (c, m) = class(
        host.list_files(&a, &spec(&w.url(), Some("no-such-branch")))
            .await,
    );
    assert_eq!(c, ErrorClass::NotFound, "{m}");
    assert!(m.contains("no-such-branch"), "{m}");
    assert_eq!(
        class(
            host.clone_token(&a, &spec(&w.url(), Some("no-such-branch")))
                .await
        )
        .0,
        ErrorClass::NotFound
    );
    let absent = format!("{}/absent.git", w.repos_dir());
    assert_eq!(
        class(host.list_files(&a, &spec(&absent, None)).await).0,
        ErrorClass::NotFound
    );
    // A granted directory that is not a repository.
    std::fs::create_dir_all(w.dir.join("repos").join("plain")).unwrap();
    let plain = format!("{}/plain", w.repos_dir());
    assert_eq!(
        class(host.list_files(&a, &spec(&plain, None)).await).0,
        ErrorClass::NotFound
    );
    let unknown_commit = "0".repeat(40);
    assert_eq!(
        class(
            host.list_files(&a, &spec(&w.url(), Some(&unknown_commit)))
                .await
        )
        .0,
        ErrorClass::NotFound
    );
    for bad_ref in ["--upload-pack=evil", "main..dev", "HEAD@{1}"] {
        assert_eq!(
            class(host.list_files(&a, &spec(&w.url(), Some(bad_ref))).await).0,
            ErrorClass::Invalid,
            "{bad_ref}"
        );
    }
    for bad_url in ["ext::sh -c id", "relative/app.git", "--upload-pack=x", ""] {
        assert_eq!(
            class(host.list_files(&a, &spec(bad_url, None)).await).0,
            ErrorClass::Invalid,
            "{bad_url:?}"
        );
    }
}

#[tokio::test]
async fn an_org_without_a_grant_sees_what_it_would_see_of_nothing() {
    if !git_available() {
        return;
    }
    let w = World::new();
    let host = w.host();
    let b = tenant("org-b");
    let (c, exists) = class(host.list_files(&b, &spec(&w.url(), None)).await);
    assert_eq!(c, ErrorClass::NotFound);
    let missing = format!("{}/absent.git", w.repos_dir());
    let (_, absent) = class(host.list_files(&b, &spec(&missing, None)).await);
    assert_eq!(
        exists.replace(&w.url(), "<url>"),
        absent.replace(&missing, "<url>"),
        "an existing repository and a missing one answer alike"
    );
    assert_eq!(
        class(host.clone_token(&b, &spec(&w.url(), None)).await).0,
        ErrorClass::NotFound
    );

    // A server path outside every grant, even one that is a repository.
    let elsewhere = w.dir.join("elsewhere.git");
    commit_files(&elsewhere, "main", &files(&["secret.txt"])).unwrap();
    let a = tenant("org-a");
    let outside = elsewhere.display().to_string();
    assert_eq!(
        class(host.list_files(&a, &spec(&outside, None)).await).0,
        ErrorClass::NotFound
    );
    // A symbolic link inside the grant that leads outside it.
    std::os::unix::fs::symlink(&elsewhere, w.dir.join("repos").join("link.git")).unwrap();
    let link = format!("{}/link.git", w.repos_dir());
    assert_eq!(
        class(host.list_files(&a, &spec(&link, None)).await).0,
        ErrorClass::NotFound
    );
    // A remote grant to every org does not cover local paths.
    host.grant(RepoGrant::every_org("https://git.example.invalid/").unwrap());
    assert_eq!(
        class(host.list_files(&b, &spec(&w.url(), None)).await).0,
        ErrorClass::NotFound
    );
    assert!(
        RepoGrant::every_org(w.repos_dir()).is_err(),
        "local paths need a named org"
    );
    // Granted later, it is readable.
    host.grant(RepoGrant::new(OrgId::parse("org-b").unwrap(), w.url()).unwrap());
    assert_eq!(
        host.list_files(&b, &spec(&w.url(), Some("dev")))
            .await
            .unwrap(),
        ["only-on-dev.txt"]
    );
}

#[tokio::test]
async fn a_large_tree_is_listed_whole_and_the_cap_refuses_a_larger_one() {
    if !git_available() {
        return;
    }
    let w = World::new();
    let big: Vec<(String, String)> = (0..20_000)
        .map(|i| {
            (
                format!("pkg{}/src/module_{i:05}.rs", i % 50),
                format!("// {i}\n"),
            )
        })
        .collect();
    commit_files(&w.repo, "big", &big).unwrap();
    let host = w.host();
    let a = tenant("org-a");
    let started = Instant::now();
    let listed = host
        .list_files(&a, &spec(&w.url(), Some("big")))
        .await
        .unwrap();
    let cold = started.elapsed();
    let mut expected: Vec<String> = big.into_iter().map(|(p, _)| p).collect();
    expected.sort();
    assert_eq!(listed, expected, "every file, sorted, relative");
    let started = Instant::now();
    assert_eq!(
        host.list_files(&a, &spec(&w.url(), Some("big")))
            .await
            .unwrap()
            .len(),
        20_000
    );
    let warm = started.elapsed();
    println!("20 000 files: first listing {cold:?}, cached {warm:?}");

    let capped = w.host_with(|c| c.with_max_files(19_999));
    let (c, m) = class(capped.list_files(&a, &spec(&w.url(), Some("big"))).await);
    assert_eq!(c, ErrorClass::Invalid, "{m}");
    assert!(m.contains("19999"), "{m}");
    assert_eq!(
        capped
            .list_files(&a, &spec(&w.url(), Some("dev")))
            .await
            .unwrap(),
        ["only-on-dev.txt"],
        "a tree under the cap is still listed"
    );
}

#[tokio::test]
async fn a_moved_branch_is_listed_at_its_new_commit() {
    if !git_available() {
        return;
    }
    let w = World::new();
    let host = w.host();
    let a = tenant("org-a");
    assert_eq!(
        host.list_files(&a, &spec(&w.url(), Some("dev")))
            .await
            .unwrap(),
        ["only-on-dev.txt"]
    );
    commit_files(&w.repo, "dev", &files(&["Cargo.toml", "src/main.rs"])).unwrap();
    assert_eq!(
        host.list_files(&a, &spec(&w.url(), Some("dev")))
            .await
            .unwrap(),
        ["Cargo.toml", "src/main.rs"],
        "the cache never answers for a commit the branch left"
    );
}

#[tokio::test]
async fn clone_tokens_are_opaque_without_a_credential_and_the_lease_with_one() {
    if !git_available() {
        return;
    }
    let w = World::new();
    let host = w.host_with(|c| c.with_token_ttl(Duration::from_secs(600)));
    let a = tenant("org-a");
    let clock = SystemClock::new();
    let before = clock.now();
    let first = host.clone_token(&a, &spec(&w.url(), None)).await.unwrap();
    let second = host
        .clone_token(&a, &spec(&w.url(), Some("dev")))
        .await
        .unwrap();
    assert!(first.token.expose().starts_with("sbr_"), "an opaque token");
    assert_ne!(
        first.token.expose(),
        second.token.expose(),
        "fresh each time"
    );
    assert!(first.expires_at >= before.add(Duration::from_secs(600)));
    assert!(first.expires_at <= clock.now().add(Duration::from_secs(600)));
}

/// A one-connection HTTP server: records the request head and answers 404.
fn http_recorder() -> (u16, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        String::from_utf8_lossy(&head).into_owned()
    });
    (port, handle)
}

#[tokio::test]
async fn a_configured_credential_reaches_the_server_and_is_the_token_but_never_a_message() {
    if !git_available() {
        return;
    }
    let w = World::new();
    let (port, server) = http_recorder();
    let prefix = format!("http://127.0.0.1:{port}/acme/");
    let secret = "ghs_s3cr3t_credential_value_0042";
    let host = GitRepoHost::new(
        w.config()
            .with_grant(RepoGrant::new(OrgId::parse("org-a").unwrap(), &prefix).unwrap())
            .with_credential(&prefix, "x-access-token", SecretString::new(secret))
            .with_timeout(Duration::from_secs(20)),
        Arc::new(SystemClock::new()),
    );
    let a = tenant("org-a");
    let url = format!("{prefix}app.git");
    let (c, m) = class(host.list_files(&a, &spec(&url, None)).await);
    assert_eq!(c, ErrorClass::NotFound, "{m}");
    assert!(!m.contains(secret), "the credential leaked into {m}");
    let head = server.join().unwrap();
    let expected = format!(
        "authorization: basic {}",
        "eC1hY2Nlc3MtdG9rZW46Z2hzX3MzY3IzdF9jcmVkZW50aWFsX3ZhbHVlXzAwNDI=".to_lowercase()
    );
    assert!(
        head.to_lowercase().contains(&expected),
        "git must present the credential; the server got:\n{head}"
    );
    assert!(
        !format!("{host:?}").contains(secret),
        "Debug prints the secret"
    );
}

#[tokio::test]
async fn the_clone_token_of_a_credentialed_prefix_is_its_secret() {
    if !git_available() {
        return;
    }
    let w = World::new();
    // The credential's prefix covers the (local) repository's URL as requested.
    let secret = "glpat-another-secret-0042";
    let host =
        w.host_with(|c| c.with_credential(w.repos_dir(), "oauth2", SecretString::new(secret)));
    let token = host
        .clone_token(&tenant("org-a"), &spec(&w.url(), None))
        .await
        .unwrap();
    assert_eq!(token.token.expose(), secret, "the leased credential");
}

#[tokio::test]
async fn git_missing_is_unavailable_and_a_silent_server_times_out() {
    if !git_available() {
        return;
    }
    let w = World::new();
    let a = tenant("org-a");
    let host = w.host_with(|c| c.with_git(w.dir.join("no-such-git")));
    let (c, m) = class(host.list_files(&a, &spec(&w.url(), None)).await);
    assert_eq!(c, ErrorClass::Unavailable, "{m}");
    assert!(m.contains("not installed"), "{m}");
    assert_eq!(
        class(host.clone_token(&a, &spec(&w.url(), None)).await).0,
        ErrorClass::Unavailable
    );

    // A git:// server that accepts the connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let prefix = format!("git://127.0.0.1:{}/", silent.local_addr().unwrap().port());
    let host = GitRepoHost::new(
        w.config()
            .with_grant(RepoGrant::new(OrgId::parse("org-a").unwrap(), &prefix).unwrap())
            .with_timeout(Duration::from_secs(2)),
        Arc::new(SystemClock::new()),
    );
    let started = Instant::now();
    let (c, m) = class(
        host.list_files(&a, &spec(&format!("{prefix}app.git"), None))
            .await,
    );
    assert_eq!(c, ErrorClass::Timeout, "{m}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "the timeout bounds the call (took {took:?})"
    );
    drop(silent);
}

#[tokio::test]
async fn a_rewrite_serves_a_remote_url_from_a_mirror_under_the_remote_grant() {
    if !git_available() {
        return;
    }
    let w = World::new();
    let mirror = format!("file://{}/", w.repos_dir());
    let host = GitRepoHost::new(
        w.config()
            .with_grant(RepoGrant::every_org("https://git.example.invalid/acme/").unwrap())
            .with_rewrite("https://git.example.invalid/acme/", mirror),
        Arc::new(SystemClock::new()),
    );
    let url = "https://git.example.invalid/acme/app.git";
    assert_eq!(
        host.list_files(&tenant("org-z"), &spec(url, Some("dev")))
            .await
            .unwrap(),
        ["only-on-dev.txt"]
    );
    assert_eq!(
        class(
            host.list_files(
                &tenant("org-z"),
                &spec("https://git.example.invalid/other/app.git", None)
            )
            .await
        )
        .0,
        ErrorClass::NotFound,
        "outside the grant"
    );
}
