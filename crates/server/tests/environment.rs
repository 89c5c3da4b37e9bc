//! `POST /v1/environment/detect` from a repository, over HTTP against the real server: the repo
//! host is the git host configured from `--repo-grant`s (`ServeConfig::repo_grants`), listing real
//! git repositories made in a temp dir. Proven: without grants `{"repo"}` stays 422
//! `repo_host_unavailable`; with them a granted repository is detected exactly as its file list
//! would be (default branch and a named ref); a repository of another org, an unknown ref or
//! repository is 404; an unreachable host is 503; a URL that is no repository location is 400.
//!
//! Needs `git`: under `CI=true` a missing git fails; elsewhere the test prints NOT RUN and passes.

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use switchboard_adapters::git_repo_host::scratch::{commit_files, git_gate};
use switchboard_adapters::sql::scratch::ScratchDir;
use switchboard_adapters::system_clock::SystemClock;
use switchboard_fakes::sandbox_provider::InMemorySandboxProvider;
use switchboard_server::config::ServeConfig;
use switchboard_server::serve::{self, RunningServer};

const WAIT: Duration = Duration::from_secs(60);

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

async fn start(data: &std::path::Path, grants: Vec<String>) -> RunningServer {
    let mut config = ServeConfig::embedded(data.to_path_buf());
    config.repo_grants = grants;
    serve::start(
        config,
        Arc::new(InMemorySandboxProvider::new()),
        Arc::new(SystemClock::new()),
    )
    .await
    .expect("the server starts")
}

async fn detect(server: &RunningServer, key: &str, body: Value) -> (u16, Value) {
    let response = tokio::time::timeout(
        WAIT,
        reqwest::Client::new()
            .post(format!("{}/v1/environment/detect", server.http_url()))
            .bearer_auth(key)
            .json(&body)
            .send(),
    )
    .await
    .expect("an answer in time")
    .expect("an HTTP answer");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

fn files(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| (n.to_string(), format!("{n}\n")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn detection_from_a_repository_follows_the_grants() {
    if !git_available() {
        return;
    }
    let dir = ScratchDir::create("sb-environment").unwrap();
    let data = dir.join("data");
    let repos = dir.join("repos");
    let node = [
        "package.json",
        "package-lock.json",
        "src/index.ts",
        "src/util.ts",
        "README.md",
    ];
    commit_files(&repos.join("web.git"), "main", &files(&node)).unwrap();
    let python = [
        "pyproject.toml",
        "uv.lock",
        "app/main.py",
        "tests/test_main.py",
    ];
    commit_files(&repos.join("web.git"), "py", &files(&python)).unwrap();

    // No grant: no repo host, and `{"repo"}` is 422 as before.
    let server = start(&data, Vec::new()).await;
    let app = &server.deployment.app;
    let acme = app.create_org("Acme", None).await.unwrap();
    let other = app.create_org("Other", None).await.unwrap();
    let url = repos.join("web.git").display().to_string();
    let (status, body) = detect(&server, &acme.api_key, json!({"repo": {"url": url}})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "repo_host_unavailable");
    server.stop().await.unwrap();

    // The operator grants the repositories directory to Acme, and an unreachable host to everyone.
    let server = start(
        &data,
        vec![
            format!("{}={}", acme.org_id, repos.display()),
            "*=git://127.0.0.1:1/".to_string(),
        ],
    )
    .await;
    let (status, from_repo) = detect(&server, &acme.api_key, json!({"repo": {"url": url}})).await;
    assert_eq!(status, 200, "{from_repo}");
    let names: Vec<String> = node.iter().map(|s| s.to_string()).collect();
    let (status, from_files) = detect(&server, &acme.api_key, json!({"files": names})).await;
    assert_eq!(status, 200, "{from_files}");
    assert_eq!(
        from_repo, from_files,
        "a repository is detected as its file list"
    );
    assert_eq!(from_repo["package_manager"], "npm");
    assert_eq!(from_repo["file_count"], node.len());
    assert_eq!(from_repo["install"], json!(["npm ci"]));

    let (status, py) = detect(
        &server,
        &acme.api_key,
        json!({"repo": {"url": format!("file://{url}"), "ref": "py"}}),
    )
    .await;
    assert_eq!(status, 200, "{py}");
    assert_eq!(py["package_manager"], "uv", "{py}");
    assert_eq!(py["file_count"], python.len());

    for (key, body, expected) in [
        (&other.api_key, json!({"repo": {"url": url}}), 404),
        (
            &acme.api_key,
            json!({"repo": {"url": url, "ref": "no-such-branch"}}),
            404,
        ),
        (
            &acme.api_key,
            json!({"repo": {"url": format!("{}/absent.git", repos.display())}}),
            404,
        ),
        (&acme.api_key, json!({"repo": {"url": "/etc"}}), 404),
        (
            &acme.api_key,
            json!({"repo": {"url": "git://127.0.0.1:1/app.git"}}),
            503,
        ),
        (
            &acme.api_key,
            json!({"repo": {"url": "ext::sh -c id"}}),
            400,
        ),
    ] {
        let (status, answer) = detect(&server, key, body.clone()).await;
        assert_eq!(status, expected, "{body} → {answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    // Another org's repository and a missing one read the same.
    let (_, theirs) = detect(&server, &other.api_key, json!({"repo": {"url": url}})).await;
    assert_eq!(theirs["error"]["code"], "not_found");
    assert!(!theirs.to_string().contains("package.json"), "{theirs}");
    server.stop().await.unwrap();
}

#[test]
fn grants_are_validated_with_the_configuration() {
    let mut config = ServeConfig::embedded("/tmp/sb-environment-config".into());
    assert_eq!(config.repo_host().unwrap().map(|c| c.grants.len()), None);
    config.repo_grants = vec!["org_1=https://github.com/acme/".into(), " ".into()];
    let repos = config.repo_host().unwrap().expect("a repo host");
    assert_eq!(repos.grants.len(), 1);
    assert_eq!(
        repos.cache_dir,
        std::path::PathBuf::from("/tmp/sb-environment-config/repo-cache")
    );
    config.repo_grants = vec!["*=/srv/repos".into()];
    assert!(config.validate().unwrap_err().contains("--repo-grant"));
    config.repo_grants = vec!["not a grant".into()];
    assert!(config.validate().is_err());
}
