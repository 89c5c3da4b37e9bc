//! `LocalProcessSandboxProvider` with real processes: the bridge gets a minimal environment (no
//! server secret), terminate kills the whole process group (grandchildren included, SIGKILL when
//! SIGTERM is ignored), status follows a bridge that exits by itself, a local repository is cloned
//! at its ref, a failed clone is the spawn's error and leaves nothing behind, snapshots are
//! tarballs of the workspace, and under bubblewrap the data directory is hidden and the system
//! read-only (every test passes with and without bubblewrap installed).
//!
//! The "bridge" here is a bash script that sends its exact initial environment
//! (`/proc/$$/environ`) to a listener of the test over TCP, as the real bridge dials back.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use switchboard_adapters::local_sandbox::*;
use switchboard_core::protocol::{RepoSpec, SpawnSpec, SpawnTimeouts};
use switchboard_core::ErrorClass;
use switchboard_ports::sandbox::SandboxState;
use switchboard_ports::{Classify, SandboxProvider};
use tokio::sync::mpsc;

/// Server secrets present in this process, which no sandbox may see.
const SECRETS: &[(&str, &str)] = &[
    ("DATABASE_URL", "postgres://admin:hunter2@db/switchboard"),
    ("SWITCHBOARD_MASTER_KEY", "bWFzdGVyLWtleS1vZi10aGUtc2VydmVy"),
    ("AWS_SECRET_ACCESS_KEY", "aws-secret-of-the-server"),
];

/// Every test calls this first, so the secrets are in the environment before any spawn.
fn server_secrets_in_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (k, v) in SECRETS {
            std::env::set_var(k, v);
        }
    });
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique(what: &str) -> String {
    format!(
        "{what}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique(&format!("sb-local-sandbox-{what}")));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+rwx")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Receives what each fake bridge sends, one message per connection.
struct Listener {
    port: u16,
    messages: mpsc::UnboundedReceiver<Vec<u8>>,
    closing: Arc<AtomicBool>,
}

impl Listener {
    fn new() -> Listener {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, messages) = mpsc::unbounded_channel();
        let closing = Arc::new(AtomicBool::new(false));
        let stop = closing.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut bytes = Vec::new();
                if conn.read_to_end(&mut bytes).is_ok() && tx.send(bytes).is_err() {
                    return;
                }
            }
        });
        Listener {
            port,
            messages,
            closing,
        }
    }

    /// The next message, within 20 s.
    async fn next(&mut self) -> Vec<u8> {
        tokio::time::timeout(Duration::from_secs(20), self.messages.recv())
            .await
            .expect("the sandbox reported within 20 s")
            .expect("the listener is alive")
    }

    /// The next message as the environment it carries (`NAME=value\0…`).
    async fn next_env(&mut self) -> BTreeMap<String, String> {
        let bytes = self.next().await;
        bytes
            .split(|b| *b == 0)
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A bash "bridge": `before`, then report its own initial environment to the listener, then
/// `after`.
fn bash_bridge(
    config: LocalSandboxConfig,
    port: u16,
    before: &str,
    after: &str,
) -> LocalSandboxConfig {
    let script = format!("{before}\ncat /proc/$$/environ > /dev/tcp/127.0.0.1/$1\n{after}\n");
    config.with_bridge(
        "bash",
        vec!["-c".into(), script, "fake-bridge".into(), port.to_string()],
    )
}

fn spec() -> SpawnSpec {
    let tag = unique("case");
    SpawnSpec {
        session_key: format!("org-{tag}:session-{tag}"),
        callback_url: format!("ws://127.0.0.1:9/sandbox/v1/sessions/org-{tag}/session-{tag}/ws"),
        token: format!("sbt_{tag}_0123456789abcdef"),
        agent: "opencode".into(),
        repo: None,
        env: BTreeMap::from([("SWITCHBOARD_CASE".to_string(), tag)]),
        timeouts: SpawnTimeouts {
            idle_s: 45,
            max_s: 600,
        },
    }
}

/// `(state, ppid, pgrp)` of process `pid`, from /proc; `None` once it is gone.
fn stat_of(pid: i32) -> Option<(String, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some((
        fields.first()?.to_string(),
        fields.get(1)?.parse().ok()?,
        fields.get(2)?.parse().ok()?,
    ))
}

/// The pid, as this test sees it, of the member of group `pgid` that its own PID namespace calls
/// `ns_pid` (under bubblewrap the sandbox has its own PID namespace; `NSpid` lists both).
fn host_pid(pgid: i32, ns_pid: i32) -> Option<i32> {
    live_members(pgid).into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
                line.split_whitespace().last()?.parse::<i32>().ok()
            })
            == Some(ns_pid)
    })
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    matches!(stat_of(pid), Some((state, _, _)) if state != "Z")
}

/// The live (not zombie) processes of group `pgid`, from /proc.
fn live_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(
            |pid| matches!(stat_of(*pid), Some((state, _, pgrp)) if state != "Z" && pgrp == pgid),
        )
        .collect()
}

/// Waits until group `pgid` has no live process. SIGKILL is asynchronous: a killed process can
/// show in /proc for a moment after kill(2) returned, so this waits (at most 5 s) for the kernel.
async fn group_gone(pgid: i32) -> Result<(), Vec<i32>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let members = live_members(pgid);
        if members.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(members);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Processes (other than this test) whose command line satisfies `matches`.
fn processes_where(matches: impl Fn(&[&[u8]]) -> bool) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if matches(&argv) {
                found.push(pid);
            }
        }
    }
    found
}

/// Processes with `marker` anywhere in their command line.
fn mentioning(marker: &str) -> Vec<i32> {
    processes_where(|argv| {
        argv.iter()
            .any(|a| String::from_utf8_lossy(a).contains(marker))
    })
}

fn provider(config: LocalSandboxConfig) -> LocalProcessSandboxProvider {
    LocalProcessSandboxProvider::new(config).expect("the provider builds")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_gets_a_minimal_environment_without_server_secrets() {
    server_secrets_in_env();
    let dir = Scratch::new("env");
    let mut reports = Listener::new();
    let p = provider(
        bash_bridge(
            LocalSandboxConfig::new(dir.0.join("sandboxes")),
            reports.port,
            "",
            "exec sleep 600",
        )
        .with_agent_command("opencode", "opencode acp --print-logs"),
    );
    let mut sent = spec();
    // A spec variable cannot replace what the provider sets.
    sent.env
        .insert(ENV_SANDBOX_TOKEN.to_string(), "forged".to_string());
    let id = p.spawn(&sent).await.unwrap();
    let env = reports.next_env().await;

    for (secret, value) in SECRETS {
        assert!(
            !env.contains_key(*secret),
            "{secret} leaked into the sandbox"
        );
        assert!(
            env.values().all(|v| !v.contains(value)),
            "the value of {secret} leaked into the sandbox"
        );
    }
    let names: BTreeSet<&str> = env.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "LANG",
        "SWITCHBOARD_CASE",
        ENV_CALLBACK_URL,
        ENV_SANDBOX_TOKEN,
        ENV_SANDBOX_ID,
        ENV_SESSION_KEY,
        ENV_WORKSPACE,
        ENV_IDLE_TIMEOUT_S,
        ENV_MAX_LIFETIME_S,
        ENV_AGENT,
        ENV_AGENT_COMMAND,
    ]
    .into_iter()
    .collect();
    let mut expected = expected;
    if p.isolation().is_isolated() {
        // bwrap sets PWD when it changes into the workspace.
        expected.insert("PWD");
        assert_eq!(env["PWD"], p.workspace(&id).unwrap().display().to_string());
    }
    assert_eq!(names, expected, "exactly the minimal environment");
    assert_eq!(env[ENV_CALLBACK_URL], sent.callback_url);
    assert_eq!(
        env[ENV_SANDBOX_TOKEN], sent.token,
        "the spec's token, not the forged one"
    );
    assert_eq!(env[ENV_SANDBOX_ID], id.to_string());
    assert_eq!(env[ENV_SESSION_KEY], sent.session_key);
    assert_eq!(env[ENV_IDLE_TIMEOUT_S], "45");
    assert_eq!(env[ENV_MAX_LIFETIME_S], "600");
    assert_eq!(env[ENV_AGENT], "opencode");
    assert_eq!(env[ENV_AGENT_COMMAND], "opencode acp --print-logs");
    assert_eq!(env["SWITCHBOARD_CASE"], sent.env["SWITCHBOARD_CASE"]);
    let workspace = p.workspace(&id).unwrap();
    assert_eq!(env[ENV_WORKSPACE], workspace.display().to_string());
    assert!(workspace.starts_with(dir.0.join("sandboxes").join(id.as_str())));
    let home = PathBuf::from(&env["HOME"]);
    assert!(
        home.starts_with(dir.0.join("sandboxes").join(id.as_str())),
        "HOME is the sandbox's own: {}",
        home.display()
    );
    assert_ne!(Some(home.as_os_str()), std::env::var_os("HOME").as_deref());

    let pgid = p.process_group(&id).unwrap();
    p.terminate(&id).await.unwrap();
    group_gone(pgid)
        .await
        .expect("no process of the sandbox survives");
}

#[tokio::test(flavor = "multi_thread")]
async fn terminate_kills_the_whole_group_including_grandchildren() {
    server_secrets_in_env();
    let dir = Scratch::new("group");
    let mut reports = Listener::new();
    let p = provider(bash_bridge(
        LocalSandboxConfig::new(dir.0.join("sandboxes")),
        reports.port,
        // A child, and a grandchild whose parent (the subshell) has already exited: it is
        // reparented out of the bridge's tree but stays in its process group.
        "sleep 600 &\n( sleep 600 & echo $$ $! > \"$SWITCHBOARD_WORKSPACE/pids\" )",
        "wait",
    ));
    let id = p.spawn(&spec()).await.unwrap();
    reports.next().await;
    let pgid = p.process_group(&id).unwrap();
    let workspace = p.workspace(&id).unwrap();
    let pids: Vec<i32> = std::fs::read_to_string(workspace.join("pids"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let bridge = host_pid(pgid, pids[0]).expect("the bridge runs in its group");
    let grandchild = host_pid(pgid, pids[1]).expect("the grandchild runs in the bridge's group");
    let (_, parent, _) = stat_of(grandchild).expect("the grandchild runs");
    assert_ne!(
        parent, bridge,
        "the grandchild is not the bridge's own child"
    );
    assert!(
        live_members(pgid).len() >= 3,
        "the bridge, its child and its grandchild run in one group: {:?}",
        live_members(pgid)
    );

    p.terminate(&id).await.unwrap();
    group_gone(pgid)
        .await
        .expect("no process of the group survives terminate");
    assert!(!alive(grandchild), "the grandchild is gone");
    match p.status(&id).await.unwrap() {
        SandboxState::Exited { reason } => {
            assert!(reason.contains("terminated"), "{reason}")
        }
        other => panic!("after terminate the status is {other:?}"),
    }
    assert!(!workspace.exists(), "terminate removes the workspace");
    // Idempotent.
    p.terminate(&id).await.unwrap();
    assert!(matches!(
        p.status(&id).await.unwrap(),
        SandboxState::Exited { .. }
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_that_ignores_sigterm_is_killed_after_the_grace() {
    server_secrets_in_env();
    let dir = Scratch::new("stubborn");
    let mut reports = Listener::new();
    let p = provider(
        bash_bridge(
            LocalSandboxConfig::new(dir.0.join("sandboxes")),
            reports.port,
            "trap '' TERM",
            "exec sleep 600",
        )
        .with_terminate_grace(Duration::from_millis(300)),
    );
    let id = p.spawn(&spec()).await.unwrap();
    reports.next().await;
    let pgid = p.process_group(&id).unwrap();
    p.terminate(&id).await.unwrap();
    match p.status(&id).await.unwrap() {
        SandboxState::Exited { reason } => assert!(reason.contains("signal 9"), "{reason}"),
        other => panic!("after terminate the status is {other:?}"),
    }
    group_gone(pgid).await.expect("SIGKILL ended the group");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_follows_a_bridge_that_exits_by_itself() {
    server_secrets_in_env();
    let dir = Scratch::new("exit");
    let mut reports = Listener::new();
    let p = provider(bash_bridge(
        LocalSandboxConfig::new(dir.0.join("sandboxes")),
        reports.port,
        "sleep 600 &",
        "exit 3",
    ));
    let id = p.spawn(&spec()).await.unwrap();
    let exited = p.exited(&id).unwrap();
    reports.next().await;
    let pgid = p.process_group(&id).unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("the bridge exits");
    assert_eq!(reason, "exited with code 3");
    assert_eq!(
        p.status(&id).await.unwrap(),
        SandboxState::Exited {
            reason: "exited with code 3".into()
        }
    );
    group_gone(pgid)
        .await
        .expect("what the bridge left in its group is killed when it exits");
    assert_eq!(
        p.snapshot(&id).await.unwrap_err().class(),
        ErrorClass::Conflict,
        "an exited sandbox cannot be snapshotted"
    );
    p.terminate(&id).await.unwrap();
    assert_eq!(
        p.status(&id).await.unwrap(),
        SandboxState::Exited {
            reason: "exited with code 3".into()
        },
        "terminating an exited sandbox keeps its own reason"
    );
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.email=test@example.com",
            "-c",
            "user.name=Switchboard Test",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository with `README.md` on `main` and `feature.txt` on branch `feature`.
fn make_repo(at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    git(at, &["init", "--quiet"]);
    std::fs::write(at.join("README.md"), "# hello\n").unwrap();
    git(at, &["add", "README.md"]);
    git(at, &["commit", "--quiet", "-m", "first"]);
    git(at, &["checkout", "--quiet", "-b", "feature"]);
    std::fs::write(at.join("feature.txt"), "on the branch\n").unwrap();
    git(at, &["add", "feature.txt"]);
    git(at, &["commit", "--quiet", "-m", "feature"]);
    git(at, &["checkout", "--quiet", "main"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_repository_is_cloned_into_the_workspace_at_its_ref() {
    server_secrets_in_env();
    let dir = Scratch::new("clone");
    let repo = dir.0.join("origin");
    make_repo(&repo);
    let mut reports = Listener::new();
    let p = provider(bash_bridge(
        LocalSandboxConfig::new(dir.0.join("sandboxes")),
        reports.port,
        "",
        "exec sleep 600",
    ));

    let mut on_branch = spec();
    on_branch.repo = Some(RepoSpec {
        url: repo.display().to_string(),
        git_ref: Some("feature".into()),
    });
    let id = p.spawn(&on_branch).await.unwrap();
    let env = reports.next_env().await;
    let workspace = p.workspace(&id).unwrap();
    assert_eq!(env[ENV_WORKSPACE], workspace.display().to_string());
    assert_eq!(
        std::fs::read_to_string(workspace.join("feature.txt")).unwrap(),
        "on the branch\n"
    );
    assert_eq!(
        std::fs::read_to_string(workspace.join("README.md")).unwrap(),
        "# hello\n"
    );

    let mut by_url = spec();
    by_url.repo = Some(RepoSpec {
        url: format!("file://{}", repo.display()),
        git_ref: None,
    });
    let default_branch = p.spawn(&by_url).await.unwrap();
    reports.next().await;
    let other = p.workspace(&default_branch).unwrap();
    assert_ne!(other, workspace, "a fresh workspace per sandbox");
    assert!(other.join("README.md").is_file());
    assert!(
        !other.join("feature.txt").exists(),
        "without a ref the default branch is checked out"
    );

    // A snapshot of a running sandbox is a tarball of its workspace.
    let snapshot = p.snapshot(&id).await.unwrap();
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(&snapshot)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("feature.txt"), "{listing}");

    for id in [id, default_branch] {
        let pgid = p.process_group(&id).unwrap();
        p.terminate(&id).await.unwrap();
        group_gone(pgid).await.expect("no process survives");
    }
    assert!(
        Path::new(&snapshot).is_file(),
        "snapshots outlive the sandbox"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_clone_is_the_spawns_error_and_leaves_nothing_behind() {
    server_secrets_in_env();
    let dir = Scratch::new("badclone");
    let repo = dir.0.join("origin");
    make_repo(&repo);
    let marker = unique("never-started-bridge");
    let root = dir.0.join("sandboxes");
    let mut reports = Listener::new();
    let p = provider(LocalSandboxConfig::new(&root).with_bridge(
        "bash",
        vec![
            "-c".into(),
            // More than one command, so bash stays (no exec) and its command line keeps the marker.
            "cat /proc/$$/environ > /dev/tcp/127.0.0.1/$1; sleep 600; true".into(),
            marker.clone(),
            reports.port.to_string(),
        ],
    ));

    let mut missing = spec();
    missing.repo = Some(RepoSpec {
        url: dir.0.join("no-such-repo").display().to_string(),
        git_ref: None,
    });
    let err = p.spawn(&missing).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Invalid, "{err}");

    let mut bad_ref = spec();
    bad_ref.repo = Some(RepoSpec {
        url: repo.display().to_string(),
        git_ref: Some("no-such-branch".into()),
    });
    let err = p.spawn(&bad_ref).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Invalid, "{err}");

    let mut with_secret = spec();
    with_secret.repo = Some(RepoSpec {
        url: "http://user:tok3n-s3cret@127.0.0.1:9/acme/app.git".into(),
        git_ref: None,
    });
    let err = p.spawn(&with_secret).await.unwrap_err();
    assert!(
        !err.to_string().contains("tok3n-s3cret"),
        "a clone error never shows the credential: {err}"
    );

    assert!(mentioning(&marker).is_empty(), "no bridge was started");
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "no sandbox directory is left: {left:?}");

    // The control: a bridge this provider does start is seen by the same check.
    let started = p.spawn(&spec()).await.unwrap();
    reports.next().await;
    assert!(
        !mentioning(&marker).is_empty(),
        "the started bridge is visible"
    );
    let pgid = p.process_group(&started).unwrap();
    p.terminate(&started).await.unwrap();
    group_gone(pgid).await.expect("no process survives");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bridge_is_unavailable_and_dropping_the_provider_kills_its_sandboxes() {
    server_secrets_in_env();
    let dir = Scratch::new("drop");
    let root = dir.0.join("sandboxes");
    let missing = provider(
        LocalSandboxConfig::new(&root).with_bridge(dir.0.join("no-such-bridge"), Vec::new()),
    );
    let err = missing.spawn(&spec()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");

    let mut reports = Listener::new();
    let p = provider(bash_bridge(
        LocalSandboxConfig::new(&root),
        reports.port,
        "sleep 600 &",
        "wait",
    ));
    let id = p.spawn(&spec()).await.unwrap();
    reports.next().await;
    let pgid = p.process_group(&id).unwrap();
    let exited = p.exited(&id).unwrap();
    drop(p);
    let reason = tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("the bridge ends when its provider is dropped");
    assert_eq!(reason, "killed by signal 9");
    group_gone(pgid)
        .await
        .expect("no process survives the provider");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_isolation_is_said_plainly() {
    server_secrets_in_env();
    let dir = Scratch::new("isolation");
    let off = provider(
        LocalSandboxConfig::new(dir.0.join("sandboxes")).with_isolation(IsolationChoice::Off),
    );
    assert!(!off.isolation().is_isolated());
    assert!(off.isolation().to_string().contains("NOT isolated"));
    let auto = provider(LocalSandboxConfig::new(dir.0.join("sandboxes")));
    if std::env::var("CI").as_deref() == Ok("true") {
        // CI installs bubblewrap (scripts/ensure-sandbox-tools.sh): there the isolated path runs.
        assert!(
            auto.isolation().is_isolated(),
            "under CI local sandboxes must be isolated: {}",
            auto.isolation()
        );
    }
    match (find_on_path("bwrap"), auto.isolation()) {
        (None, Isolation::None { reason }) => {
            assert!(reason.contains("not installed"), "{reason}")
        }
        // Installed: used, or (no user namespaces here) refused with bwrap's own words.
        (Some(found), Isolation::Bubblewrap { program }) => assert_eq!(&found, program),
        (Some(_), Isolation::None { reason }) => {
            assert!(reason.contains("cannot start a sandbox here"), "{reason}")
        }
        (None, other) => panic!("without bwrap the isolation is {other:?}"),
    }
    let refused = LocalProcessSandboxProvider::new(
        LocalSandboxConfig::new(dir.0.join("sandboxes"))
            .with_isolation(IsolationChoice::Bubblewrap(dir.0.join("no-such-bwrap"))),
    );
    assert!(
        refused.is_err(),
        "a required bubblewrap that cannot run is refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn under_bubblewrap_the_sandbox_sees_its_workspace_but_not_the_data_dir() {
    server_secrets_in_env();
    // A data directory outside /tmp (inside the sandbox /tmp is private anyway).
    let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("sb-local-sandbox-data"));
    std::fs::create_dir_all(&data).unwrap();
    let _cleanup = Scratch(data.clone());
    std::fs::write(data.join("master.key"), "server secret").unwrap();
    let mut reports = Listener::new();
    let script = "{ [ -e \"$1/master.key\" ] && echo data-visible || echo data-hidden
  ( : > \"$3/probe\" ) 2>/dev/null && echo system-writable || echo system-readonly
  ( : > \"$SWITCHBOARD_WORKSPACE/made-here\" ) && echo workspace-writable
} > /dev/tcp/127.0.0.1/$2
exec sleep 600";
    // A directory of the system that is neither hidden nor the sandbox's own.
    let outside =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("sb-local-sandbox-outside"));
    std::fs::create_dir_all(&outside).unwrap();
    let _cleanup_outside = Scratch(outside.clone());
    // The bridge itself lives in the hidden data directory: it is still bound into the sandbox.
    let bridge = data.join("fake-bridge");
    std::fs::write(&bridge, format!("#!/bin/bash\n{script}\n")).unwrap();
    std::fs::set_permissions(&bridge, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Automatic isolation (bubblewrap where it works), then none: both are said plainly.
    for choice in [IsolationChoice::Auto, IsolationChoice::Off] {
        let p = provider(
            LocalSandboxConfig::new(data.join("sandboxes"))
                .hide(&data)
                .with_isolation(choice)
                .with_bridge(
                    &bridge,
                    vec![
                        data.display().to_string(),
                        reports.port.to_string(),
                        outside.display().to_string(),
                    ],
                ),
        );
        let id = p.spawn(&spec()).await.unwrap();
        let seen = String::from_utf8(reports.next().await).unwrap();
        let seen: Vec<&str> = seen.lines().collect();
        let workspace = p.workspace(&id).unwrap();
        assert!(
            workspace.join("made-here").is_file(),
            "the workspace is writable"
        );
        if p.isolation().is_isolated() {
            assert_eq!(
                seen,
                ["data-hidden", "system-readonly", "workspace-writable"],
                "under {}",
                p.isolation()
            );
        } else {
            // Without bubblewrap nothing hides the data directory: the provider says so.
            assert_eq!(
                seen,
                ["data-visible", "system-writable", "workspace-writable"]
            );
            assert!(p.isolation().to_string().contains("NOT isolated"));
        }
        let pgid = p.process_group(&id).unwrap();
        p.terminate(&id).await.unwrap();
        group_gone(pgid).await.expect("no process survives");
        let _ = std::fs::remove_file(outside.join("probe"));
    }
}
