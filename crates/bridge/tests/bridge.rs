//! The bridge library against the scripted control plane of `common` (a tokio-tungstenite server
//! that checks the bearer token, ACKs like the real session and drops connections on purpose); the
//! agent is the in-memory fake, wrapped to record which driver calls the bridge made.

mod common;

use async_trait::async_trait;
use common::*;
use futures::channel::mpsc as updates;
use futures::SinkExt;
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_bridge::{run, workspace, Backoff, BridgeConfig, BridgeError, Exit};
use switchboard_core::protocol::{
    Event, PermissionDecision, SandboxMessage, ServerToSandbox, TerminalStatus, Turn, TurnRole,
};
use switchboard_core::{RequestId, RunId, SandboxId};
use switchboard_fakes::agent_driver::{script, InMemoryAgentDriver};
use switchboard_ports::agent::{AgentSessionId, AgentStart, AgentUpdate, RestoreMode, TurnOutcome};
use switchboard_ports::{AgentDriver, AgentDriverError};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

// ----- the agent, recorded ----------------------------------------------------------------------

/// The in-memory agent, recording the bridge's driver calls in order.
#[derive(Default)]
struct Recording {
    inner: InMemoryAgentDriver,
    calls: Mutex<Vec<String>>,
    sessions: Mutex<Vec<AgentSessionId>>,
}

impl Recording {
    fn note(&self, call: impl Into<String>) {
        self.calls.lock().unwrap().push(call.into());
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self, call: &str) -> usize {
        self.calls().iter().filter(|c| c.as_str() == call).count()
    }

    fn sessions(&self) -> Vec<AgentSessionId> {
        self.sessions.lock().unwrap().clone()
    }
}

#[async_trait]
impl AgentDriver for Recording {
    async fn start(&self, start: &AgentStart) -> Result<AgentSessionId, AgentDriverError> {
        self.note("start");
        let session = self.inner.start(start).await?;
        self.sessions.lock().unwrap().push(session.clone());
        Ok(session)
    }

    async fn prompt(
        &self,
        session: &AgentSessionId,
        run_id: &RunId,
        text: &str,
        updates: updates::UnboundedSender<AgentUpdate>,
    ) -> Result<TurnOutcome, AgentDriverError> {
        self.note(format!("prompt {text}"));
        self.inner.prompt(session, run_id, text, updates).await
    }

    async fn cancel(&self, session: &AgentSessionId) -> Result<(), AgentDriverError> {
        self.note("cancel");
        self.inner.cancel(session).await
    }

    async fn decide(
        &self,
        session: &AgentSessionId,
        request_id: &RequestId,
        decision: PermissionDecision,
    ) -> Result<(), AgentDriverError> {
        self.note("decide");
        self.inner.decide(session, request_id, decision).await
    }

    async fn restore(
        &self,
        session: &AgentSessionId,
        turns: &[Turn],
    ) -> Result<RestoreMode, AgentDriverError> {
        self.note("restore");
        self.inner.restore(session, turns).await
    }

    async fn stop(&self, session: &AgentSessionId) -> Result<(), AgentDriverError> {
        self.note("stop");
        self.inner.stop(session).await
    }
}

// ----- helpers ----------------------------------------------------------------------------------

fn config(url: &str, workspace: &Path) -> BridgeConfig {
    let mut c = BridgeConfig::new(url, TOKEN, SandboxId::parse("sbx-test").unwrap(), workspace);
    c.agent = "in-memory".into();
    c.agent_version = "0.0.1".into();
    c.backoff = Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(100),
    };
    c.idle_timeout = WAIT;
    c.stop_grace = Duration::from_secs(5);
    c
}

fn start(config: BridgeConfig, driver: &Arc<Recording>) -> JoinHandle<Result<Exit, BridgeError>> {
    let driver: Arc<dyn AgentDriver> = driver.clone();
    tokio::spawn(run(config, driver))
}

async fn ended(bridge: JoinHandle<Result<Exit, BridgeError>>) -> Result<Exit, BridgeError> {
    timeout(WAIT, bridge)
        .await
        .expect("the bridge ends within the bound")
        .expect("the bridge does not panic")
}

// ----- tests ------------------------------------------------------------------------------------

#[tokio::test]
async fn streams_runs_numbered_from_one_and_keeps_the_agent_session() {
    let server = Server::bind().await;
    let dir = workspace_dir("streams");
    let driver = Arc::new(Recording::default());
    let bridge = start(config(&server.url, &dir), &driver);

    let mut conn = server.accept().await;
    conn.hello_from("in-memory", "0.0.1").await;
    match conn.recv().await {
        SandboxMessage::Workspace { n, files } => {
            assert_eq!(n, 1);
            assert_eq!(
                files,
                vec!["package-lock.json", "package.json", "src/index.ts"],
                "relative paths, without .git/ and node_modules/"
            );
            conn.ack(n).await;
        }
        other => panic!("expected the workspace message after hello, got {other:?}"),
    }

    conn.send(run_frame("run-1", "please tool:ls -la")).await;
    let first = conn.finish_acking(&run_id("run-1")).await;
    assert_eq!(ns(&first), (2..2 + first.len() as u64).collect::<Vec<_>>());
    match (&first[0], &first[1]) {
        (
            SandboxMessage::Event {
                run_id: a,
                event: Event::ToolCall { name, input, .. },
                ..
            },
            SandboxMessage::Event {
                run_id: b,
                event: Event::ToolResult { .. },
                ..
            },
        ) => {
            assert_eq!((a.as_str(), b.as_str()), ("run-1", "run-1"));
            assert_eq!(name, "bash");
            assert_eq!(input, &json!({"command": "ls -la"}));
        }
        other => panic!("expected tool_call then tool_result, got {other:?}"),
    }
    assert_eq!(reply(&first), "ran ls -la");
    assert_eq!(
        finished(&first),
        (TerminalStatus::Completed, Some("end_turn".into()))
    );
    match first.last() {
        Some(SandboxMessage::RunFinished { usage, error, .. }) => {
            assert!(
                usage.input_tokens > 0 && usage.output_tokens > 0,
                "{usage:?}"
            );
            assert_eq!(error, &None);
        }
        other => panic!("{other:?}"),
    }

    // A re-sent run is not run again; the next run continues the numbering and the conversation.
    conn.send(run_frame("run-1", "please tool:ls -la")).await;
    conn.send(run_frame("run-2", script::RECALL)).await;
    let second = conn.finish_acking(&run_id("run-2")).await;
    let after = 2 + first.len() as u64;
    assert_eq!(
        ns(&second),
        (after..after + second.len() as u64).collect::<Vec<_>>()
    );
    assert!(second
        .iter()
        .all(|m| !matches!(m, SandboxMessage::Event { run_id, .. } if run_id.as_str() == "run-1")));
    assert_eq!(reply(&second), "you first said: please tool:ls -la");

    let sessions = driver.sessions();
    assert_eq!(sessions.len(), 1, "one agent session serves both runs");
    let started = driver.inner.started_with(&sessions[0]).unwrap();
    assert_eq!(Path::new(&started.workspace), &*dir);
    assert_eq!(started.model, model());
    assert_eq!(started.gateway, gateway("sk-tenant"));
    assert_eq!(driver.count("prompt please tool:ls -la"), 1);

    conn.send(ServerToSandbox::Shutdown).await;
    assert_eq!(ended(bridge).await, Ok(Exit::Shutdown));
    assert_eq!(driver.inner.session_count(), 0, "shutdown stops the agent");
    assert_eq!(driver.count("stop"), 1);
}

#[tokio::test]
async fn a_dropped_connection_resends_exactly_the_unacked_messages() {
    let server = Server::bind().await;
    let dir = workspace_dir("reconnect");
    let driver = Arc::new(Recording::default());
    let bridge = start(config(&server.url, &dir), &driver);
    let mut ledger = Ledger::default();

    // Connection 1: the run waits for permission; only its permission request is ACKed.
    let mut conn = server.accept().await;
    conn.hello_from("in-memory", "0.0.1").await;
    let workspace = conn.recv().await;
    assert!(matches!(workspace, SandboxMessage::Workspace { n: 1, .. }));
    assert!(ledger.take(&workspace));
    conn.send(run_frame("run-1", &script::permission("edit")))
        .await;
    let request = conn.recv().await;
    let request_id = match &request {
        SandboxMessage::PermissionRequest {
            n: 2,
            run_id,
            request_id,
            tool,
            ..
        } => {
            assert_eq!((run_id.as_str(), tool.as_str()), ("run-1", "edit"));
            request_id.clone()
        }
        other => panic!("expected permission_request n = 2, got {other:?}"),
    };
    assert!(ledger.take(&request));
    conn.ack(2).await;
    drop(conn);

    // Connection 2: hello, then only n = 1 again (2 was ACKed); the decision lets the run finish.
    let mut conn = server.accept().await;
    conn.hello_from("in-memory", "0.0.1").await;
    let resent = conn.recv().await;
    assert!(
        matches!(resent, SandboxMessage::Workspace { n: 1, .. }),
        "{resent:?}"
    );
    assert!(!ledger.take(&resent), "a duplicate for the server");
    conn.send(ServerToSandbox::Permission {
        request_id,
        decision: PermissionDecision::AllowOnce,
    })
    .await;
    let rest = conn.until_finished(&run_id("run-1")).await;
    assert_eq!(
        ns(&rest),
        (3..3 + rest.len() as u64).collect::<Vec<_>>(),
        "n = 2 was ACKed and is not re-sent"
    );
    assert_eq!(reply(&rest), "permission granted for edit");
    for m in &rest {
        assert!(ledger.take(m));
    }
    let last = 2 + rest.len() as u64;
    assert!(last >= 6, "enough messages to leave holes: {rest:?}");
    // ACK out of order and with holes, then start a second run and hang up at once.
    conn.ack(5).await;
    conn.ack(3).await;
    conn.send(run_frame("run-2", "please tool:echo hi")).await;
    drop(conn);

    // Connection 3: every un-ACKed message, in order, then whatever run 2 produced.
    let mut conn = server.accept().await;
    conn.hello_from("in-memory", "0.0.1").await;
    let mut third = Vec::new();
    loop {
        let m = conn.recv().await;
        let done =
            matches!(&m, SandboxMessage::RunFinished { run_id, .. } if run_id.as_str() == "run-2");
        third.push(m);
        if done {
            break;
        }
    }
    let run2_start = third
        .iter()
        .position(
            |m| matches!(m, SandboxMessage::Event { run_id, .. } if run_id.as_str() == "run-2"),
        )
        .expect("run 2 reached the agent");
    let mut expected: Vec<u64> = vec![1, 4];
    expected.extend(6..=last);
    assert_eq!(
        ns(&third[..run2_start]),
        expected,
        "exactly the un-ACKed messages"
    );
    assert_eq!(
        ns(&third[run2_start..]),
        (last + 1..=last + (third.len() - run2_start) as u64).collect::<Vec<_>>()
    );
    for m in &third {
        ledger.take(m);
    }
    assert_eq!(
        ns(&ledger.applied),
        (1..=last + (third.len() - run2_start) as u64).collect::<Vec<_>>(),
        "the server applies every message exactly once"
    );
    assert_eq!(reply(&third[run2_start..]), "ran echo hi");
    assert_eq!(driver.count("decide"), 1);
    assert_eq!(driver.sessions().len(), 1, "the agent survives reconnects");

    conn.send(ServerToSandbox::Shutdown).await;
    assert_eq!(ended(bridge).await, Ok(Exit::Shutdown));
    assert_eq!(driver.inner.session_count(), 0);
}

#[tokio::test]
async fn cancel_ends_a_hanging_run_and_drops_a_queued_one() {
    let server = Server::bind().await;
    let dir = workspace_dir("cancel");
    let driver = Arc::new(Recording::default());
    let bridge = start(config(&server.url, &dir), &driver);
    let mut conn = server.accept().await;
    conn.hello_from("in-memory", "0.0.1").await;
    workspace_acked(&mut conn).await;

    conn.send(run_frame("run-a", "please hang")).await;
    match conn.recv().await {
        SandboxMessage::Event {
            n: 2,
            run_id,
            event: Event::ThoughtDelta { .. },
        } => assert_eq!(run_id.as_str(), "run-a"),
        other => panic!("expected the hanging run's thought, got {other:?}"),
    }
    conn.send(run_frame("run-b", "never runs")).await;
    conn.send(ServerToSandbox::Cancel {
        run_id: run_id("run-b"),
    })
    .await;
    let b = conn.finish_acking(&run_id("run-b")).await;
    assert_eq!(ns(&b), vec![3], "a queued run ends at once, without events");
    assert_eq!(
        finished(&b),
        (TerminalStatus::Cancelled, Some("cancelled".into()))
    );

    conn.send(ServerToSandbox::Cancel {
        run_id: run_id("run-a"),
    })
    .await;
    let a = conn.finish_acking(&run_id("run-a")).await;
    assert_eq!(ns(&a), vec![4]);
    assert_eq!(
        finished(&a),
        (TerminalStatus::Cancelled, Some("cancelled".into()))
    );

    conn.send(run_frame("run-c", "still here")).await;
    let c = conn.finish_acking(&run_id("run-c")).await;
    assert_eq!(reply(&c), "echo: still here");
    assert_eq!(
        driver
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("prompt"))
            .collect::<Vec<_>>(),
        vec!["prompt please hang", "prompt still here"],
        "the cancelled queued run never reached the agent"
    );
    assert_eq!(driver.count("cancel"), 1);

    conn.send(ServerToSandbox::Shutdown).await;
    assert_eq!(ended(bridge).await, Ok(Exit::Shutdown));
}

#[tokio::test]
async fn shutdown_during_a_run_stops_the_agent_and_returns() {
    let server = Server::bind().await;
    let dir = workspace_dir("shutdown");
    let driver = Arc::new(Recording::default());
    let bridge = start(config(&server.url, &dir), &driver);
    let mut conn = server.accept().await;
    conn.hello_from("in-memory", "0.0.1").await;
    workspace_acked(&mut conn).await;
    conn.send(run_frame("run-1", "please hang")).await;
    assert!(matches!(
        conn.recv().await,
        SandboxMessage::Event {
            event: Event::ThoughtDelta { .. },
            ..
        }
    ));
    assert!(driver.inner.in_turn(&driver.sessions()[0]));

    conn.send(ServerToSandbox::Shutdown).await;
    let exit = ended(bridge).await;
    assert_eq!(exit, Ok(Exit::Shutdown));
    assert_eq!(exit.unwrap().code(), 0);
    assert_eq!(
        driver.inner.session_count(),
        0,
        "the agent session is stopped"
    );
    assert_eq!(driver.count("stop"), 1);
}

#[tokio::test]
async fn an_unreachable_control_plane_stops_the_agent_after_the_idle_timeout() {
    let server = Server::bind().await;
    let dir = workspace_dir("idle");
    let driver = Arc::new(Recording::default());
    let mut c = config(&server.url, &dir);
    c.idle_timeout = Duration::from_millis(300);
    let bridge = start(c, &driver);
    let mut conn = server.accept().await;
    conn.hello_from("in-memory", "0.0.1").await;
    workspace_acked(&mut conn).await;
    conn.send(run_frame("run-1", "please hang")).await;
    assert!(matches!(conn.recv().await, SandboxMessage::Event { .. }));
    assert_eq!(driver.inner.session_count(), 1);

    // The control plane goes away for good: the socket and the listener.
    drop(conn);
    drop(server);
    let exit = ended(bridge).await.expect("an idle exit is not an error");
    assert_eq!(exit, Exit::IdleTimeout);
    assert_ne!(exit.code(), 0, "the process exits non-zero");
    assert_eq!(driver.inner.session_count(), 0, "no orphaned agent");
    assert_eq!(driver.count("stop"), 1);
}

#[tokio::test]
async fn a_bridge_that_never_connects_exits_after_the_idle_timeout() {
    let url = {
        let server = Server::bind().await;
        server.url.clone()
    };
    let dir = workspace_dir("never");
    let driver = Arc::new(Recording::default());
    let mut c = config(&url, &dir);
    c.idle_timeout = Duration::from_millis(200);
    let exit = ended(start(c, &driver)).await;
    assert_eq!(exit, Ok(Exit::IdleTimeout));
    assert!(driver.calls().is_empty(), "no agent was ever started");
}

#[tokio::test]
async fn a_refused_token_ends_the_bridge_without_retrying() {
    let server = Server::bind().await;
    let dir = workspace_dir("refused");
    let driver = Arc::new(Recording::default());
    let mut c = config(&server.url, &dir);
    c.token = "a-stale-token".into();
    let bridge = start(c, &driver);
    server.refuse().await;
    let exit = ended(bridge).await;
    assert_eq!(exit, Err(BridgeError::Refused { status: 401 }));
    assert_ne!(exit.unwrap_err().code(), 0);
}

#[tokio::test]
async fn restore_gives_the_conversation_before_the_next_run() {
    let server = Server::bind().await;
    let dir = workspace_dir("restore");
    let driver = Arc::new(Recording::default());
    let bridge = start(config(&server.url, &dir), &driver);
    let mut conn = server.accept().await;
    conn.hello_from("in-memory", "0.0.1").await;
    workspace_acked(&mut conn).await;
    conn.send(ServerToSandbox::Restore {
        turns: vec![
            Turn {
                role: TurnRole::User,
                text: "the code word is marmalade".into(),
            },
            Turn {
                role: TurnRole::Assistant,
                text: "noted".into(),
            },
        ],
    })
    .await;
    conn.send(run_frame("run-1", script::RECALL)).await;
    let got = conn.finish_acking(&run_id("run-1")).await;
    assert_eq!(reply(&got), "you first said: the code word is marmalade");
    assert_eq!(
        driver.calls(),
        vec!["start", "restore", "prompt what did I say first?"]
    );
    conn.send(ServerToSandbox::Shutdown).await;
    assert_eq!(ended(bridge).await, Ok(Exit::Shutdown));
}

#[tokio::test]
async fn a_new_gateway_restarts_the_agent_with_the_conversation() {
    let server = Server::bind().await;
    let dir = workspace_dir("gateway");
    let driver = Arc::new(Recording::default());
    let bridge = start(config(&server.url, &dir), &driver);
    let mut conn = server.accept().await;
    conn.hello_from("in-memory", "0.0.1").await;
    workspace_acked(&mut conn).await;
    conn.send(run_frame("run-1", "my name is Ada")).await;
    conn.finish_acking(&run_id("run-1")).await;
    conn.send(ServerToSandbox::Run {
        run_id: run_id("run-2"),
        text: script::RECALL.into(),
        model: model(),
        gateway: gateway("sk-rotated"),
    })
    .await;
    let got = conn.finish_acking(&run_id("run-2")).await;
    assert_eq!(reply(&got), "you first said: my name is Ada");
    let sessions = driver.sessions();
    assert_eq!(sessions.len(), 2);
    assert_eq!(
        driver.inner.started_with(&sessions[1]).unwrap().gateway,
        gateway("sk-rotated")
    );
    assert_eq!(driver.inner.session_count(), 1, "the old agent was stopped");
    conn.send(ServerToSandbox::Shutdown).await;
    assert_eq!(ended(bridge).await, Ok(Exit::Shutdown));
    assert_eq!(driver.inner.session_count(), 0);
}

#[tokio::test]
async fn heartbeats_flow_while_connected_and_unknown_frames_are_ignored() {
    let server = Server::bind().await;
    let dir = workspace_dir("heartbeat");
    let driver = Arc::new(Recording::default());
    let mut c = config(&server.url, &dir);
    c.heartbeat_interval = Duration::from_millis(20);
    let bridge = start(c, &driver);
    let mut conn = server.accept().await;
    conn.hello_from("in-memory", "0.0.1").await;
    workspace_acked(&mut conn).await;
    conn.ws
        .send(Message::text(r#"{"type":"from_the_future","x":1}"#))
        .await
        .unwrap();
    let mut heartbeats = 0;
    while heartbeats < 2 {
        match conn.recv_any().await {
            SandboxMessage::Heartbeat => heartbeats += 1,
            other => panic!("only heartbeats expected, got {other:?}"),
        }
    }
    conn.send(run_frame("run-1", "still fine")).await;
    let got = conn.finish_acking(&run_id("run-1")).await;
    assert_eq!(reply(&got), "echo: still fine");
    conn.send(ServerToSandbox::Shutdown).await;
    assert_eq!(ended(bridge).await, Ok(Exit::Shutdown));
}

#[test]
fn the_workspace_list_is_breadth_first_and_bounded() {
    let dir = workspace_dir("listing");
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    std::fs::write(dir.join("a/b/deep.txt"), "").unwrap();
    std::fs::write(dir.join("a/shallow.txt"), "").unwrap();
    assert_eq!(
        workspace::list_files(&dir, 100),
        vec![
            "package-lock.json",
            "package.json",
            "a/shallow.txt",
            "src/index.ts",
            "a/b/deep.txt"
        ]
    );
    assert_eq!(
        workspace::list_files(&dir, 2),
        vec!["package-lock.json", "package.json"]
    );
    assert!(workspace::list_files(&dir.join("missing"), 10).is_empty());
}

#[tokio::test]
async fn a_wss_url_dials_with_tls() {
    let server = Server::bind().await;
    let url = server.url.replacen("ws://", "wss://", 1);
    let dir = workspace_dir("wss");
    let driver = Arc::new(Recording::default());
    let mut c = config(&url, &dir);
    c.idle_timeout = Duration::from_millis(300);
    let bridge = start(c, &driver);
    let (mut tcp, _) = timeout(WAIT, server.listener.accept())
        .await
        .expect("the bridge dials")
        .unwrap();
    let mut first = [0u8; 3];
    timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut first),
    )
    .await
    .expect("the bridge speaks first")
    .unwrap();
    assert_eq!(first[0], 0x16, "a TLS handshake record, not plain HTTP");
    assert_eq!(first[1], 0x03);
    drop(tcp);
    drop(server);
    assert_eq!(ended(bridge).await, Ok(Exit::IdleTimeout));
}

#[tokio::test]
async fn oversized_agent_output_is_split_or_truncated_to_fit_a_frame() {
    let server = Server::bind().await;
    let dir = workspace_dir("oversized");
    let driver = Arc::new(Recording::default());
    let bridge = start(config(&server.url, &dir), &driver);
    let mut conn = server.accept().await;
    conn.hello_from("in-memory", "0.0.1").await;
    workspace_acked(&mut conn).await;

    // Every frame read is checked against the server's 1 MiB limit (see `common`).
    let command = "é".repeat(800 * 1024);
    conn.send(run_frame("run-1", &format!("tool:{command}")))
        .await;
    let got = conn.finish_acking(&run_id("run-1")).await;
    assert_eq!(ns(&got), (2..2 + got.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        reply(&got),
        format!("ran {command}"),
        "a long reply is split, never cut"
    );
    let deltas = got
        .iter()
        .filter(|m| {
            matches!(
                m,
                SandboxMessage::Event {
                    event: Event::MessageDelta { .. },
                    ..
                }
            )
        })
        .count();
    assert!(
        deltas > 3,
        "the agent's chunks were split further: {deltas}"
    );
    match &got[1] {
        SandboxMessage::Event {
            event: Event::ToolResult { output, .. },
            ..
        } => assert!(output["stdout"].as_str().unwrap().contains("[truncated ")),
        other => panic!("expected the tool result, got {other:?}"),
    }
    assert_eq!(finished(&got).0, TerminalStatus::Completed);
    conn.send(ServerToSandbox::Shutdown).await;
    assert_eq!(ended(bridge).await, Ok(Exit::Shutdown));
}
