//! The `switchboard-bridge` binary as a sandbox runs it: configured only by its environment,
//! driving a real ACP agent process (`scripted-acp-agent`) through `AcpAgentDriver`, against the
//! scripted control plane of `common`. Checks the exit codes, that the agent never sees the sandbox
//! token, and that no agent process outlives the bridge.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use switchboard_core::protocol::{Event, SandboxMessage, ServerToSandbox, TerminalStatus};
use tokio::process::{Child, Command};
use tokio::time::timeout;

fn bridge_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchboard-bridge"))
}

/// The scripted ACP agent, built beside the bridge (a binary of `switchboard-adapters`, which
/// `cargo test -p switchboard-bridge` does not build by itself).
fn scripted_agent() -> PathBuf {
    let path = bridge_program().with_file_name("scripted-acp-agent");
    if !path.is_file() {
        let mut build = std::process::Command::new(env!("CARGO"));
        build.args([
            "build",
            "--quiet",
            "-p",
            "switchboard-adapters",
            "--bin",
            "scripted-acp-agent",
        ]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building scripted-acp-agent failed");
    }
    assert!(path.is_file(), "no scripted-acp-agent at {path:?}");
    path
}

/// A bridge process with exactly `vars` in its environment (plus `PATH`), its stderr in
/// `<workspace>.log`.
struct Bridge {
    child: Child,
    log: PathBuf,
}

impl Bridge {
    fn spawn(workspace: &Path, vars: &[(&str, &str)]) -> Bridge {
        let log = workspace.with_extension("log");
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(bridge_program())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .envs(vars.iter().copied())
            .current_dir(workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("the bridge starts");
        Bridge { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the bridge is running")
    }

    /// The exit status, within the bound; the bridge's log is printed when it does not end.
    async fn exit(&mut self) -> ExitStatus {
        match timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the bridge did not exit within the bound; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The variables a sandbox provider sets, for a bridge dialling `url`.
fn sandbox_vars<'a>(url: &'a str, workspace: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("SWITCHBOARD_CALLBACK_URL", url),
        ("SWITCHBOARD_SANDBOX_TOKEN", TOKEN),
        ("SWITCHBOARD_WORKSPACE", workspace),
        ("SWITCHBOARD_SANDBOX_ID", "sbx-test"),
    ]
}

/// Whether process `pid` is alive (a zombie waiting to be reaped counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn the_binary_drives_a_real_acp_agent_that_never_sees_the_token() {
    let agent = scripted_agent();
    let agent = agent.to_str().unwrap();
    let server = Server::bind().await;
    let dir = workspace_dir("process-agent");
    let ws = dir.to_str().unwrap();
    let mut vars = sandbox_vars(&server.url, ws);
    vars.extend([
        ("SWITCHBOARD_AGENT_COMMAND", agent),
        ("SWITCHBOARD_AGENT", "scripted"),
        ("SWITCHBOARD_AGENT_VERSION", "0.1.0"),
    ]);
    let mut bridge = Bridge::spawn(&dir, &vars);

    let mut conn = server.accept().await;
    conn.hello_from("scripted", "0.1.0").await;
    workspace_acked(&mut conn).await;
    let command = r#"echo "token=[$SWITCHBOARD_SANDBOX_TOKEN] agent=$PPID cwd=$(pwd)""#;
    conn.send(run_frame("run-1", &format!("tool:{command}")))
        .await;
    let got = conn.finish_acking(&run_id("run-1")).await;
    assert_eq!(
        ns(&got),
        (2..2 + got.len() as u64).collect::<Vec<_>>(),
        "{got:?}"
    );
    let output = got
        .iter()
        .find_map(|m| match m {
            SandboxMessage::Event {
                event: Event::ToolResult { output, .. },
                ..
            } => Some(output.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no tool_result in {got:?}"));
    assert!(
        output.contains("token=[]"),
        "the agent's commands must not see the sandbox token: {output}"
    );
    assert!(output.contains(&format!("cwd={ws}")), "{output}");
    let agent_pid: u32 = output
        .split("agent=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no agent pid in {output}"));
    assert!(alive(agent_pid), "the agent runs during the session");
    assert_eq!(reply(&got), format!("ran {command}"));
    assert_eq!(finished(&got).0, TerminalStatus::Completed);

    conn.send(ServerToSandbox::Shutdown).await;
    let status = bridge.exit().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", bridge.log());
    assert!(!alive(agent_pid), "the agent process ended with the bridge");
    assert!(!bridge.log().contains(TOKEN), "the token is never logged");
}

#[tokio::test]
async fn the_binary_exits_with_a_code_for_each_ending() {
    // Unusable settings: 2.
    let dir = workspace_dir("process-codes");
    let ws = dir.to_str().unwrap();
    let mut bridge = Bridge::spawn(&dir, &[("SWITCHBOARD_WORKSPACE", ws)]);
    assert_eq!(bridge.exit().await.code(), Some(2));
    assert!(bridge.log().contains("SWITCHBOARD_CALLBACK_URL"));

    // A refused token: 4.
    let server = Server::bind().await;
    let mut vars = sandbox_vars(&server.url, ws);
    vars[1] = ("SWITCHBOARD_SANDBOX_TOKEN", "a-stale-token");
    let mut bridge = Bridge::spawn(&dir, &vars);
    server.refuse().await;
    assert_eq!(bridge.exit().await.code(), Some(4));

    // SIGTERM while connected: a requested stop, 0.
    let vars = sandbox_vars(&server.url, ws);
    let mut bridge = Bridge::spawn(&dir, &vars);
    let mut conn = server.accept().await;
    conn.hello_from("opencode", "unknown").await;
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &bridge.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert_eq!(
        bridge.exit().await.code(),
        Some(0),
        "log:\n{}",
        bridge.log()
    );

    // No control plane at all: the idle timeout, 3.
    let url = server.url.clone();
    drop(server);
    let mut vars = sandbox_vars(&url, ws);
    vars.push(("SWITCHBOARD_IDLE_TIMEOUT_S", "1"));
    let mut bridge = Bridge::spawn(&dir, &vars);
    assert_eq!(
        bridge.exit().await.code(),
        Some(3),
        "log:\n{}",
        bridge.log()
    );
}
