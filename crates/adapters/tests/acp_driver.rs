//! `AcpAgentDriver` against the `scripted-acp-agent` binary (real processes over real pipes), and
//! the ACP update → event mapping replayed from the OpenCode 1.18.33 transcripts.

use futures::channel::mpsc;
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use switchboard_adapters::acp_driver::{
    outcome_of_answer, AcpAgentDriver, AcpConfig, AcpUpdateMapper,
};
use switchboard_core::protocol::{
    Event, GatewayConfig, PermissionDecision, TerminalStatus, ToolStatus, Turn, TurnRole, Usage,
};
use switchboard_core::{ModelRef, RequestId, RunId};
use switchboard_fakes::agent_driver::script;
use switchboard_ports::agent::{AgentSessionId, AgentStart, AgentUpdate, RestoreMode, TurnOutcome};
use switchboard_ports::error::ErrorClass;
use switchboard_ports::{AgentDriver, Classify};

/// The longest any single step may take before the test calls the driver stuck.
const PATIENCE: Duration = Duration::from_secs(20);

/// A fresh directory under the temp dir, removed on drop.
struct Workspace(PathBuf);

impl Workspace {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchboard-acp-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Workspace(path)
    }

    fn start(&self) -> AgentStart {
        AgentStart {
            workspace: self.0.to_string_lossy().into_owned(),
            model: ModelRef::parse("local/scripted-1").unwrap(),
            gateway: GatewayConfig {
                base_url: "http://127.0.0.1:9/v1".into(),
                api_key: Some("sk-test".into()),
                headers: Default::default(),
            },
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn driver() -> AcpAgentDriver {
    AcpAgentDriver::new(AcpConfig {
        program: env!("CARGO_BIN_EXE_scripted-acp-agent").to_string(),
        args: vec![],
        env: vec![],
    })
}

fn run() -> RunId {
    RunId::parse("run-acp").unwrap()
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?}"))
}

/// Runs one prompt to its end and returns its outcome and every update.
async fn prompt_all(
    d: &AcpAgentDriver,
    s: &AgentSessionId,
    text: &str,
) -> (TurnOutcome, Vec<AgentUpdate>) {
    let (tx, rx) = mpsc::unbounded();
    let outcome = within(text, d.prompt(s, &run(), text, tx)).await.unwrap();
    (outcome, rx.collect().await)
}

fn reply_of(updates: &[AgentUpdate]) -> String {
    updates
        .iter()
        .filter_map(|u| match u {
            AgentUpdate::Event(Event::MessageDelta { text }) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn events(updates: &[AgentUpdate]) -> Vec<&Event> {
    updates
        .iter()
        .filter_map(|u| match u {
            AgentUpdate::Event(e) => Some(e),
            AgentUpdate::Permission { .. } => None,
        })
        .collect()
}

/// Whether a process is running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
        }
    }
}

/// Waits (bounded) until the process is gone.
async fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn streams_deltas_then_completes_with_usage() {
    let ws = Workspace::new();
    let d = driver();
    let s = within("start", d.start(&ws.start())).await.unwrap();
    let (outcome, updates) = prompt_all(&d, &s, "hello there").await;
    assert_eq!(updates.len(), 3, "three chunks: {updates:?}");
    assert_eq!(reply_of(&updates), "echo: hello there");
    assert_eq!(outcome.status, TerminalStatus::Completed);
    assert_eq!(outcome.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        outcome.usage,
        Usage {
            input_tokens: 2,
            output_tokens: 3
        }
    );
    assert!(outcome.error.is_none());
    d.stop(&s).await.unwrap();
}

#[tokio::test]
async fn a_tool_prompt_reports_the_real_command_output() {
    let ws = Workspace::new();
    let d = driver();
    let s = within("start", d.start(&ws.start())).await.unwrap();
    let cmd = "echo real-$((40+2)) && pwd";
    let (outcome, updates) = prompt_all(&d, &s, &script::tool(cmd)).await;
    assert_eq!(outcome.status, TerminalStatus::Completed);
    let seen = events(&updates);
    let (call_id, result_id, output) = match (seen[0], seen[1]) {
        (
            Event::ToolCall {
                call_id,
                name,
                input,
            },
            Event::ToolResult {
                call_id: result_id,
                status,
                output,
            },
        ) => {
            assert_eq!(name, "bash");
            assert_eq!(input["command"], cmd);
            assert_eq!(*status, ToolStatus::Ok);
            (call_id, result_id, output.as_str().unwrap().to_string())
        }
        other => panic!("expected tool_call then tool_result, got {other:?}"),
    };
    assert_eq!(call_id, result_id);
    let cwd = ws.0.canonicalize().unwrap();
    assert_eq!(
        output,
        format!("real-42\n{}\n", cwd.display()),
        "ran in the workspace"
    );
    assert_eq!(reply_of(&updates), format!("ran {cmd}"));

    // A failing command is a tool error with its stderr.
    let (outcome, updates) = prompt_all(&d, &s, &script::tool("ls /no-such-dir-here")).await;
    assert_eq!(outcome.status, TerminalStatus::Completed);
    let failed = events(&updates).into_iter().find_map(|e| match e {
        Event::ToolResult { status, output, .. } => Some((*status, output.clone())),
        _ => None,
    });
    let (status, output) = failed.expect("a tool_result");
    assert_eq!(status, ToolStatus::Error);
    assert!(
        output.as_str().unwrap().contains("no-such-dir-here"),
        "{output}"
    );
    d.stop(&s).await.unwrap();
}

#[tokio::test]
async fn turns_keep_context_and_sessions_are_separate() {
    let ws = Workspace::new();
    let d = driver();
    let s = within("start", d.start(&ws.start())).await.unwrap();
    prompt_all(&d, &s, "my name is Ada").await;
    let (outcome, updates) = prompt_all(&d, &s, script::RECALL).await;
    assert_eq!(reply_of(&updates), "you first said: my name is Ada");
    // "my name is Ada" (4) + "echo: my name is Ada" (5) + "what did I say first?" (5).
    assert_eq!(outcome.usage.input_tokens, 14);
    let other = within("start", d.start(&ws.start())).await.unwrap();
    assert_ne!(other, s);
    let (_, updates) = prompt_all(&d, &other, script::RECALL).await;
    assert_eq!(reply_of(&updates), "you have not said anything before");
    d.stop(&s).await.unwrap();
    d.stop(&other).await.unwrap();
}

#[tokio::test]
async fn cancel_ends_a_hanging_turn_promptly() {
    let ws = Workspace::new();
    let d = driver();
    let s = within("start", d.start(&ws.start())).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded();
    let run = run();
    let turn = d.prompt(&s, &run, script::HANG, tx);
    let control = async {
        let first = within("the first update", rx.next()).await;
        assert!(
            matches!(first, Some(AgentUpdate::Event(Event::ThoughtDelta { .. }))),
            "{first:?}"
        );
        let (tx2, _rx2) = mpsc::unbounded();
        let busy = d.prompt(&s, &run, "hello", tx2).await.unwrap_err();
        assert_eq!(busy.class(), ErrorClass::Conflict);
        let asked = Instant::now();
        d.cancel(&s).await.unwrap();
        asked
    };
    let (outcome, asked) =
        within("the cancelled turn", async { tokio::join!(turn, control) }).await;
    let outcome = outcome.unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        asked.elapsed()
    );
    assert_eq!(outcome.status, TerminalStatus::Cancelled);
    assert_eq!(outcome.stop_reason.as_deref(), Some("cancelled"));
    let (after, _) = prompt_all(&d, &s, "still there?").await;
    assert_eq!(after.status, TerminalStatus::Completed);
    // A cancel with no turn does nothing.
    d.cancel(&s).await.unwrap();
    d.stop(&s).await.unwrap();
}

#[tokio::test]
async fn permission_round_trip() {
    let ws = Workspace::new();
    let d = driver();
    let s = within("start", d.start(&ws.start())).await.unwrap();
    for (decision, reply) in [
        (PermissionDecision::AllowOnce, "permission granted for edit"),
        (PermissionDecision::Deny, "permission denied for edit"),
    ] {
        let (tx, mut rx) = mpsc::unbounded();
        let text = script::permission("edit");
        let run = run();
        let mut turn = Box::pin(d.prompt(&s, &run, &text, tx));
        let request_id = tokio::select! {
            u = rx.next() => match u {
                Some(AgentUpdate::Permission { request_id, tool, input }) => {
                    assert_eq!(tool, "edit");
                    assert_eq!(input, json!({"tool": "edit"}));
                    request_id
                }
                other => panic!("expected a permission update first, got {other:?}"),
            },
            o = &mut turn => panic!("the turn ended before asking: {o:?}"),
            _ = tokio::time::sleep(PATIENCE) => panic!("no permission update"),
        };
        // The turn waits for the decision.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut turn)
                .await
                .is_err(),
            "the turn ended without a decision"
        );
        let unknown = RequestId::parse("perm-none").unwrap();
        assert_eq!(
            d.decide(&s, &unknown, decision).await.unwrap_err().class(),
            ErrorClass::NotFound
        );
        d.decide(&s, &request_id, decision).await.unwrap();
        assert_eq!(
            d.decide(&s, &request_id, decision)
                .await
                .unwrap_err()
                .class(),
            ErrorClass::NotFound,
            "a request is answered once"
        );
        let outcome = within("the decided turn", turn).await.unwrap();
        assert_eq!(outcome.status, TerminalStatus::Completed);
        let rest: Vec<AgentUpdate> = rx.collect().await;
        assert_eq!(reply_of(&rest), reply);
        let ran = rest.iter().any(
            |u| matches!(u, AgentUpdate::Event(Event::ToolCall { name, .. }) if name == "edit"),
        );
        assert_eq!(ran, decision != PermissionDecision::Deny);
    }
    d.stop(&s).await.unwrap();
}

#[tokio::test]
async fn an_agent_killed_mid_turn_fails_the_turn_clearly() {
    let ws = Workspace::new();
    let d = driver();
    let s = within("start", d.start(&ws.start())).await.unwrap();
    let pid = d.process_id(&s).expect("a pid");
    let began = Instant::now();
    // The tool's shell kills its parent: the agent itself.
    let (outcome, _) = prompt_all(&d, &s, &script::tool("kill -9 $PPID")).await;
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the failed turn took {:?}",
        began.elapsed()
    );
    assert_eq!(outcome.status, TerminalStatus::Failed, "{outcome:?}");
    let error = outcome.error.expect("an error");
    assert_eq!(error.code, "agent_exited");
    assert!(
        error.message.contains("died during the turn") && error.message.contains("signal: 9"),
        "{}",
        error.message
    );
    assert!(gone(pid).await);
    // The session's agent is gone: prompts are refused, stop forgets it.
    let (tx, _rx) = mpsc::unbounded();
    assert_eq!(
        d.prompt(&s, &run(), "hello", tx).await.unwrap_err().class(),
        ErrorClass::Unavailable
    );
    d.stop(&s).await.unwrap();
    assert_eq!(d.stop(&s).await.unwrap_err().class(), ErrorClass::NotFound);
}

#[tokio::test]
async fn stop_ends_the_turn_and_kills_the_agent_and_its_children() {
    let ws = Workspace::new();
    let d = driver();
    let s = within("start", d.start(&ws.start())).await.unwrap();
    let agent = d.process_id(&s).expect("a pid");
    let (tx, mut rx) = mpsc::unbounded();
    let run = run();
    let turn = d.prompt(&s, &run, "tool:echo $$ > child.pid; exec sleep 30", tx);
    let pid_file = ws.0.join("child.pid");
    let control = async {
        // The tool has started once its call is announced and its pid is written.
        let first = within("the tool call", rx.next()).await;
        assert!(matches!(
            first,
            Some(AgentUpdate::Event(Event::ToolCall { .. }))
        ));
        let child = within("the child's pid", async {
            loop {
                if let Some(pid) = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                {
                    break pid;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(alive(child));
        within("stop", d.stop(&s)).await.unwrap();
        child
    };
    let (outcome, child) = within("the stopped turn", async { tokio::join!(turn, control) }).await;
    assert_eq!(outcome.unwrap().status, TerminalStatus::Cancelled);
    assert!(gone(agent).await, "the agent {agent} is still running");
    assert!(
        gone(child).await,
        "the agent's child {child} is still running"
    );
    let (tx, _rx) = mpsc::unbounded();
    assert_eq!(
        d.prompt(&s, &run, "hello", tx).await.unwrap_err().class(),
        ErrorClass::NotFound
    );
}

#[tokio::test]
async fn dropping_the_driver_kills_its_agents() {
    let ws = Workspace::new();
    let d = driver();
    let s = within("start", d.start(&ws.start())).await.unwrap();
    let pid = d.process_id(&s).expect("a pid");
    assert!(alive(pid));
    drop(d);
    assert!(gone(pid).await, "the agent {pid} outlived its driver");
}

#[tokio::test]
async fn restore_injects_history_once() {
    let ws = Workspace::new();
    let d = driver();
    let s = within("start", d.start(&ws.start())).await.unwrap();
    let turns = vec![
        Turn {
            role: TurnRole::User,
            text: "the code word is marmalade".into(),
        },
        Turn {
            role: TurnRole::Assistant,
            text: "noted".into(),
        },
    ];
    assert_eq!(d.restore(&s, &turns).await.unwrap(), RestoreMode::Injected);
    assert_eq!(d.restore(&s, &turns).await.unwrap(), RestoreMode::Injected);
    let (outcome, updates) = prompt_all(&d, &s, script::RECALL).await;
    assert_eq!(
        reply_of(&updates),
        "you first said: the code word is marmalade"
    );
    // 5 + 1 words restored once, plus the 5 of the prompt.
    assert_eq!(outcome.usage.input_tokens, 11);
    // The history was handed over once, not again with the next prompt.
    let (outcome, _) = prompt_all(&d, &s, "ok").await;
    // ... + the 8 words of the reply + "ok".
    assert_eq!(outcome.usage.input_tokens, 11 + 8 + 1);
    d.stop(&s).await.unwrap();
}

#[tokio::test]
async fn unknown_sessions_bad_workspaces_and_missing_programs() {
    let ws = Workspace::new();
    let d = driver();
    let unknown = AgentSessionId("no-such-session".into());
    let (tx, _rx) = mpsc::unbounded();
    assert_eq!(
        d.prompt(&unknown, &run(), "hi", tx)
            .await
            .unwrap_err()
            .class(),
        ErrorClass::NotFound
    );
    assert_eq!(
        d.cancel(&unknown).await.unwrap_err().class(),
        ErrorClass::NotFound
    );
    assert_eq!(
        d.restore(&unknown, &[]).await.unwrap_err().class(),
        ErrorClass::NotFound
    );
    assert_eq!(
        d.stop(&unknown).await.unwrap_err().class(),
        ErrorClass::NotFound
    );
    let relative = AgentStart {
        workspace: "relative/dir".into(),
        ..ws.start()
    };
    assert_eq!(
        d.start(&relative).await.unwrap_err().class(),
        ErrorClass::Invalid
    );
    let missing = AcpAgentDriver::new(AcpConfig {
        program: "/nonexistent/agent-program".into(),
        args: vec![],
        env: vec![],
    });
    assert_eq!(
        missing.start(&ws.start()).await.unwrap_err().class(),
        ErrorClass::Unavailable
    );
    // A program that is not an ACP agent: it exits at once.
    let not_acp = AcpAgentDriver::new(AcpConfig {
        program: "true".into(),
        args: vec![],
        env: vec![],
    });
    let e = within("start", not_acp.start(&ws.start()))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Unavailable, "{e}");
}

// ----- the mapping, replayed from real OpenCode transcripts ------------------------------------

/// A transcript from `tests/fixtures/opencode-1.18.33/` (copied from `shared/fixtures`): its
/// JSON-RPC messages in order.
fn fixture(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/opencode-1.18.33")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|l| l.get("msg").cloned().filter(|m| !m.is_null()))
        .collect()
}

/// One prompt turn of a transcript: its `session/update` params and its answer.
struct ReplayTurn {
    updates: Vec<Value>,
    answer: Value,
}

fn turns_of(messages: &[Value]) -> Vec<ReplayTurn> {
    let mut turns = Vec::new();
    let mut current: Option<(Value, Vec<Value>)> = None;
    for m in messages {
        if m["method"] == "session/prompt" {
            current = Some((m["id"].clone(), Vec::new()));
        } else if m["method"] == "session/update" {
            if let Some((_, updates)) = current.as_mut() {
                updates.push(m["params"].clone());
            }
        } else if let Some((id, _)) = &current {
            if m["id"] == *id && m.get("result").is_some() {
                let (_, updates) = current.take().unwrap();
                turns.push(ReplayTurn {
                    updates,
                    answer: m["result"].clone(),
                });
            }
        }
    }
    turns
}

/// The mapped events of one turn, the way the driver maps them.
fn map_turn(turn: &ReplayTurn) -> Vec<Event> {
    let mut mapper = AcpUpdateMapper::new();
    let mut events = Vec::new();
    for params in &turn.updates {
        let n: agent_client_protocol::v1::schema::SessionNotification =
            serde_json::from_value(params.clone()).expect("a session/update the crate understands");
        events.extend(mapper.map(&n.update));
    }
    events.extend(mapper.finish());
    events
}

/// What the raw transcript says, read without the crate: the reply text, and per tool call its
/// creation title, merged raw input and completed text.
fn expected(turn: &ReplayTurn) -> (String, Vec<(String, String, Value, String)>) {
    let mut reply = String::new();
    let mut calls: Vec<(String, String, Value, String)> = Vec::new();
    for p in &turn.updates {
        let u = &p["update"];
        match u["sessionUpdate"].as_str().unwrap() {
            "agent_message_chunk" => reply.push_str(u["content"]["text"].as_str().unwrap()),
            "tool_call" => calls.push((
                u["toolCallId"].as_str().unwrap().into(),
                u["title"].as_str().unwrap().into(),
                u["rawInput"].clone(),
                String::new(),
            )),
            "tool_call_update" => {
                let call = calls
                    .iter_mut()
                    .find(|c| c.0 == u["toolCallId"])
                    .expect("an update of a known call");
                if let Some(input) = u["rawInput"].as_object() {
                    for (k, v) in input {
                        call.2[k] = v.clone();
                    }
                }
                if u["status"] == "completed" {
                    call.3 = u["content"][0]["content"]["text"].as_str().unwrap().into();
                }
            }
            _ => {}
        }
    }
    (reply, calls)
}

fn check_turn(turn: &ReplayTurn) -> Vec<Event> {
    let events = map_turn(turn);
    let (reply, calls) = expected(turn);
    let deltas: String = events
        .iter()
        .filter_map(|e| match e {
            Event::MessageDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, reply, "message deltas concatenate to the reply");
    for (acp_id, title, input, output) in calls {
        let call = events
            .iter()
            .position(
                |e| matches!(e, Event::ToolCall { call_id, .. } if call_id.as_str() == acp_id),
            )
            .unwrap_or_else(|| panic!("no tool_call for {acp_id}: {events:?}"));
        let result = events
            .iter()
            .position(
                |e| matches!(e, Event::ToolResult { call_id, .. } if call_id.as_str() == acp_id),
            )
            .unwrap_or_else(|| panic!("no tool_result for {acp_id}: {events:?}"));
        assert!(call < result);
        let Event::ToolCall {
            name, input: got, ..
        } = &events[call]
        else {
            unreachable!()
        };
        assert_eq!(name, &title);
        assert_eq!(got, &input);
        let Event::ToolResult {
            status,
            output: got,
            ..
        } = &events[result]
        else {
            unreachable!()
        };
        assert_eq!(*status, ToolStatus::Ok);
        assert_eq!(got, &json!(output));
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.type_name()).collect();
    assert!(
        kinds
            .iter()
            .all(|k| ["message.delta", "thought.delta", "tool_call", "tool_result"].contains(k)),
        "{kinds:?}"
    );
    events
}

#[test]
fn opencode_one_turn_with_bash_maps_to_events() {
    let turns = turns_of(&fixture("acp-one-turn-with-bash.jsonl"));
    assert_eq!(turns.len(), 1);
    let events = check_turn(&turns[0]);
    assert_eq!(
        events[0],
        Event::ToolCall {
            call_id: switchboard_core::CallId::parse("call_941f3146").unwrap(),
            name: "bash".into(),
            input: events_input(&events[0]),
        }
    );
    assert_eq!(
        events_input(&events[0])["command"],
        "echo journey-$((40+2))"
    );
    assert!(matches!(
        &events[1],
        Event::ToolResult { status: ToolStatus::Ok, output, .. } if output == "journey-42\n"
    ));
    let outcome = outcome_of_answer(&turns[0].answer);
    assert_eq!(outcome.status, TerminalStatus::Completed);
    assert_eq!(
        outcome.usage,
        Usage {
            input_tokens: 2004,
            output_tokens: 2
        }
    );
}

fn events_input(e: &Event) -> Value {
    match e {
        Event::ToolCall { input, .. } => input.clone(),
        other => panic!("not a tool call: {other:?}"),
    }
}

#[test]
fn opencode_two_turns_with_write_and_bash_map_to_events() {
    let turns = turns_of(&fixture("acp-two-turns-with-bash.jsonl"));
    assert_eq!(turns.len(), 3, "three prompts in the transcript");
    let mut names = Vec::new();
    for turn in &turns {
        let events = check_turn(turn);
        for e in &events {
            if let Event::ToolCall { name, input, .. } = e {
                names.push((name.clone(), input.clone()));
            }
        }
        assert_eq!(
            outcome_of_answer(&turn.answer).status,
            TerminalStatus::Completed
        );
    }
    assert_eq!(names[0].0, "write");
    assert_eq!(names[0].1["filePath"], "/workspace/hello.py");
    assert_eq!(names[2].0, "bash");
    assert_eq!(names[2].1["command"], "python3 hello.py");
    let last = map_turn(&turns[2]);
    assert!(last.iter().any(|e| matches!(
        e,
        Event::ToolResult { output, .. } if output == "journey\n"
    )));
    assert_eq!(
        outcome_of_answer(&turns[2].answer).usage,
        Usage {
            input_tokens: 7012,
            output_tokens: 7
        }
    );
}

#[tokio::test]
async fn cancel_answers_an_open_permission_request() {
    let ws = Workspace::new();
    let d = driver();
    let s = within("start", d.start(&ws.start())).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded();
    let run = run();
    let text = script::permission("bash");
    let turn = d.prompt(&s, &run, &text, tx);
    let control = async {
        let Some(AgentUpdate::Permission { request_id, .. }) =
            within("the permission update", rx.next()).await
        else {
            panic!("expected a permission update");
        };
        d.cancel(&s).await.unwrap();
        request_id
    };
    let (outcome, request_id) =
        within("the cancelled turn", async { tokio::join!(turn, control) }).await;
    assert_eq!(outcome.unwrap().status, TerminalStatus::Cancelled);
    assert_eq!(
        d.decide(&s, &request_id, PermissionDecision::AllowOnce)
            .await
            .unwrap_err()
            .class(),
        ErrorClass::NotFound,
        "the cancel answered the request"
    );
    let ran = rx
        .collect::<Vec<_>>()
        .await
        .iter()
        .any(|u| matches!(u, AgentUpdate::Event(Event::ToolCall { .. })));
    assert!(!ran, "a cancelled permission ran its tool");
    d.stop(&s).await.unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn a_program_named_opencode_gets_the_opencode_environment() {
    let ws = Workspace::new();
    let bin = Workspace::new();
    let opencode = bin.0.join("opencode");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_scripted-acp-agent"), &opencode).unwrap();
    let d = AcpAgentDriver::new(AcpConfig {
        program: opencode.to_string_lossy().into_owned(),
        args: vec!["acp".into()],
        env: vec![("OPENCODE_DISABLE_FFF".into(), "configured".into())],
    });
    let start = ws.start();
    let s = within("start", d.start(&start)).await.unwrap();
    let cmd = "printf '%s|%s|%s|%s' \"$OPENCODE_DISABLE_MODELS_FETCH\" \"$OPENCODE_DISABLE_FFF\" \
               \"$HOME\" \"${#OPENCODE_SERVER_PASSWORD}\"; echo; printf '%s' \"$OPENCODE_CONFIG_CONTENT\"";
    let (_, updates) = prompt_all(&d, &s, &script::tool(cmd)).await;
    let output = events(&updates)
        .into_iter()
        .find_map(|e| match e {
            Event::ToolResult { output, .. } => output.as_str().map(str::to_string),
            _ => None,
        })
        .expect("a tool result");
    let (vars, config) = output.split_once('\n').expect("two lines");
    let home = switchboard_adapters::acp_driver::opencode_home(&start.workspace).join("home");
    assert_eq!(
        vars,
        format!("1|configured|{}|32", home.display()),
        "the configured env wins"
    );
    assert!(home.is_dir(), "the private HOME was created");
    let config: Value = serde_json::from_str(config).unwrap();
    assert_eq!(config["model"], "local/scripted-1");
    assert_eq!(config["provider"]["local"]["options"]["apiKey"], "sk-test");
    d.stop(&s).await.unwrap();
    let agent_dirs = switchboard_adapters::acp_driver::opencode_home(&start.workspace);
    let _ = std::fs::remove_dir_all(&agent_dirs);
    // `<parent>/.switchboard-agent`, if no other agent keeps its dirs there.
    let _ = std::fs::remove_dir(agent_dirs.parent().unwrap());
}
