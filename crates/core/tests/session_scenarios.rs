//! Scenario tests of the session machine, driven through the deterministic world of
//! `common/mod.rs`. Each one asserts the facts that matter and snapshots the compact effect trace,
//! so that any change in what the machine does shows up in review.

mod common;

use common::*;
use std::time::Duration;
use switchboard_core::protocol::events::{
    DecidedBy, Event, PermissionDecision, SandboxStatus, SessionStatus, TerminalStatus,
};
use switchboard_core::protocol::sandbox::{SandboxMessage, ServerToSandbox, TurnRole};
use switchboard_core::session::*;
use switchboard_core::ErrorClass;

fn queued(result: Result<Accepted, Rejection>) -> (String, u32, bool) {
    match result {
        Ok(Accepted::Queued {
            run_id,
            position,
            duplicate,
        }) => (run_id.to_string(), position, duplicate),
        other => panic!("expected a queued prompt, got {other:?}"),
    }
}

fn rejected(result: Result<Accepted, Rejection>) -> (ErrorClass, &'static str) {
    match result {
        Err(rejection) => (rejection.class, rejection.code),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn happy_path() {
    let mut w = World::started(test_config());
    assert_eq!(w.session.status(), SessionStatus::Ready);
    assert_eq!(w.session.sandbox_status(), SandboxStatus::Connected);
    let watcher = w.attach(None);

    w.note("first prompt runs at once");
    assert_eq!(
        queued(w.prompt("r1", "list the files")),
        ("r1".into(), 0, false)
    );
    assert_eq!(w.session.status(), SessionStatus::Running);
    w.delta("r1", "Here are ");
    w.tool_call("r1", "call-1", "bash");
    w.tool_result("r1", "call-1");
    w.note("second prompt queues behind the first");
    assert_eq!(
        queued(w.prompt("r2", "now run the tests")),
        ("r2".into(), 1, false)
    );
    assert_eq!(w.session.queue_len(), 1);
    w.delta("r1", "the files.");
    w.finish("r1", TerminalStatus::Completed);
    assert_eq!(
        w.session.queue_len(),
        0,
        "r2 is dispatched as soon as r1 ends"
    );

    w.note("the watcher drops; events go on without it");
    let seen = w.clients[&watcher].stream();
    let last_seen = *seen.last().unwrap();
    w.detach(watcher);
    w.delta("r2", "All tests pass.");
    w.finish("r2", TerminalStatus::Completed);
    assert_eq!(w.session.status(), SessionStatus::Ready);

    w.note("it comes back with after = the last seq it saw");
    let back = w.attach(Some(last_seen));
    let expected: Vec<u64> = (last_seen + 1..=w.store.last_seq()).collect();
    assert_eq!(
        w.clients[&back].stream(),
        expected,
        "replay is exact: every later event once"
    );
    assert!(w.clients[&back]
        .received
        .iter()
        .all(|r| !matches!(r, Received::Event { via: Via::Live, .. })));
    let first: Vec<u64> = (1..=last_seen).collect();
    assert_eq!(
        seen, first,
        "the first connection saw everything from the start, in order"
    );

    // The un-ACKed execution_complete of r1 (seq <= after) is re-sent on attach; r2's came in the replay.
    let r1_complete = w
        .store
        .events
        .iter()
        .find(|e| e.critical && e.run_id == Some(run_id("r1")))
        .unwrap()
        .seq;
    assert_eq!(w.clients[&back].resends(), vec![vec![r1_complete]]);
    w.command(
        back,
        ClientCommand::Ack {
            seq: w.store.last_seq(),
        },
    )
    .unwrap();
    w.advance(Duration::from_secs(30));
    assert_eq!(
        w.clients[&back].resends().len(),
        1,
        "nothing is re-sent once ACKed"
    );

    // Ledger: one record per run, attributed, priced, with its events in seq order.
    assert_eq!(w.ledger.records.len(), 2);
    let r1 = &w.ledger.records[&run_id("r1")];
    assert_eq!(r1.status, TerminalStatus::Completed);
    assert_eq!(r1.provider, "anthropic");
    assert_eq!(r1.user_id.as_str(), "user-1");
    assert_eq!(r1.api_key_id.as_ref().map(|k| k.as_str()), Some("key-1"));
    assert_eq!(r1.cost_micros, PRICE.cost_micros(r1.usage));
    assert!(r1.cost_micros > 0);
    assert!(r1.started_at.is_some());
    let types: Vec<&str> = r1.events.iter().map(|e| e.event.type_name()).collect();
    assert_eq!(
        types,
        [
            "run.queued",
            "run.started",
            "message.delta",
            "tool_call",
            "tool_result",
            "message.delta",
            "execution_complete"
        ]
    );
    assert_eq!(r1.event_count, 7);
    assert!(r1.events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        w.store.outbox.is_empty(),
        "acknowledged records leave the outbox"
    );
    assert_eq!(
        w.sandbox_frames()
            .iter()
            .filter(|f| f.starts_with("run "))
            .count(),
        2
    );

    insta::assert_debug_snapshot!("session_happy_path", w.trace);
}

#[test]
fn cancel_queued_and_running() {
    let mut w = World::started(test_config());
    let watcher = w.attach(None);
    queued(w.prompt("r1", "refactor the parser"));
    w.delta("r1", "Working on it");
    assert_eq!(queued(w.prompt("r2", "then the lexer")).1, 1);
    assert_eq!(queued(w.prompt("r3", "then the docs")).1, 2);

    w.note("a queued run is removed and ends at once");
    w.cancel(Some("r2")).unwrap();
    assert_eq!(w.terminal_statuses()["r2"], vec![TerminalStatus::Cancelled]);
    let r2 = &w.ledger.records[&run_id("r2")];
    assert_eq!(r2.started_at, None);
    assert_eq!(r2.cost_micros, 0);
    let types: Vec<&str> = r2.events.iter().map(|e| e.event.type_name()).collect();
    assert_eq!(types, ["run.queued", "execution_complete"]);
    assert_eq!(w.session.queue_len(), 1);

    w.note("the running run is cancelled through the agent (default target)");
    w.command(watcher, ClientCommand::Cancel { run_id: None })
        .unwrap();
    assert!(w.sandbox_frames().contains(&"cancel r1".to_string()));
    assert_eq!(w.terminal_statuses()["r1"], vec![TerminalStatus::Cancelled]);
    assert_eq!(
        w.ledger.records[&run_id("r1")].usage.input_tokens,
        10,
        "usage reported by the agent is kept"
    );
    assert_eq!(w.session.status(), SessionStatus::Running, "r3 runs next");

    w.note("an agent that ignores the cancel: the run ends at the cancel grace");
    w.agent_obeys_cancel = false;
    w.cancel(Some("r3")).unwrap();
    w.cancel(Some("r3")).unwrap();
    assert!(!w.terminal_statuses().contains_key("r3"));
    w.advance(Duration::from_millis(4_999));
    assert!(!w.terminal_statuses().contains_key("r3"));
    w.advance(Duration::from_millis(1));
    assert_eq!(w.terminal_statuses()["r3"], vec![TerminalStatus::Cancelled]);
    let cancels = w
        .sandbox_frames()
        .iter()
        .filter(|f| *f == "cancel r3")
        .count();
    assert_eq!(cancels, 1, "a repeated cancel is not sent twice");

    w.note("nothing left to cancel");
    assert_eq!(
        rejected(w.cancel(None)),
        (ErrorClass::NotFound, "no_running_run")
    );
    assert_eq!(
        rejected(w.cancel(Some("r9"))),
        (ErrorClass::NotFound, "unknown_run")
    );
    assert_eq!(
        rejected(w.cancel(Some("r2"))),
        (ErrorClass::NotFound, "unknown_run")
    );
    assert_eq!(w.ledger.records.len(), 3);
    assert_eq!(w.session.status(), SessionStatus::Ready);

    insta::assert_debug_snapshot!("session_cancel_queued_and_running", w.trace);
}

#[test]
fn spawn_timeout_retries_then_fails_the_waiting_runs() {
    let mut w = World::new(test_config());
    w.spawn_script
        .extend([SpawnPlan::Silent, SpawnPlan::Silent]);
    w.input(Input::Start).unwrap();
    w.drive();
    queued(w.prompt("r1", "hello"));
    assert_eq!(w.session.status(), SessionStatus::Provisioning);

    w.note("attempt 1 does not dial back within 30s");
    w.advance(Duration::from_millis(29_999));
    assert_eq!(w.boxes.len(), 1);
    w.advance(Duration::from_millis(1));
    assert_eq!(
        w.boxes.len(),
        2,
        "a second attempt, with a new spawn number"
    );
    assert!(w.boxes[&1].terminated, "the silent box is terminated");
    assert_ne!(token_for(1), token_for(2));

    w.note("a late dial-back with the first token is refused");
    w.input(Input::SandboxConnect {
        conn: switchboard_core::ConnId(77),
        token_hash: token_for(1),
    })
    .unwrap();
    assert_eq!(w.audits.len(), 1);

    w.note("attempt 2 times out too: the waiting run fails");
    w.advance(Duration::from_secs(30));
    assert_eq!(w.terminal_statuses()["r1"], vec![TerminalStatus::Failed]);
    assert_eq!(w.run_error("r1").as_deref(), Some("sandbox_spawn_timeout"));
    assert_eq!(w.session.sandbox_status(), SandboxStatus::Terminated);
    assert_eq!(w.session.status(), SessionStatus::Ready);
    assert_eq!(w.session.poll_deadline().map(|d| d > w.now), Some(true));

    w.note("the next prompt spawns again, and this time the box dials back");
    queued(w.prompt("r2", "hello again"));
    assert_eq!(w.boxes.len(), 3);
    assert_eq!(w.session.status(), SessionStatus::Running);
    w.finish("r2", TerminalStatus::Completed);
    assert_eq!(w.terminal_statuses()["r2"], vec![TerminalStatus::Completed]);

    insta::assert_debug_snapshot!("session_spawn_timeout", w.trace);
}

#[test]
fn provider_error_counts_as_a_failed_attempt() {
    let mut w = World::new(test_config());
    w.spawn_script.extend([SpawnPlan::ProviderError]);
    w.input(Input::Start).unwrap();
    w.drive();
    assert_eq!(
        w.session.sandbox_status(),
        SandboxStatus::Connected,
        "the retry succeeded"
    );
    assert_eq!(w.session.status(), SessionStatus::Ready);

    w.note("a stale spawn answer for a box nobody waits for is terminated, not adopted");
    let stray = switchboard_core::SandboxId::parse("sb-stray").unwrap();
    w.input(Input::SpawnResult {
        spawn: 1,
        result: Ok(stray.clone()),
    })
    .unwrap();
    assert!(
        matches!(w.effects.last(), Some((_, Effect::TerminateSandbox { sandbox_id })) if *sandbox_id == stray)
    );
    w.input(Input::SandboxTokenIssued {
        spawn: 1,
        token_hash: token_for(1),
    })
    .unwrap();
    w.input(Input::SandboxConnect {
        conn: switchboard_core::ConnId(90),
        token_hash: token_for(1),
    })
    .unwrap();
    assert!(matches!(w.effects.last(), Some((_, Effect::Audit(_)))));

    w.note("both attempts failing: the provider error is the reason");
    let mut w = World::new(test_config());
    w.spawn_script
        .extend([SpawnPlan::ProviderError, SpawnPlan::ProviderError]);
    w.input(Input::Start).unwrap();
    queued(w.prompt("r1", "hi"));
    assert_eq!(w.run_error("r1").as_deref(), Some("sandbox_spawn_failed"));
    assert_eq!(w.session.status(), SessionStatus::Ready);
}

#[test]
fn run_idle_timeout() {
    let mut w = World::started(test_config());
    w.agent_obeys_cancel = false;
    queued(w.prompt("r1", "think hard"));
    w.delta("r1", "Hmm");
    w.advance(Duration::from_secs(59));
    w.note("a heartbeat is a sign of life");
    w.heartbeat();
    w.advance(Duration::from_secs(59));
    assert!(!w.terminal_statuses().contains_key("r1"));
    w.advance(Duration::from_secs(1));
    assert_eq!(w.terminal_statuses()["r1"], vec![TerminalStatus::TimedOut]);
    assert_eq!(w.run_error("r1").as_deref(), Some("run_idle_timeout"));
    assert!(w.sandbox_frames().contains(&"cancel r1".to_string()));
    assert_eq!(
        w.ledger.records[&run_id("r1")].status,
        TerminalStatus::TimedOut
    );
    assert_eq!(w.session.status(), SessionStatus::Ready);
    assert_eq!(w.session.sandbox_status(), SandboxStatus::Connected);

    w.note("late messages for the timed-out run are dropped but still ACKed");
    let before = w.store.last_seq();
    w.delta("r1", "too late");
    w.finish("r1", TerminalStatus::Completed);
    assert_eq!(w.store.last_seq(), before);
    assert!(w
        .sandbox_frames()
        .ends_with(&["ack 2".to_string(), "ack 3".to_string()]));

    insta::assert_debug_snapshot!("session_run_idle_timeout", w.trace);
}

#[test]
fn sandbox_loss_and_respawn_with_restore() {
    let mut w = World::started(test_config());
    queued(w.prompt("r1", "what is 2+2?"));
    w.delta("r1", "Four.");
    w.finish("r1", TerminalStatus::Completed);
    let r1_queued_seq = w.store.of_type("run.queued")[0].seq;
    queued(w.prompt("r2", "and 3+3?"));
    w.delta("r2", "Si");
    queued(w.prompt("r3", "and 4+4?"));

    w.note("the sandbox socket drops and does not come back within the grace");
    w.sandbox_drop();
    assert_eq!(
        w.session.sandbox_status(),
        SandboxStatus::Connected,
        "still in its reconnect grace"
    );
    w.advance(Duration::from_secs(10));
    assert_eq!(w.terminal_statuses()["r2"], vec![TerminalStatus::Failed]);
    assert_eq!(w.run_error("r2").as_deref(), Some("sandbox_lost"));
    assert!(w.boxes[&1].terminated);

    w.note("r3 gets a new sandbox, which is handed the conversation before its first run");
    assert_eq!(w.boxes.len(), 2);
    let frames = w.sandbox_frames();
    assert_eq!(frames[0], "restore 2 turns");
    assert_eq!(frames[1], "run r3");
    let restore = w.boxes[&2].received.iter().find_map(|m| match m {
        ServerToSandbox::Restore { turns } => Some(turns.clone()),
        _ => None,
    });
    let turns = restore.unwrap();
    assert_eq!(
        (turns[0].role, turns[0].text.as_str()),
        (TurnRole::User, "what is 2+2?")
    );
    assert_eq!(
        (turns[1].role, turns[1].text.as_str()),
        (TurnRole::Assistant, "Four.")
    );
    let restored = w.store.of_type("context.restored");
    assert_eq!(restored.len(), 1);
    assert_eq!(
        restored[0].event,
        Event::ContextRestored {
            from_seq: r1_queued_seq,
            turns: 2
        }
    );
    w.finish("r3", TerminalStatus::Completed);
    assert_eq!(w.ledger.records.len(), 3);

    w.note("the provider reports the new box gone: lost at once");
    queued(w.prompt("r4", "and 5+5?"));
    w.sandbox_exit("oom killed");
    assert_eq!(w.run_error("r4").as_deref(), Some("sandbox_lost"));
    assert_eq!(w.session.sandbox_status(), SandboxStatus::Lost);
    assert_eq!(
        w.boxes.len(),
        2,
        "nothing queued: no new sandbox until the next prompt"
    );

    insta::assert_debug_snapshot!("session_sandbox_loss_and_respawn", w.trace);
}

#[test]
fn sandbox_reconnects_within_grace_and_resends_unacked() {
    let mut w = World::started(test_config());
    queued(w.prompt("r1", "go"));
    w.delta("r1", "one ");
    w.note("the socket drops; a message written meanwhile waits in the sandbox");
    w.sandbox_drop();
    w.delta("r1", "two");
    w.advance(Duration::from_secs(5));
    w.sandbox_reconnect();
    assert_eq!(w.session.sandbox_status(), SandboxStatus::Connected);
    let deltas: Vec<String> = w
        .store
        .of_type("message.delta")
        .iter()
        .map(|e| format!("{:?}", e.event))
        .collect();
    assert_eq!(
        deltas.len(),
        2,
        "the resent message is applied once: {deltas:?}"
    );
    assert!(w
        .store
        .of_type("sandbox.status")
        .iter()
        .all(|e| !format!("{:?}", e.event).contains("Lost")));
    w.finish("r1", TerminalStatus::Completed);
    assert_eq!(w.terminal_statuses()["r1"], vec![TerminalStatus::Completed]);
    assert_eq!(
        w.store.of_type("context.restored").len(),
        0,
        "same sandbox: nothing to restore"
    );
}

#[test]
fn wrong_token_is_rejected_and_audited() {
    let mut w = World::started(test_config());
    let before = w.store.commits;
    let mut forged = token_for(1);
    forged.0[31] ^= 1;
    w.input(Input::SandboxConnect {
        conn: switchboard_core::ConnId(500),
        token_hash: forged,
    })
    .unwrap();
    assert_eq!(w.store.commits, before, "nothing changed");
    assert_eq!(w.audits.len(), 1);
    assert_eq!(
        w.audits[0].action,
        switchboard_core::audit::AuditAction::SandboxTokenRejected
    );
    assert_eq!(
        w.audits[0].outcome,
        switchboard_core::audit::AuditOutcome::Denied
    );
    assert_eq!(w.audits[0].target, "org-1:sess-1");
    assert_eq!(w.session.sandbox_status(), SandboxStatus::Connected);

    w.note("the right token on a new socket replaces the old one");
    w.sandbox_reconnect();
    assert!(w.trace.iter().any(|l| l.ends_with("close sandbox c1")));
    queued(w.prompt("r1", "still works"));
    w.finish("r1", TerminalStatus::Completed);
    assert_eq!(w.terminal_statuses()["r1"], vec![TerminalStatus::Completed]);

    w.note("messages on the replaced socket are ignored");
    let before = w.store.last_seq();
    w.input(Input::SandboxMessage {
        conn: switchboard_core::ConnId(1),
        message: SandboxMessage::Heartbeat,
    })
    .unwrap();
    assert_eq!(w.store.last_seq(), before);

    insta::assert_debug_snapshot!("session_wrong_token", w.trace);
}

#[test]
fn duplicate_sandbox_message_is_dropped_and_acked_again() {
    let mut w = World::started(test_config());
    queued(w.prompt("r1", "go"));
    w.delta("r1", "once");
    let events = w.store.events.len();
    w.note("the same message again (its ACK was lost)");
    w.resend_last_sandbox_message();
    assert_eq!(w.store.events.len(), events, "not applied twice");
    let acks = w.sandbox_frames().iter().filter(|f| *f == "ack 1").count();
    assert_eq!(acks, 2, "ACKed again");

    insta::assert_debug_snapshot!("session_duplicate_n", w.trace);
}

#[test]
fn duplicate_client_msg_id_is_queued_once() {
    let mut w = World::started(test_config());
    w.agent_obeys_cancel = false;
    assert_eq!(
        queued(w.prompt_with("r1", "build it", Some("m-1"))),
        ("r1".into(), 0, false)
    );
    assert_eq!(
        queued(w.prompt_with("r2", "test it", Some("m-2"))),
        ("r2".into(), 1, false)
    );
    let events = w.store.events.len();
    w.note("the client re-sends both prompts after a reconnect");
    assert_eq!(
        queued(w.prompt_with("r1-again", "build it", Some("m-1"))),
        ("r1".into(), 0, true)
    );
    assert_eq!(
        queued(w.prompt_with("r2-again", "test it", Some("m-2"))),
        ("r2".into(), 1, true)
    );
    assert_eq!(w.store.events.len(), events, "nothing new");

    w.note("the memory of client_msg_ids survives a restore");
    w.crash_and_restore();
    assert_eq!(
        queued(w.prompt_with("r2-third", "test it", Some("m-2"))),
        ("r2".into(), 1, true)
    );
    let msg_id = w.store.of_type("run.queued")[0].clone();
    assert!(
        matches!(msg_id.event, Event::RunQueued { client_msg_id: Some(ref id), .. } if id.as_str() == "m-1")
    );

    insta::assert_debug_snapshot!("session_duplicate_client_msg_id", w.trace);
}

#[test]
fn prompts_are_validated() {
    let mut w = World::started(test_config());
    assert_eq!(
        rejected(w.prompt("r0", "   ")),
        (ErrorClass::Invalid, "empty_prompt")
    );
    assert_eq!(
        rejected(w.prompt("r0", &"x".repeat(1001))),
        (ErrorClass::Invalid, "prompt_too_large")
    );
    queued(w.prompt("r0", &"x".repeat(1000)));
    for run in ["r1", "r2", "r3"] {
        queued(w.prompt(run, "queued"));
    }
    assert_eq!(w.session.queue_len(), 3);
    assert_eq!(
        rejected(w.prompt("r4", "one too many")),
        (ErrorClass::RateLimited, "queue_full")
    );
    assert_eq!(
        rejected(w.prompt("r3", "same run id")),
        (ErrorClass::RateLimited, "queue_full")
    );
    w.cancel(Some("r3")).unwrap();
    assert_eq!(
        rejected(w.prompt("r1", "same run id")),
        (ErrorClass::Conflict, "duplicate_run_id")
    );
    assert!(
        w.trace
            .iter()
            .all(|l| !l.contains("#") || !l.contains("r4")),
        "a rejected prompt leaves no event"
    );
}

#[test]
fn ledger_failure_is_retried_with_backoff() {
    let mut w = World::started(test_config());
    w.ledger.fail_next(5);
    queued(w.prompt("r1", "go"));
    w.finish("r1", TerminalStatus::Completed);
    assert_eq!(w.store.outbox.len(), 1, "the record waits in the outbox");
    w.advance(Duration::from_secs(60));
    let offsets: Vec<u64> = w
        .ledger
        .calls
        .iter()
        .map(|(at, _)| (at.as_millis() - T0.as_millis()) / 1000)
        .collect();
    assert_eq!(
        offsets,
        [0, 1, 3, 7, 15, 23],
        "1s, 2s, 4s, 8s, then capped at 8s"
    );
    assert!(w.store.outbox.is_empty());
    assert_eq!(w.ledger.records.len(), 1);
    assert!(
        w.ledger
            .calls
            .iter()
            .all(|(_, record)| *record == w.ledger.records[&run_id("r1")]),
        "always the same record"
    );

    insta::assert_debug_snapshot!("session_ledger_backoff", w.trace);
}

#[test]
fn hibernation() {
    let mut w = World::started(test_config());
    let watcher = w.attach(None);
    queued(w.prompt("r1", "go"));
    w.delta("r1", "done");
    w.finish("r1", TerminalStatus::Completed);
    w.detach(watcher);
    assert!(!w.session.is_hibernatable(), "the sandbox is still up");

    w.note("the idle sandbox is shut down after 120s");
    w.advance(Duration::from_secs(120));
    assert_eq!(w.session.sandbox_status(), SandboxStatus::Terminated);
    assert_eq!(
        &w.sandbox_frames()[w.sandbox_frames().len() - 1],
        "shutdown"
    );
    assert!(w.boxes[&1].terminated);
    assert!(w.session.is_hibernatable());
    assert_eq!(w.hibernations, 0);

    w.note("nothing live for 30s: hibernate, once");
    w.advance(Duration::from_secs(30));
    assert_eq!(w.hibernations, 1);
    assert_eq!(
        w.session.poll_deadline(),
        None,
        "nothing left to wake up for"
    );
    w.advance(Duration::from_secs(600));
    assert_eq!(w.hibernations, 1);

    w.note("the actor is rebuilt from the store; a prompt brings a sandbox back, with the conversation");
    w.crash_and_restore();
    queued(w.prompt("r2", "more"));
    assert_eq!(w.boxes.len(), 2);
    assert_eq!(w.sandbox_frames()[0], "restore 2 turns");
    w.finish("r2", TerminalStatus::Completed);
    w.advance(Duration::from_secs(150));
    assert_eq!(
        w.hibernations, 2,
        "re-armed once everything went quiet again"
    );

    insta::assert_debug_snapshot!("session_hibernation", w.trace);
}

#[test]
fn restore_from_snapshot_mid_run() {
    let mut w = World::started(test_config());
    queued(w.prompt("r1", "write a poem"));
    w.delta("r1", "Roses ");
    queued(w.prompt("r2", "another"));
    let watcher = w.attach(None);

    w.note("the process dies mid-run");
    w.crash_and_restore();
    assert_eq!(w.session.attached_clients(), 0);
    assert_eq!(w.session.status(), SessionStatus::Running);
    assert_eq!(w.session.queue_len(), 1);
    assert!(!w.clients[&watcher].attached);

    w.note("the sandbox dials back with its token and the run goes on");
    w.sandbox_reconnect();
    w.delta("r1", "are red.");
    w.finish("r1", TerminalStatus::Completed);
    let record = &w.ledger.records[&run_id("r1")];
    let types: Vec<&str> = record.events.iter().map(|e| e.event.type_name()).collect();
    assert_eq!(
        types,
        [
            "run.queued",
            "run.started",
            "message.delta",
            "message.delta",
            "execution_complete"
        ]
    );
    assert_eq!(
        record.cost_micros,
        PRICE.cost_micros(record.usage),
        "the price survived the restore"
    );
    assert_eq!(w.session.status(), SessionStatus::Running, "r2 runs next");

    w.note("a crash between the outbox write and the ledger's answer neither loses nor duplicates");
    w.ledger.fail_next(1);
    w.finish("r2", TerminalStatus::Completed);
    assert_eq!(w.store.outbox.len(), 1);
    w.crash_and_restore();
    w.sandbox_reconnect();
    assert!(w.store.outbox.is_empty());
    let calls = w
        .ledger
        .calls
        .iter()
        .filter(|(_, r)| r.run_id == run_id("r2"))
        .count();
    assert_eq!(calls, 2);
    assert_eq!(w.ledger.records.len(), 2);
    let r2_records: Vec<_> = w
        .ledger
        .calls
        .iter()
        .filter(|(_, r)| r.run_id == run_id("r2"))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(r2_records[0], r2_records[1]);

    w.note("a sandbox that does not come back after a restore is lost after the grace");
    queued(w.prompt("r3", "last"));
    w.crash_and_restore();
    w.advance(Duration::from_secs(10));
    assert_eq!(w.run_error("r3").as_deref(), Some("sandbox_lost"));

    insta::assert_debug_snapshot!("session_restore_mid_run", w.trace);
}

#[test]
fn unreadable_snapshots_are_corrupt() {
    let config = test_config();
    let persisted = |value: serde_json::Value| Persisted {
        snapshot: SessionSnapshot::from_value(&value),
        outbox: Vec::new(),
        active_run_events: Vec::new(),
    };
    for value in [
        serde_json::json!(null),
        serde_json::json!({"version": 1}),
        serde_json::json!({"version": 999}),
    ] {
        let error = Session::restore(T0, config.clone(), persisted(value)).unwrap_err();
        assert_eq!(error.class, ErrorClass::Corrupt);
    }
    let w = World::started(test_config());
    let mut snapshot = w.store.snapshot.clone().unwrap().to_value().unwrap();
    assert!(Session::restore(T0, config.clone(), persisted(snapshot.clone())).is_ok());
    snapshot["next_seq"] = serde_json::json!("many");
    assert_eq!(
        Session::restore(T0, config, persisted(snapshot))
            .unwrap_err()
            .class,
        ErrorClass::Corrupt
    );
}

#[test]
fn close() {
    let mut w = World::started(test_config());
    let watcher = w.attach(None);
    queued(w.prompt("r1", "long job"));
    queued(w.prompt("r2", "next job"));
    w.note("close while r1 runs and r2 waits");
    assert_eq!(w.input(Input::Close).unwrap(), Accepted::Done);
    w.drive();
    assert_eq!(w.terminal_statuses()["r1"], vec![TerminalStatus::Cancelled]);
    assert_eq!(w.terminal_statuses()["r2"], vec![TerminalStatus::Cancelled]);
    let frames = w.boxes[&1]
        .received
        .iter()
        .map(describe_to_sandbox)
        .collect::<Vec<_>>();
    assert!(
        frames.ends_with(&["cancel r1".to_string(), "shutdown".to_string()]),
        "{frames:?}"
    );
    assert!(w.boxes[&1].terminated);
    assert_eq!(w.session.status(), SessionStatus::Closed);
    assert_eq!(w.session.sandbox_status(), SandboxStatus::Terminated);
    let closed = w.store.events.last().unwrap();
    assert_eq!(
        closed.event,
        Event::SessionStatus {
            status: SessionStatus::Closed
        }
    );
    assert!(closed.critical);
    assert_eq!(w.ledger.records.len(), 2);

    w.note("a closed session takes no prompts; a second close does nothing");
    assert_eq!(
        rejected(w.prompt("r3", "hello?")),
        (ErrorClass::Conflict, "session_closed")
    );
    let effects = w.effects.len();
    assert_eq!(w.input(Input::Close).unwrap(), Accepted::Done);
    assert_eq!(w.effects.len(), effects);
    w.sandbox_reconnect();
    assert_eq!(w.session.sandbox_status(), SandboxStatus::Terminated);
    w.command(watcher, ClientCommand::Ping).unwrap();
    assert_eq!(w.clients[&watcher].received.last(), Some(&Received::Pong));
    w.detach(watcher);
    w.advance(Duration::from_secs(30));
    assert_eq!(w.hibernations, 1);

    insta::assert_debug_snapshot!("session_close", w.trace);
}

fn permission_config() -> SessionConfig {
    let mut config = test_config();
    config.permission_policy = PermissionPolicy {
        default: PermissionMode::Auto,
        per_tool: [
            ("bash".to_string(), PermissionMode::Ask),
            ("rm".to_string(), PermissionMode::Deny),
        ]
        .into(),
        ask_default: PermissionDecision::Deny,
    };
    config
}

fn resolutions(w: &World) -> Vec<(String, PermissionDecision, DecidedBy)> {
    w.store
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::PermissionResolved {
                request_id,
                decision,
                by,
            } => Some((request_id.to_string(), *decision, *by)),
            _ => None,
        })
        .collect()
}

#[test]
fn permissions_auto_deny_ask_and_timeout() {
    let mut w = World::started(permission_config());
    let watcher = w.attach(None);
    queued(w.prompt("r1", "tidy up"));

    w.note("auto and deny are decided by policy at once");
    w.ask_permission("r1", "q1", "read");
    w.ask_permission("r1", "q2", "rm");
    w.note("ask goes to the clients, who answer");
    w.ask_permission("r1", "q3", "bash");
    let request = w.store.of_type("permission.request")[0].clone();
    match &request.event {
        Event::PermissionRequest {
            options, deadline, ..
        } => {
            assert_eq!(options, &PermissionDecision::ALL.to_vec());
            assert_eq!(*deadline, w.now.add(Duration::from_secs(20)));
        }
        other => panic!("{other:?}"),
    }
    w.command(
        watcher,
        ClientCommand::Permission {
            request_id: request_id("q3"),
            decision: PermissionDecision::AllowAlways,
        },
    )
    .unwrap();
    w.note("nobody answers: the policy's default applies at the deadline");
    w.ask_permission("r1", "q4", "bash");
    w.advance(Duration::from_secs(20));
    w.note("answers to unknown or settled requests get an error frame and change nothing");
    let before = w.store.commits;
    w.command(
        watcher,
        ClientCommand::Permission {
            request_id: request_id("q4"),
            decision: ALLOW,
        },
    )
    .unwrap();
    assert_eq!(
        w.clients[&watcher].received.last(),
        Some(&Received::Error {
            code: "unknown_request".into()
        })
    );
    assert_eq!(w.store.commits, before);

    assert_eq!(
        resolutions(&w),
        vec![
            (
                "q1".into(),
                PermissionDecision::AllowOnce,
                DecidedBy::Policy
            ),
            ("q2".into(), PermissionDecision::Deny, DecidedBy::Policy),
            (
                "q3".into(),
                PermissionDecision::AllowAlways,
                DecidedBy::Client
            ),
            ("q4".into(), PermissionDecision::Deny, DecidedBy::Timeout),
        ]
    );
    let to_sandbox: Vec<String> = w
        .sandbox_frames()
        .into_iter()
        .filter(|f| f.starts_with("permission"))
        .collect();
    assert_eq!(
        to_sandbox,
        [
            "permission q1 allow_once",
            "permission q2 deny",
            "permission q3 allow_always",
            "permission q4 deny"
        ]
    );
    assert!(
        !w.terminal_statuses().contains_key("r1"),
        "the permission wait did not end the run"
    );
    w.finish("r1", TerminalStatus::Completed);
    let record = &w.ledger.records[&run_id("r1")];
    assert_eq!(
        record
            .events
            .iter()
            .filter(|e| e.event.type_name().starts_with("permission"))
            .count(),
        6
    );

    insta::assert_debug_snapshot!("session_permissions", w.trace);
}

#[test]
fn a_pending_ask_ends_with_its_run() {
    let mut w = World::started(permission_config());
    queued(w.prompt("r1", "go"));
    w.ask_permission("r1", "q1", "bash");
    w.cancel(None).unwrap();
    assert_eq!(w.terminal_statuses()["r1"], vec![TerminalStatus::Cancelled]);
    w.advance(Duration::from_secs(60));
    assert!(resolutions(&w).is_empty(), "the ask went with its run");
}

#[test]
fn critical_events_are_resent_until_acked() {
    let mut w = World::started(test_config());
    let watcher = w.attach(None);
    queued(w.prompt("r1", "go"));
    w.finish("r1", TerminalStatus::Failed);
    let critical = w.store.of_type("execution_complete")[0].seq;
    w.advance(Duration::from_secs(25));
    assert_eq!(
        w.clients[&watcher].resends(),
        vec![vec![critical], vec![critical]]
    );
    w.note("a second client ACKs: the event is delivered, for everyone");
    let other = w.attach(Some(critical));
    assert_eq!(w.clients[&other].resends(), vec![vec![critical]]);
    w.command(other, ClientCommand::Ack { seq: critical })
        .unwrap();
    w.advance(Duration::from_secs(60));
    assert_eq!(w.clients[&watcher].resends().len(), 2);
    assert_eq!(w.run_error("r1").as_deref(), Some("agent_error"));
}

#[test]
fn store_failure_evicts_without_writing_and_the_store_state_resumes() {
    let mut w = World::started(test_config());
    let watcher = w.attach(None);
    queued(w.prompt("r1", "go"));
    queued(w.prompt("r2", "queued"));
    let durable_before = w.store.last_seq();
    w.input(Input::StoreFailed {
        failure: PortFailure::new(ErrorClass::Unavailable, "disk full"),
    })
    .unwrap();
    w.drive();
    assert_eq!(w.evictions, 1, "the machine asks to be dropped");
    assert_eq!(
        w.store.last_seq(),
        durable_before,
        "nothing more is written"
    );
    assert!(
        w.ledger.records.is_empty(),
        "no ledger record of an outcome the store never saw"
    );
    assert!(
        w.clients[&watcher]
            .received
            .iter()
            .any(|r| matches!(r, Received::Error { code } if code == "store_unavailable")),
        "attached clients are told, outside the sequence"
    );
    assert_eq!(
        rejected(w.prompt("r3", "hello?")),
        (ErrorClass::Unavailable, "session_evicted")
    );
    assert_eq!(
        w.session.poll_deadline(),
        None,
        "an evicted machine arms no timer"
    );
    // The shell drops the actor; the next request rebuilds it from the last durable state.
    w.crash_and_restore();
    assert_eq!(w.session.last_seq(), durable_before);
    assert_eq!(
        w.session.queue_len() + usize::from(w.session.status() == SessionStatus::Running),
        2,
        "both runs are still there"
    );
    queued(w.prompt("r3", "after the store healed"));
}

#[test]
fn workspace_listing_announces_the_environment() {
    let mut w = World::started(test_config());
    w.sandbox_send(|n| SandboxMessage::Workspace {
        n,
        files: vec!["Cargo.toml".into(), "src/main.rs".into()],
    });
    w.drive();
    let detected = w.store.of_type("environment.detected");
    assert_eq!(detected.len(), 1);
    assert!(
        matches!(&detected[0].event, Event::EnvironmentDetected { package_manager, file_count: 2, .. } if package_manager == "cargo")
    );
    w.note("a workspace nothing can be made of announces nothing");
    w.sandbox_send(|n| SandboxMessage::Workspace {
        n,
        files: vec!["notes.txt".into()],
    });
    w.drive();
    assert_eq!(w.store.of_type("environment.detected").len(), 1);
}

#[test]
fn info_and_accessors() {
    let mut w = World::new(test_config());
    assert_eq!(w.session.created_at(), T0);
    assert_eq!(w.session.key().to_string(), "org-1:sess-1");
    w.input(Input::Start).unwrap();
    w.drive();
    queued(w.prompt("r1", "a"));
    queued(w.prompt("r2", "b"));
    let info = w.session.info();
    assert_eq!(info.status, SessionStatus::Running);
    assert_eq!(info.sandbox.status, SandboxStatus::Connected);
    assert_eq!(info.queue_length, 1);
    assert_eq!(info.last_seq, w.store.last_seq());
    assert_eq!(info.model.to_string(), "anthropic/claude-sonnet-4");
    assert_eq!(w.session.model().provider(), "anthropic");
    assert_eq!(w.session.attached_clients(), 0);
    let published = w.published.last().unwrap();
    assert_eq!(
        (published.status, published.sandbox),
        (SessionStatus::Running, SandboxStatus::Connected)
    );
}

#[test]
fn early_ticks_are_harmless() {
    let mut w = World::started(test_config());
    queued(w.prompt("r1", "go"));
    let effects = w.effects.len();
    for _ in 0..3 {
        w.input(Input::Tick).unwrap();
    }
    assert_eq!(w.effects.len(), effects);
}

#[test]
fn dispatch_failure_fails_the_run_and_the_queue_moves_on() {
    let mut w = World::started(test_config());
    w.dispatch_script.push_back(Err(PortFailure::new(
        ErrorClass::Unavailable,
        "no credential for anthropic",
    )));
    queued(w.prompt("r1", "first"));
    assert_eq!(w.run_error("r1").as_deref(), Some("dispatch_failed"));
    assert_eq!(w.session.status(), SessionStatus::Ready);
    queued(w.prompt("r2", "second"));
    assert_eq!(w.session.status(), SessionStatus::Running);
    w.finish("r2", TerminalStatus::Completed);
    assert_eq!(w.ledger.records.len(), 2);
}

#[test]
fn no_run_outlives_the_sandbox_lifetime() {
    let mut config = test_config();
    config.sandbox_max_s = 300;
    let mut w = World::started(config);
    queued(w.prompt("r1", "loop forever"));
    for _ in 0..5 {
        w.advance(Duration::from_secs(50));
        w.heartbeat();
    }
    assert!(!w.terminal_statuses().contains_key("r1"));
    w.advance(Duration::from_secs(50));
    assert_eq!(w.terminal_statuses()["r1"], vec![TerminalStatus::TimedOut]);
    assert_eq!(w.run_error("r1").as_deref(), Some("run_max_duration"));
}

#[test]
fn decisions_made_while_the_sandbox_reconnects_reach_it_on_reconnect() {
    let mut w = World::started(permission_config());
    let watcher = w.attach(None);
    queued(w.prompt("r1", "go"));
    w.ask_permission("r1", "q1", "bash");
    w.sandbox_drop();
    w.command(
        watcher,
        ClientCommand::Permission {
            request_id: request_id("q1"),
            decision: ALLOW,
        },
    )
    .unwrap();
    assert!(!w
        .sandbox_frames()
        .contains(&"permission q1 allow_once".to_string()));
    w.sandbox_reconnect();
    assert!(w
        .sandbox_frames()
        .contains(&"permission q1 allow_once".to_string()));
    w.finish("r1", TerminalStatus::Completed);
    assert_eq!(w.terminal_statuses()["r1"], vec![TerminalStatus::Completed]);
}

#[test]
fn non_agent_events_from_the_sandbox_are_dropped_but_acked() {
    let mut w = World::started(test_config());
    queued(w.prompt("r1", "go"));
    let before = w.store.last_seq();
    let run = run_id("r1");
    w.sandbox_send(|n| SandboxMessage::Event {
        run_id: run,
        n,
        event: Event::Error {
            code: "spoofed".into(),
            message: "not the agent's to say".into(),
        },
    });
    w.drive();
    assert_eq!(w.store.last_seq(), before);
    assert_eq!(w.sandbox_frames().last().map(String::as_str), Some("ack 1"));
}

#[test]
fn a_prompt_before_start_starts_the_session() {
    let mut w = World::new(test_config());
    queued(w.prompt("r1", "hello"));
    assert_eq!(w.boxes.len(), 1);
    assert_eq!(w.session.status(), SessionStatus::Running);
    w.input(Input::Start).unwrap();
    w.drive();
    assert_eq!(w.boxes.len(), 1, "start after the fact spawns nothing more");
}
