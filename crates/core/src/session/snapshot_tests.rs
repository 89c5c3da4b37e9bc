//! Tests of the snapshot text: the machine writes the JSON that the earlier `serde_json::Value`
//! path wrote (same object, same bytes where serde_json keeps key order), reads snapshots of that
//! path back to the same machine, and writes a snapshot only when the state's text changed.

use super::machine::Session;
use super::types::*;
use crate::crypto::TokenHash;
use crate::ids::{ApiKeyId, ClientMsgId, ConnId, OrgId, RequestId, RunId, SandboxId, SessionId};
use crate::model::ModelRef;
use crate::protocol::events::{Event, EventEnvelope, PermissionDecision, TerminalStatus, Usage};
use crate::protocol::sandbox::SandboxMessage;
use crate::run::Price;
use crate::tenancy::{Principal, Scope};
use crate::time::Timestamp;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);
const SANDBOX: ConnId = ConnId(1);
const CLIENT: ConnId = ConnId(2);

fn run_id(name: &str) -> RunId {
    RunId::parse(name).unwrap()
}

/// A session with every part of its state in use: a finished run (conversation, outbox record,
/// un-ACKed critical events, remembered prompts), a run in flight waiting on a permission
/// answer, a queued run, its own permission policy. Returns it with every event it committed.
fn busy_session() -> (Session, Vec<EventEnvelope>) {
    let principal = Principal::from_verified_credential(
        OrgId::parse("org-1").unwrap(),
        crate::ids::UserId::parse("user-1").unwrap(),
        Some(ApiKeyId::parse("key-1").unwrap()),
        Scope::MEMBER.to_vec(),
    );
    let init = SessionInit {
        key: principal
            .tenant()
            .session(SessionId::parse("sess-1").unwrap()),
        model: ModelRef::parse("anthropic/claude-sonnet-4").unwrap(),
        agent: "opencode".into(),
        repo: None,
        created_by: principal.attribution(),
        permissions: Some(PermissionPolicy {
            default: PermissionMode::Auto,
            per_tool: BTreeMap::from([("bash".to_string(), PermissionMode::Ask)]),
            ask_default: PermissionDecision::Deny,
        }),
    };
    let mut session = Session::new(T0, SessionConfig::default(), init);
    let mut events = Vec::new();
    let mut now = T0;
    let token_hash = TokenHash([7; 32]);
    let price = Price {
        input_per_mtok_micros: 3_000_000,
        output_per_mtok_micros: 15_000_000,
    };
    let prompt = |run: &str, text: &str| Input::Prompt {
        run_id: run_id(run),
        by: principal.attribution(),
        text: text.into(),
        client_msg_id: Some(ClientMsgId::parse(format!("msg-{run}")).unwrap()),
        conn: Some(CLIENT),
    };
    let delta = |run: &str, n: u64, text: &str| Input::SandboxMessage {
        conn: SANDBOX,
        message: SandboxMessage::Event {
            run_id: run_id(run),
            n,
            event: Event::MessageDelta { text: text.into() },
        },
    };
    let inputs = vec![
        Input::Start,
        Input::SandboxTokenIssued {
            spawn: 1,
            token_hash: token_hash.clone(),
        },
        Input::SpawnResult {
            spawn: 1,
            result: Ok(SandboxId::parse("sbx-1").unwrap()),
        },
        Input::SandboxConnect {
            conn: SANDBOX,
            token_hash,
        },
        Input::SandboxMessage {
            conn: SANDBOX,
            message: SandboxMessage::Hello {
                sandbox_id: SandboxId::parse("sbx-1").unwrap(),
                agent: "opencode".into(),
                agent_version: "1.0.0".into(),
            },
        },
        Input::ClientAttached {
            conn: CLIENT,
            after: None,
        },
        prompt("r1", "list the files"),
        Input::DispatchResult {
            run_id: run_id("r1"),
            result: Ok(Some(price)),
        },
        delta("r1", 1, "Cargo.toml and "),
        delta("r1", 2, "src/"),
        Input::SandboxMessage {
            conn: SANDBOX,
            message: SandboxMessage::RunFinished {
                run_id: run_id("r1"),
                n: 3,
                status: TerminalStatus::Completed,
                stop_reason: Some("end_turn".into()),
                usage: Usage {
                    input_tokens: 1200,
                    output_tokens: 300,
                },
                error: None,
            },
        },
        prompt("r2", "run the tests"),
        Input::DispatchResult {
            run_id: run_id("r2"),
            result: Ok(Some(price)),
        },
        delta("r2", 4, "running \"cargo test\"…"),
        Input::SandboxMessage {
            conn: SANDBOX,
            message: SandboxMessage::PermissionRequest {
                run_id: run_id("r2"),
                n: 5,
                request_id: RequestId::parse("perm-1").unwrap(),
                tool: "bash".into(),
                input: serde_json::json!({"command": "cargo test", "timeout": 1.5}),
            },
        },
        prompt("r3", "then commit"),
    ];
    for input in inputs {
        now = now.add(Duration::from_millis(250));
        session.handle(now, input).expect("the machine takes it");
        while let Some(effect) = session.poll_effect() {
            if let Effect::Persist(commit) = effect {
                events.extend(commit.events);
            }
        }
    }
    (session, events)
}

fn restore(snapshot: SessionSnapshot, events: &[EventEnvelope]) -> Session {
    let persisted = Persisted {
        snapshot,
        outbox: Vec::new(),
        active_run_events: events.to_vec(),
    };
    Session::restore(
        T0.add(Duration::from_secs(60)),
        SessionConfig::default(),
        persisted,
    )
    .expect("the snapshot restores")
}

/// Whether this build's `serde_json::Map` keeps keys in insertion order (`preserve_order`).
fn maps_keep_insertion_order() -> bool {
    let mut map = serde_json::Map::new();
    map.insert("b".into(), Value::Null);
    map.insert("a".into(), Value::Null);
    map.keys().next().map(String::as_str) == Some("b")
}

#[test]
fn the_snapshot_is_the_json_the_value_path_wrote() {
    let (mut session, _) = busy_session();
    let written = session
        .live
        .persisted_snapshot
        .clone()
        .expect("a snapshot was written");
    let value_path = serde_json::to_value(&session.state).unwrap();
    let value_path_text = serde_json::to_string(&value_path).unwrap();

    for field in [
        "queue",
        "unacked",
        "recent_prompts",
        "conversation",
        "permission_asks",
    ] {
        assert!(
            value_path[field].as_array().is_some_and(|a| !a.is_empty()),
            "the test state has something in {field}: {value_path}"
        );
    }
    assert!(value_path["in_flight"].is_object());
    assert!(value_path["permissions"].is_object());

    assert_eq!(
        written.to_value().unwrap(),
        value_path,
        "the same JSON object"
    );
    if maps_keep_insertion_order() {
        // The server's build: what the Value path stored, byte for byte.
        assert_eq!(written.as_str(), value_path_text);
    } else {
        // Keys in declaration order here, where the Value path sorted them.
        assert_eq!(written.to_value().unwrap().to_string(), value_path_text);
    }
    assert_eq!(
        session.changed_snapshot(),
        None,
        "an unchanged state writes no snapshot"
    );
}

#[test]
fn a_snapshot_of_the_value_path_restores_the_same_session() {
    let (session, events) = busy_session();
    let written = session.live.persisted_snapshot.clone().unwrap();
    // What the earlier code stored: a `serde_json::Value` of the state, printed.
    let value_path = SessionSnapshot::from_value(&serde_json::to_value(&session.state).unwrap());

    assert_eq!(
        Session::active_run_first_seq(&value_path),
        Session::active_run_first_seq(&written)
    );
    assert!(Session::active_run_first_seq(&written).is_some());

    let from_value_path = restore(value_path, &events);
    let from_text = restore(written, &events);
    assert_eq!(
        serde_json::to_string(&from_value_path.state).unwrap(),
        serde_json::to_string(&from_text.state).unwrap()
    );
    assert_eq!(from_value_path.info(), from_text.info());
    let in_flight = |s: &Session| {
        let run = s.state.in_flight.as_ref().expect("a run in flight");
        (run.events.clone(), run.reply.clone())
    };
    assert_eq!(in_flight(&from_value_path), in_flight(&from_text));
    assert_eq!(in_flight(&from_text).1, "running \"cargo test\"…");
}

#[test]
fn a_snapshot_is_written_when_the_state_changed_and_only_then() {
    let (mut session, _) = busy_session();
    let before = session.live.persisted_snapshot.clone().unwrap();
    session
        .handle(
            T0.add(Duration::from_secs(10)),
            Input::SandboxMessage {
                conn: SANDBOX,
                message: SandboxMessage::Heartbeat,
            },
        )
        .unwrap();
    let persisted: Vec<Commit> = std::iter::from_fn(|| session.poll_effect())
        .filter_map(|effect| match effect {
            Effect::Persist(commit) => Some(commit),
            _ => None,
        })
        .collect();
    assert!(persisted.is_empty(), "a heartbeat changes nothing durable");

    session
        .handle(
            T0.add(Duration::from_secs(11)),
            Input::ClientCommand {
                conn: CLIENT,
                command: ClientCommand::Permission {
                    request_id: RequestId::parse("perm-1").unwrap(),
                    decision: PermissionDecision::AllowOnce,
                },
            },
        )
        .unwrap();
    let Some(Effect::Persist(commit)) = session.poll_effect() else {
        panic!("an answered permission request is persisted first");
    };
    let snapshot = commit.snapshot.expect("the answer changed the state");
    assert_ne!(snapshot, before);
    assert_eq!(
        snapshot.to_value().unwrap(),
        serde_json::to_value(&session.state).unwrap()
    );
    assert_eq!(session.live.persisted_snapshot, Some(snapshot));
}

#[test]
fn coalesced_steps_share_one_snapshot_of_the_last_state() {
    let (mut session, _) = busy_session();
    let before = session.live.persisted_snapshot.clone().unwrap();
    let at = |s: u64| T0.add(Duration::from_secs(20 + s));
    session.begin_coalescing();
    let mut persists = 0;
    for (i, input) in [
        Input::SandboxMessage {
            conn: SANDBOX,
            message: SandboxMessage::Event {
                run_id: run_id("r2"),
                n: 6,
                event: Event::MessageDelta { text: "ok".into() },
            },
        },
        Input::SandboxMessage {
            conn: SANDBOX,
            message: SandboxMessage::Heartbeat,
        },
        Input::SandboxMessage {
            conn: SANDBOX,
            message: SandboxMessage::Event {
                run_id: run_id("r2"),
                n: 7,
                event: Event::MessageDelta { text: "!".into() },
            },
        },
    ]
    .into_iter()
    .enumerate()
    {
        session.handle(at(i as u64), input).unwrap();
        let effects: Vec<Effect> = std::iter::from_fn(|| session.poll_effect()).collect();
        let Some(Effect::Persist(commit)) = effects.first() else {
            panic!("every coalesced step begins with a Persist: {effects:?}");
        };
        assert_eq!(commit.snapshot, None, "the snapshot waits for the end");
        assert_eq!(
            effects
                .iter()
                .filter(|e| matches!(e, Effect::Persist(_)))
                .count(),
            1
        );
        persists += 1;
    }
    assert_eq!(
        persists, 3,
        "even the heartbeat's step holds back what follows it"
    );
    assert_eq!(
        session.live.persisted_snapshot.as_ref(),
        Some(&before),
        "nothing was serialized during the run"
    );

    let snapshot = session
        .end_coalescing()
        .expect("the deltas moved the state");
    assert_eq!(
        snapshot.to_value().unwrap(),
        serde_json::to_value(&session.state).unwrap()
    );
    assert_eq!(snapshot.to_value().unwrap()["sandbox"]["last_n"], 7);
    assert_eq!(session.end_coalescing(), None, "nothing changed since");

    session
        .handle(
            at(10),
            Input::SandboxMessage {
                conn: SANDBOX,
                message: SandboxMessage::Heartbeat,
            },
        )
        .unwrap();
    assert_eq!(
        session.poll_effect(),
        None,
        "outside a coalesced run, a step that changes nothing persists nothing"
    );
}
