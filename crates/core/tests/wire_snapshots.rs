//! Wire-shape snapshots of every frame in PROTOCOL.md, with round-trips, a field-name check
//! transcribed from PROTOCOL.md, and refusals of malformed client and sandbox frames.
//!
//! The `covered_*` functions are exhaustive `match`es: a new variant does not compile until it is
//! given an example here (and therefore a snapshot).

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use switchboard_core::environment::detect_event;
use switchboard_core::protocol::client::ControlFrame;
use switchboard_core::protocol::*;
use switchboard_core::run::RunRecord;
use switchboard_core::{
    ApiKeyId, CallId, ClientMsgId, ModelRef, OrgId, RequestId, RunId, SandboxId, SessionId,
    Timestamp, UserId,
};

// ---------------------------------------------------------------- fixed values

/// 2026-01-02T03:04:05.678Z
const AT: Timestamp = Timestamp::from_millis(1_767_323_045_678);
const SEQ: u64 = 17;

fn at_plus(ms: u64) -> Timestamp {
    Timestamp::from_millis(AT.as_millis() + ms)
}
fn run_id() -> RunId {
    RunId::parse("run_0192f3a4").unwrap()
}
fn session_id() -> SessionId {
    SessionId::parse("ses_0192f3a0").unwrap()
}
fn request_id() -> RequestId {
    RequestId::parse("req_7").unwrap()
}
fn call_id() -> CallId {
    CallId::parse("call_3").unwrap()
}
fn model() -> ModelRef {
    ModelRef::parse("anthropic/claude-sonnet-4").unwrap()
}
fn usage() -> Usage {
    Usage {
        input_tokens: 1200,
        output_tokens: 345,
    }
}

fn envelope(event: Event) -> EventEnvelope {
    EventEnvelope {
        seq: SEQ,
        run_id: Some(run_id()),
        at: AT,
        critical: event.is_critical(),
        event,
    }
}

// ---------------------------------------------------------------- examples

/// One example (or more, for optional fields) of every event type, with a snapshot name.
fn events() -> Vec<(&'static str, Event)> {
    vec![
        (
            "session_status",
            Event::SessionStatus {
                status: SessionStatus::Ready,
            },
        ),
        (
            "session_status_terminal",
            Event::SessionStatus {
                status: SessionStatus::Closed,
            },
        ),
        (
            "sandbox_status",
            Event::SandboxStatus {
                status: SandboxStatus::Lost,
                reason: Some("heartbeat missed".into()),
            },
        ),
        (
            "sandbox_status_no_reason",
            Event::SandboxStatus {
                status: SandboxStatus::Connected,
                reason: None,
            },
        ),
        (
            "run_queued",
            Event::RunQueued {
                position: 1,
                text: "add a test for the parser".into(),
                client_msg_id: Some(ClientMsgId::parse("cm_42").unwrap()),
            },
        ),
        (
            "run_queued_no_client_msg_id",
            Event::RunQueued {
                position: 0,
                text: "hello".into(),
                client_msg_id: None,
            },
        ),
        ("run_started", Event::RunStarted {}),
        (
            "message_delta",
            Event::MessageDelta {
                text: "I'll start by".into(),
            },
        ),
        (
            "thought_delta",
            Event::ThoughtDelta {
                text: "The parser lives in".into(),
            },
        ),
        (
            "tool_call",
            Event::ToolCall {
                call_id: call_id(),
                name: "bash".into(),
                input: json!({"command": "cargo test"}),
            },
        ),
        (
            "tool_result",
            Event::ToolResult {
                call_id: call_id(),
                status: ToolStatus::Ok,
                output: json!({"exit_code": 0, "stdout": "test result: ok"}),
            },
        ),
        (
            "tool_result_error",
            Event::ToolResult {
                call_id: call_id(),
                status: ToolStatus::Error,
                output: json!("permission denied"),
            },
        ),
        (
            "plan",
            Event::Plan {
                entries: vec![
                    PlanEntry {
                        content: "read the parser".into(),
                        status: "completed".into(),
                    },
                    PlanEntry {
                        content: "write the test".into(),
                        status: "in_progress".into(),
                    },
                ],
            },
        ),
        (
            "permission_request",
            Event::PermissionRequest {
                request_id: request_id(),
                tool: "bash".into(),
                input: json!({"command": "rm -rf target"}),
                options: PermissionDecision::ALL.to_vec(),
                deadline: at_plus(60_000),
            },
        ),
        (
            "permission_resolved",
            Event::PermissionResolved {
                request_id: request_id(),
                decision: PermissionDecision::AllowOnce,
                by: DecidedBy::Client,
            },
        ),
        (
            "context_restored",
            Event::ContextRestored {
                from_seq: 41,
                turns: 6,
            },
        ),
        (
            "environment_detected",
            detect_event(&[
                "package.json".to_string(),
                "package-lock.json".to_string(),
                "src/index.ts".to_string(),
                "node_modules/left-pad/package.json".to_string(),
            ])
            .expect("npm is detected"),
        ),
        (
            "execution_complete",
            Event::ExecutionComplete {
                status: TerminalStatus::Completed,
                stop_reason: Some("end_turn".into()),
                usage: usage(),
                cost_micros: 8_775,
                error: None,
            },
        ),
        (
            "execution_complete_failed",
            Event::ExecutionComplete {
                status: TerminalStatus::Failed,
                stop_reason: None,
                usage: Usage::default(),
                cost_micros: 0,
                error: Some(ErrorBody::new(
                    "sandbox_lost",
                    "The sandbox stopped answering.",
                )),
            },
        ),
        (
            "error",
            Event::Error {
                code: "provider_unavailable".into(),
                message: "The model provider is unavailable.".into(),
            },
        ),
    ]
}

fn covered_event(e: &Event) -> &'static str {
    match e {
        Event::SessionStatus { .. } => "session.status",
        Event::SandboxStatus { .. } => "sandbox.status",
        Event::RunQueued { .. } => "run.queued",
        Event::RunStarted {} => "run.started",
        Event::MessageDelta { .. } => "message.delta",
        Event::ThoughtDelta { .. } => "thought.delta",
        Event::ToolCall { .. } => "tool_call",
        Event::ToolResult { .. } => "tool_result",
        Event::Plan { .. } => "plan",
        Event::PermissionRequest { .. } => "permission.request",
        Event::PermissionResolved { .. } => "permission.resolved",
        Event::ContextRestored { .. } => "context.restored",
        Event::EnvironmentDetected { .. } => "environment.detected",
        Event::ExecutionComplete { .. } => "execution_complete",
        Event::Error { .. } => "error",
    }
}

fn client_messages() -> Vec<(&'static str, ClientMessage)> {
    vec![
        (
            "prompt",
            ClientMessage::Prompt {
                text: "add a test for the parser".into(),
                client_msg_id: Some(ClientMsgId::parse("cm_42").unwrap()),
            },
        ),
        (
            "prompt_minimal",
            ClientMessage::Prompt {
                text: "hello".into(),
                client_msg_id: None,
            },
        ),
        (
            "cancel",
            ClientMessage::Cancel {
                run_id: Some(run_id()),
            },
        ),
        ("cancel_running", ClientMessage::Cancel { run_id: None }),
        ("ack", ClientMessage::Ack { seq: SEQ }),
        (
            "permission",
            ClientMessage::Permission {
                request_id: request_id(),
                decision: PermissionDecision::Deny,
            },
        ),
        ("ping", ClientMessage::Ping {}),
    ]
}

fn covered_client(m: &ClientMessage) -> &'static str {
    match m {
        ClientMessage::Prompt { .. } => "prompt",
        ClientMessage::Cancel { .. } => "cancel",
        ClientMessage::Ack { .. } => "ack",
        ClientMessage::Permission { .. } => "permission",
        ClientMessage::Ping {} => "ping",
    }
}

fn control_frames() -> Vec<(&'static str, ControlFrame)> {
    vec![
        (
            "hello",
            ControlFrame::Hello {
                session_id: session_id(),
                status: SessionStatus::Running,
                last_seq: 41,
            },
        ),
        ("pong", ControlFrame::Pong),
        (
            "error",
            ControlFrame::Error {
                code: "bad_frame".into(),
                message: "unknown frame type".into(),
            },
        ),
    ]
}

fn covered_control(f: &ControlFrame) -> &'static str {
    match f {
        ControlFrame::Hello { .. } => "hello",
        ControlFrame::Pong => "pong",
        ControlFrame::Error { .. } => "error",
    }
}

fn sandbox_messages() -> Vec<(&'static str, SandboxMessage)> {
    vec![
        (
            "hello",
            SandboxMessage::Hello {
                sandbox_id: SandboxId::parse("sb-5f2c").unwrap(),
                agent: "opencode".into(),
                agent_version: "0.9.1".into(),
            },
        ),
        (
            "event",
            SandboxMessage::Event {
                run_id: run_id(),
                n: 12,
                event: Event::MessageDelta {
                    text: "I'll start by".into(),
                },
            },
        ),
        (
            "run_finished",
            SandboxMessage::RunFinished {
                run_id: run_id(),
                n: 13,
                status: TerminalStatus::Completed,
                stop_reason: Some("end_turn".into()),
                usage: usage(),
                error: None,
            },
        ),
        (
            "run_finished_failed",
            SandboxMessage::RunFinished {
                run_id: run_id(),
                n: 14,
                status: TerminalStatus::Failed,
                stop_reason: None,
                usage: Usage::default(),
                error: Some(ErrorBody::new(
                    "agent_crashed",
                    "The agent exited with status 1.",
                )),
            },
        ),
        (
            "permission_request",
            SandboxMessage::PermissionRequest {
                run_id: run_id(),
                n: 15,
                request_id: request_id(),
                tool: "bash".into(),
                input: json!({"command": "rm -rf target"}),
            },
        ),
        (
            "workspace",
            SandboxMessage::Workspace {
                n: 1,
                files: vec!["Cargo.toml".into(), "src/main.rs".into()],
            },
        ),
        ("heartbeat", SandboxMessage::Heartbeat),
    ]
}

fn covered_sandbox(m: &SandboxMessage) -> &'static str {
    match m {
        SandboxMessage::Hello { .. } => "hello",
        SandboxMessage::Event { .. } => "event",
        SandboxMessage::RunFinished { .. } => "run_finished",
        SandboxMessage::PermissionRequest { .. } => "permission_request",
        SandboxMessage::Workspace { .. } => "workspace",
        SandboxMessage::Heartbeat => "heartbeat",
    }
}

fn server_to_sandbox() -> Vec<(&'static str, ServerToSandbox)> {
    vec![
        (
            "run",
            ServerToSandbox::Run {
                run_id: run_id(),
                text: "add a test for the parser".into(),
                model: model(),
                gateway: GatewayConfig {
                    base_url: "https://gateway.example/v1".into(),
                    api_key: Some("gw_run_0192f3a4".into()),
                    headers: BTreeMap::from([("x-switchboard-run".into(), "run_0192f3a4".into())]),
                },
            },
        ),
        (
            "run_minimal_gateway",
            ServerToSandbox::Run {
                run_id: run_id(),
                text: "hello".into(),
                model: ModelRef::parse("openrouter/meta-llama/llama-3-70b").unwrap(),
                gateway: GatewayConfig {
                    base_url: "https://gateway.example/v1".into(),
                    api_key: None,
                    headers: BTreeMap::new(),
                },
            },
        ),
        ("cancel", ServerToSandbox::Cancel { run_id: run_id() }),
        ("ack", ServerToSandbox::Ack { n: 13 }),
        (
            "permission",
            ServerToSandbox::Permission {
                request_id: request_id(),
                decision: PermissionDecision::AllowAlways,
            },
        ),
        (
            "restore",
            ServerToSandbox::Restore {
                turns: vec![
                    Turn {
                        role: TurnRole::User,
                        text: "what does the parser do?".into(),
                    },
                    Turn {
                        role: TurnRole::Assistant,
                        text: "It reads tokens.".into(),
                    },
                ],
            },
        ),
        ("shutdown", ServerToSandbox::Shutdown),
    ]
}

fn covered_server_to_sandbox(m: &ServerToSandbox) -> &'static str {
    match m {
        ServerToSandbox::Run { .. } => "run",
        ServerToSandbox::Cancel { .. } => "cancel",
        ServerToSandbox::Ack { .. } => "ack",
        ServerToSandbox::Permission { .. } => "permission",
        ServerToSandbox::Restore { .. } => "restore",
        ServerToSandbox::Shutdown => "shutdown",
    }
}

fn spawn_spec() -> SpawnSpec {
    SpawnSpec {
        session_key: "org_1:ses_0192f3a0".into(),
        callback_url: "wss://switchboard.example/sandbox/v1/sessions/org_1/ses_0192f3a0/ws".into(),
        token: "sbt_secret_token".into(),
        agent: "opencode".into(),
        repo: Some(RepoSpec {
            url: "https://github.com/example/app.git".into(),
            git_ref: Some("main".into()),
        }),
        env: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
        timeouts: SpawnTimeouts {
            idle_s: 600,
            max_s: 14_400,
        },
    }
}

fn spawn_spec_minimal() -> SpawnSpec {
    SpawnSpec {
        repo: None,
        env: BTreeMap::new(),
        ..spawn_spec()
    }
}

fn run_record() -> RunRecord {
    RunRecord {
        run_id: run_id(),
        session_id: session_id(),
        org_id: OrgId::parse("org_1").unwrap(),
        user_id: UserId::parse("usr_1").unwrap(),
        api_key_id: Some(ApiKeyId::parse("key_1").unwrap()),
        model: model(),
        provider: "anthropic".into(),
        status: TerminalStatus::Completed,
        queued_at: AT,
        started_at: Some(at_plus(250)),
        ended_at: at_plus(9_000),
        usage: usage(),
        cost_micros: 8_775,
        error: None,
        event_count: 2,
        events: vec![
            EventEnvelope {
                seq: 18,
                run_id: Some(run_id()),
                at: at_plus(250),
                critical: false,
                event: Event::RunStarted {},
            },
            EventEnvelope {
                seq: 19,
                run_id: Some(run_id()),
                at: at_plus(9_000),
                critical: true,
                event: Event::ExecutionComplete {
                    status: TerminalStatus::Completed,
                    stop_reason: Some("end_turn".into()),
                    usage: usage(),
                    cost_micros: 8_775,
                    error: None,
                },
            },
        ],
    }
}

fn run_record_cancelled_before_start() -> RunRecord {
    RunRecord {
        api_key_id: None,
        status: TerminalStatus::Cancelled,
        started_at: None,
        ended_at: at_plus(100),
        usage: Usage::default(),
        cost_micros: 0,
        error: Some(ErrorBody::new("cancelled", "Cancelled before it started.")),
        event_count: 0,
        events: Vec::new(),
        ..run_record()
    }
}

// ---------------------------------------------------------------- helpers

/// Serializes, deserializes, asserts equality, and hands back the JSON.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) -> Value {
    let text = serde_json::to_string(value).expect("serializes");
    let back: T =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text} does not parse back: {e}"));
    assert_eq!(&back, value, "round-trip of {text}");
    serde_json::from_str(&text).unwrap()
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("{v} is not an object"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// Asserts `required ⊆ keys(v) ⊆ required ∪ optional`.
fn assert_fields(what: &str, v: &Value, required: &[&str], optional: &[&str]) {
    let got = keys(v);
    for r in required {
        assert!(got.contains(r), "{what}: missing `{r}` in {v}");
    }
    for k in &got {
        assert!(
            required.contains(k) || optional.contains(k),
            "{what}: `{k}` is not a PROTOCOL.md field of this shape: {v}"
        );
    }
}

/// `(type, required, optional)` of each frame, transcribed from PROTOCOL.md. `type` itself is
/// required for every tagged frame and listed here.
type Shape = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

const EVENT_DATA: &[Shape] = &[
    ("session.status", &["status"], &[]),
    ("sandbox.status", &["status"], &["reason"]),
    ("run.queued", &["position", "text"], &["client_msg_id"]),
    ("run.started", &[], &[]),
    ("message.delta", &["text"], &[]),
    ("thought.delta", &["text"], &[]),
    ("tool_call", &["call_id", "name", "input"], &[]),
    ("tool_result", &["call_id", "status", "output"], &[]),
    ("plan", &["entries"], &[]),
    (
        "permission.request",
        &["request_id", "tool", "input", "options", "deadline"],
        &[],
    ),
    (
        "permission.resolved",
        &["request_id", "decision", "by"],
        &[],
    ),
    ("context.restored", &["from_seq", "turns"], &[]),
    (
        "environment.detected",
        &["package_manager", "file_count", "install"],
        &[],
    ),
    (
        "execution_complete",
        &["status", "usage", "cost_micros"],
        &["stop_reason", "error"],
    ),
    ("error", &["code", "message"], &[]),
];

const CLIENT: &[Shape] = &[
    ("prompt", &["type", "text"], &["client_msg_id"]),
    ("cancel", &["type"], &["run_id"]),
    ("ack", &["type", "seq"], &[]),
    ("permission", &["type", "request_id", "decision"], &[]),
    ("ping", &["type"], &[]),
];

const CONTROL: &[Shape] = &[
    ("hello", &["type", "session_id", "status", "last_seq"], &[]),
    ("pong", &["type"], &[]),
    ("error", &["type", "code", "message"], &[]),
];

const SANDBOX: &[Shape] = &[
    (
        "hello",
        &["type", "sandbox_id", "agent", "agent_version"],
        &[],
    ),
    ("event", &["type", "run_id", "n", "event"], &[]),
    (
        "run_finished",
        &["type", "run_id", "n", "status", "usage"],
        &["stop_reason", "error"],
    ),
    ("heartbeat", &["type"], &[]),
    (
        "permission_request",
        &["type", "run_id", "n", "request_id", "tool", "input"],
        &[],
    ),
    // Not in PROTOCOL.md (an extension): the workspace file list for autodiscovery.
    ("workspace", &["type", "n", "files"], &[]),
];

const TO_SANDBOX: &[Shape] = &[
    ("run", &["type", "run_id", "text", "model", "gateway"], &[]),
    ("cancel", &["type", "run_id"], &[]),
    ("ack", &["type", "n"], &[]),
    ("permission", &["type", "request_id", "decision"], &[]),
    ("restore", &["type", "turns"], &[]),
    ("shutdown", &["type"], &[]),
];

fn shape_of(table: &[Shape], ty: &str) -> Shape {
    *table
        .iter()
        .find(|(t, _, _)| *t == ty)
        .unwrap_or_else(|| panic!("type `{ty}` is not in PROTOCOL.md's table"))
}

fn assert_tagged(table: &[Shape], v: &Value) {
    let ty = v["type"]
        .as_str()
        .unwrap_or_else(|| panic!("no string `type` in {v}"));
    let (_, required, optional) = shape_of(table, ty);
    assert_fields(ty, v, required, optional);
}

fn assert_event_envelope(v: &Value) {
    assert_fields(
        "envelope",
        v,
        &["seq", "type", "at", "critical", "data"],
        &["run_id"],
    );
    let ty = v["type"].as_str().unwrap();
    let (_, required, optional) = shape_of(EVENT_DATA, ty);
    assert_fields(ty, &v["data"], required, optional);
    assert_eq!(
        v["at"],
        json!(Timestamp::parse_rfc3339(v["at"].as_str().unwrap())
            .unwrap()
            .to_rfc3339())
    );
}

fn names<'a>(it: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
    it.into_iter().collect()
}

// ---------------------------------------------------------------- snapshots + round-trips

#[test]
fn every_event_type_has_an_example() {
    let covered = names(events().iter().map(|(_, e)| covered_event(e)));
    assert_eq!(covered, names(EVENT_DATA.iter().map(|s| s.0)));
    for (_, e) in events() {
        assert_eq!(e.type_name(), covered_event(&e));
    }
}

#[test]
fn events_snapshot_and_round_trip() {
    for (name, event) in events() {
        let env = envelope(event.clone());
        let v = round_trip(&env);
        assert_event_envelope(&v);
        assert_eq!(v["type"], json!(event.type_name()));
        assert_eq!(v["critical"], json!(event.is_critical()));
        // The same envelope is also a valid server frame.
        let frame = ServerFrame::Event(env.clone());
        assert_eq!(round_trip(&frame), v);
        // And the bare event (as carried inside a sandbox `event` message).
        let bare = round_trip(&event);
        assert_eq!(keys(&bare), names(["type", "data"]));
        insta::assert_json_snapshot!(format!("event__{name}"), env);
    }
}

#[test]
fn envelope_without_run_id_omits_it() {
    let env = EventEnvelope {
        run_id: None,
        ..envelope(Event::SessionStatus {
            status: SessionStatus::Failed,
        })
    };
    let v = round_trip(&env);
    assert_event_envelope(&v);
    assert!(v.get("run_id").is_none());
    assert_eq!(
        v["critical"],
        json!(true),
        "a terminal session status is critical"
    );
    insta::assert_json_snapshot!("event__envelope_without_run_id", env);
}

#[test]
fn client_messages_snapshot_and_round_trip() {
    let examples = client_messages();
    assert_eq!(
        names(examples.iter().map(|(_, m)| covered_client(m))),
        names(CLIENT.iter().map(|s| s.0))
    );
    for (name, msg) in examples {
        let v = round_trip(&msg);
        assert_eq!(v["type"], json!(covered_client(&msg)));
        assert_tagged(CLIENT, &v);
        insta::assert_json_snapshot!(format!("client__{name}"), msg);
    }
}

#[test]
fn control_frames_snapshot_and_round_trip() {
    let examples = control_frames();
    assert_eq!(
        names(examples.iter().map(|(_, f)| covered_control(f))),
        names(CONTROL.iter().map(|s| s.0))
    );
    for (name, frame) in examples {
        let v = round_trip(&frame);
        assert_eq!(v["type"], json!(covered_control(&frame)));
        assert_tagged(CONTROL, &v);
        // Untagged `ServerFrame` must read a control frame back as a control frame, never as an
        // event (the `error` control frame shares its `type` with the `error` event).
        let as_server = ServerFrame::Control(frame.clone());
        assert_eq!(round_trip(&as_server), v);
        let parsed: ServerFrame = serde_json::from_value(v.clone()).unwrap();
        assert!(matches!(parsed, ServerFrame::Control(_)), "{v}");
        insta::assert_json_snapshot!(format!("control__{name}"), as_server);
    }
}

#[test]
fn error_event_and_error_control_frame_stay_distinguishable() {
    let event = round_trip(&ServerFrame::Event(envelope(Event::Error {
        code: "sandbox_lost".into(),
        message: "gone".into(),
    })));
    let parsed: ServerFrame = serde_json::from_value(event.clone()).unwrap();
    assert!(matches!(parsed, ServerFrame::Event(_)), "{event}");
}

#[test]
fn sandbox_messages_snapshot_and_round_trip() {
    let examples = sandbox_messages();
    assert_eq!(
        names(examples.iter().map(|(_, m)| covered_sandbox(m))),
        names(SANDBOX.iter().map(|s| s.0))
    );
    for (name, msg) in examples {
        let v = round_trip(&msg);
        assert_eq!(v["type"], json!(covered_sandbox(&msg)));
        assert_tagged(SANDBOX, &v);
        if let Some(event) = v.get("event") {
            assert_eq!(keys(event), names(["type", "data"]));
        }
        insta::assert_json_snapshot!(format!("sandbox__{name}"), msg);
    }
}

#[test]
fn server_to_sandbox_snapshot_and_round_trip() {
    let examples = server_to_sandbox();
    assert_eq!(
        names(examples.iter().map(|(_, m)| covered_server_to_sandbox(m))),
        names(TO_SANDBOX.iter().map(|s| s.0))
    );
    for (name, msg) in examples {
        let v = round_trip(&msg);
        assert_eq!(v["type"], json!(covered_server_to_sandbox(&msg)));
        assert_tagged(TO_SANDBOX, &v);
        if let Some(gateway) = v.get("gateway") {
            assert_fields("gateway", gateway, &["base_url"], &["api_key", "headers"]);
        }
        if let Some(turns) = v.get("turns") {
            for t in turns.as_array().unwrap() {
                assert_fields("turn", t, &["role", "text"], &[]);
            }
        }
        insta::assert_json_snapshot!(format!("to_sandbox__{name}"), msg);
    }
}

#[test]
fn spawn_spec_snapshot_and_round_trip() {
    for (name, spec) in [
        ("spawn_spec", spawn_spec()),
        ("spawn_spec_minimal", spawn_spec_minimal()),
    ] {
        let v = round_trip(&spec);
        assert_fields(
            name,
            &v,
            &[
                "session_key",
                "callback_url",
                "token",
                "agent",
                "env",
                "timeouts",
            ],
            &["repo"],
        );
        assert_fields("timeouts", &v["timeouts"], &["idle_s", "max_s"], &[]);
        if let Some(repo) = v.get("repo") {
            assert_fields("repo", repo, &["url"], &["ref"]);
        }
        insta::assert_json_snapshot!(name, spec);
    }
}

#[test]
fn spawn_spec_debug_never_shows_the_token() {
    let spec = spawn_spec();
    let debug = format!("{spec:?}");
    assert!(!debug.contains(&spec.token), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
}

const RUN_RECORD_REQUIRED: &[&str] = &[
    "run_id",
    "session_id",
    "org_id",
    "user_id",
    "api_key_id",
    "model",
    "provider",
    "status",
    "queued_at",
    "started_at",
    "ended_at",
    "usage",
    "cost_micros",
    "event_count",
];

#[test]
fn run_record_snapshot_and_round_trip() {
    for (name, record) in [
        ("run_record", run_record()),
        ("run_record_summary", run_record().summary()),
        (
            "run_record_cancelled_before_start",
            run_record_cancelled_before_start(),
        ),
    ] {
        let v = round_trip(&record);
        // `events` accompanies the record on `GET /v1/runs/{id}`.
        assert_fields(name, &v, RUN_RECORD_REQUIRED, &["error", "events"]);
        assert_fields(
            "usage",
            &v["usage"],
            &["input_tokens", "output_tokens"],
            &[],
        );
        for e in v["events"].as_array().into_iter().flatten() {
            assert_event_envelope(e);
        }
        insta::assert_json_snapshot!(name, record);
    }
}

// ---------------------------------------------------------------- malformed frames

fn parse_client(text: &str) -> Result<ClientMessage, serde_json::Error> {
    serde_json::from_str(text)
}

#[test]
fn every_example_client_frame_text_parses() {
    // The refusals below must be refusals of the mutation, not of the frame as a whole.
    for text in [
        r#"{"type":"prompt","text":"hi"}"#,
        r#"{"type":"prompt","text":"hi","client_msg_id":"cm_1"}"#,
        r#"{"type":"cancel"}"#,
        r#"{"type":"cancel","run_id":"run_1"}"#,
        r#"{"type":"ack","seq":0}"#,
        r#"{"type":"ack","seq":18446744073709551615}"#,
        r#"{"type":"permission","request_id":"req_1","decision":"allow_once"}"#,
        r#"{"type":"ping"}"#,
    ] {
        assert!(
            parse_client(text).is_ok(),
            "{text} should parse: {:?}",
            parse_client(text)
        );
    }
}

#[test]
fn malformed_client_frames_are_refused() {
    let cases: &[(&str, &str)] = &[
        // not an object / not JSON
        ("empty", ""),
        ("not json", "prompt hi"),
        ("array", r#"[{"type":"ping"}]"#),
        ("string", r#""ping""#),
        ("null", "null"),
        // the tag
        ("no type", r#"{"text":"hi"}"#),
        ("null type", r#"{"type":null}"#),
        ("numeric type", r#"{"type":1}"#),
        ("unknown type", r#"{"type":"shout","text":"hi"}"#),
        ("type is case-sensitive", r#"{"type":"Ping"}"#),
        (
            "event type is not a client frame",
            r#"{"type":"message.delta","text":"hi"}"#,
        ),
        ("server frame is not a client frame", r#"{"type":"pong"}"#),
        // missing fields
        ("prompt without text", r#"{"type":"prompt"}"#),
        (
            "prompt with only client_msg_id",
            r#"{"type":"prompt","client_msg_id":"cm_1"}"#,
        ),
        ("ack without seq", r#"{"type":"ack"}"#),
        (
            "permission without decision",
            r#"{"type":"permission","request_id":"req_1"}"#,
        ),
        (
            "permission without request_id",
            r#"{"type":"permission","decision":"deny"}"#,
        ),
        // wrong types and values
        ("text is a number", r#"{"type":"prompt","text":5}"#),
        ("text is null", r#"{"type":"prompt","text":null}"#),
        ("seq is a string", r#"{"type":"ack","seq":"17"}"#),
        ("seq is negative", r#"{"type":"ack","seq":-1}"#),
        ("seq is fractional", r#"{"type":"ack","seq":1.5}"#),
        (
            "seq overflows u64",
            r#"{"type":"ack","seq":18446744073709551616}"#,
        ),
        (
            "unknown decision",
            r#"{"type":"permission","request_id":"req_1","decision":"maybe"}"#,
        ),
        (
            "decision wrong case",
            r#"{"type":"permission","request_id":"req_1","decision":"Deny"}"#,
        ),
        ("run_id is a number", r#"{"type":"cancel","run_id":7}"#),
        (
            "run_id not an id",
            r#"{"type":"cancel","run_id":"run 1/../x"}"#,
        ),
        (
            "empty client_msg_id",
            r#"{"type":"prompt","text":"hi","client_msg_id":""}"#,
        ),
        (
            "request_id is an object",
            r#"{"type":"permission","request_id":{},"decision":"deny"}"#,
        ),
        // unknown fields (deny_unknown_fields)
        (
            "prompt with extra field",
            r#"{"type":"prompt","text":"hi","priority":1}"#,
        ),
        (
            "cancel with extra field",
            r#"{"type":"cancel","run_id":"run_1","force":true}"#,
        ),
        (
            "ack with extra field",
            r#"{"type":"ack","seq":1,"after":0}"#,
        ),
        ("ping with extra field", r#"{"type":"ping","x":1}"#),
        (
            "permission with extra field",
            r#"{"type":"permission","request_id":"req_1","decision":"deny","reason":"no"}"#,
        ),
        (
            "misspelt optional field",
            r#"{"type":"prompt","text":"hi","client_msg":"cm_1"}"#,
        ),
        ("duplicate field", r#"{"type":"ack","seq":1,"seq":2}"#),
        // trailing garbage
        ("two frames in one", r#"{"type":"ping"}{"type":"ping"}"#),
    ];
    for (name, text) in cases {
        let got = parse_client(text);
        assert!(got.is_err(), "{name}: {text} parsed as {got:?}");
    }
}

#[test]
fn malformed_sandbox_frames_are_refused() {
    let cases: &[(&str, &str)] = &[
        ("unknown type", r#"{"type":"hallo","sandbox_id":"sb-1"}"#),
        (
            "hello without agent_version",
            r#"{"type":"hello","sandbox_id":"sb-1","agent":"opencode"}"#,
        ),
        (
            "event with unknown event type",
            r#"{"type":"event","run_id":"run_1","n":1,"event":{"type":"nope","data":{}}}"#,
        ),
        (
            "event whose data does not fit its type",
            r#"{"type":"event","run_id":"run_1","n":1,"event":{"type":"message.delta","data":{"txt":"x"}}}"#,
        ),
        (
            "event without n",
            r#"{"type":"event","run_id":"run_1","event":{"type":"run.started","data":{}}}"#,
        ),
        (
            "run_finished with unknown status",
            r#"{"type":"run_finished","run_id":"run_1","n":2,"status":"done"}"#,
        ),
        ("negative n", r#"{"type":"workspace","n":-1,"files":[]}"#),
        (
            "files not strings",
            r#"{"type":"workspace","n":1,"files":[1]}"#,
        ),
    ];
    for (name, text) in cases {
        let got = serde_json::from_str::<SandboxMessage>(text);
        assert!(got.is_err(), "{name}: {text} parsed as {got:?}");
    }
    // The same frames with the defect removed parse.
    for text in [
        r#"{"type":"hello","sandbox_id":"sb-1","agent":"opencode","agent_version":"1"}"#,
        r#"{"type":"event","run_id":"run_1","n":1,"event":{"type":"message.delta","data":{"text":"x"}}}"#,
        r#"{"type":"run_finished","run_id":"run_1","n":2,"status":"completed"}"#,
        r#"{"type":"workspace","n":1,"files":["a"]}"#,
    ] {
        let got = serde_json::from_str::<SandboxMessage>(text);
        assert!(got.is_ok(), "{text}: {got:?}");
    }
}
