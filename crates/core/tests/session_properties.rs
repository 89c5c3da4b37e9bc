//! State-machine property tests of the session machine: random interleavings of prompts, cancels,
//! ACKs, client attach/detach, sandbox trouble, duplicate sandbox messages, ledger failures,
//! crashes with restore and time jumps, checked against a small reference model.
//!
//! Checked after every action: seqs strictly increase without gap (the simulated store refuses a
//! gap), every delivered event was durable first, at most one `execution_complete` per run, and
//! prompt/cancel answers have the documented classes. Checked at the end: every client connection
//! received exactly the events after its `after`, once, in order; at most one run was ever in
//! flight; once time has run past every timeout, every run is terminal exactly once; every
//! terminal run has exactly one ledger record (when the ledger recovers), always the same one;
//! un-ACKed critical events are re-sent, and only those.
//!
//! A failing case prints its seed and the shrunk list of actions; the world's own checks print
//! the tail of the effect trace.

mod common;

use common::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use switchboard_core::protocol::events::{Event, PermissionDecision, TerminalStatus};
use switchboard_core::protocol::sandbox::SandboxMessage;
use switchboard_core::session::*;
use switchboard_core::{ConnId, ErrorClass, RunId};

#[derive(Debug, Clone)]
enum Action {
    /// A prompt; `msg` picks a client_msg_id from a small pool so that re-sends happen.
    Prompt {
        msg: Option<u8>,
    },
    /// Cancel a run picked among those accepted so far (or an unknown one).
    Cancel {
        pick: u8,
    },
    /// Cancel without a run id.
    CancelDefault,
    /// A client attaches with `after` picked in `0..=last_seq + 2`, or without `after`.
    Attach {
        after: Option<u8>,
    },
    Detach {
        pick: u8,
    },
    /// An attached client ACKs a seq picked in `0..=last_seq + 2`.
    Ack {
        pick: u8,
        seq: u8,
    },
    AgentDelta,
    AgentFinish {
        status: TerminalStatus,
    },
    /// The agent asks for a tool: `bash` is asked of clients, `read` is allowed by policy.
    AgentPermission {
        ask: bool,
    },
    AnswerPermission {
        pick: u8,
    },
    Heartbeat,
    SandboxDrop,
    SandboxReconnect,
    SandboxExit,
    DuplicateSandboxMessage,
    LedgerFails {
        times: u8,
    },
    SpawnTrouble {
        plan: SpawnPlan,
    },
    Restore,
    /// The store fails: the machine evicts itself, writing nothing, and is rebuilt from the store.
    StoreFails,
    Advance {
        ms: u32,
    },
    Close,
}

fn terminal_status() -> impl Strategy<Value = TerminalStatus> {
    prop_oneof![
        4 => Just(TerminalStatus::Completed),
        1 => Just(TerminalStatus::Failed),
        1 => Just(TerminalStatus::Cancelled),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => proptest::option::of(0u8..4).prop_map(|msg| Action::Prompt { msg }),
        2 => any::<u8>().prop_map(|pick| Action::Cancel { pick }),
        1 => Just(Action::CancelDefault),
        3 => proptest::option::of(any::<u8>()).prop_map(|after| Action::Attach { after }),
        2 => any::<u8>().prop_map(|pick| Action::Detach { pick }),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(pick, seq)| Action::Ack { pick, seq }),
        5 => Just(Action::AgentDelta),
        4 => terminal_status().prop_map(|status| Action::AgentFinish { status }),
        2 => any::<bool>().prop_map(|ask| Action::AgentPermission { ask }),
        1 => any::<u8>().prop_map(|pick| Action::AnswerPermission { pick }),
        1 => Just(Action::Heartbeat),
        2 => Just(Action::SandboxDrop),
        2 => Just(Action::SandboxReconnect),
        1 => Just(Action::SandboxExit),
        2 => Just(Action::DuplicateSandboxMessage),
        1 => (1u8..4).prop_map(|times| Action::LedgerFails { times }),
        1 => prop_oneof![Just(SpawnPlan::Silent), Just(SpawnPlan::ProviderError)].prop_map(|plan| Action::SpawnTrouble { plan }),
        2 => Just(Action::Restore),
        1 => Just(Action::StoreFails),
        4 => prop_oneof![0u32..5_000, 5_000u32..70_000, 70_000u32..200_000].prop_map(|ms| Action::Advance { ms }),
        1 => Just(Action::Close),
    ]
}

fn property_config() -> SessionConfig {
    let mut config = test_config();
    config
        .permission_policy
        .per_tool
        .insert("bash".into(), PermissionMode::Ask);
    config.permission_policy.ask_default = PermissionDecision::Deny;
    config
}

/// The largest of all timeouts: advancing by this fires at least one step of every watchdog.
fn max_timeout(config: &SessionConfig) -> Duration {
    [
        config.spawn_timeout,
        config.run_idle_timeout,
        config.cancel_grace,
        config.sandbox_reconnect_grace,
        config.sandbox_idle_timeout,
        config.hibernate_after,
        config.critical_resend_interval,
        config.permission_timeout,
        config.ledger_retry_max,
    ]
    .into_iter()
    .max()
    .unwrap()
}

/// What the reference model remembers besides the world itself.
struct Model {
    /// Runs accepted (not duplicates), in order.
    accepted: Vec<RunId>,
    /// client_msg_id → the run it queued.
    msg_ids: BTreeMap<u8, RunId>,
    /// Highest seq a client ACKed, clamped to the last seq when it was sent.
    acked_through: u64,
    next_run: u32,
    next_request: u32,
    closed: bool,
}

fn pick<T: Clone>(items: &[T], pick: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[usize::from(pick) % items.len()].clone())
}

fn attached(w: &World) -> Vec<ConnId> {
    w.clients
        .iter()
        .filter(|(_, c)| c.attached)
        .map(|(conn, _)| *conn)
        .collect()
}

fn apply(w: &mut World, model: &mut Model, action: &Action) -> Result<(), TestCaseError> {
    match action {
        Action::Prompt { msg } => {
            let name = format!("r{}", model.next_run);
            model.next_run += 1;
            let msg_name = msg.map(|m| format!("m-{m}"));
            let result = w.prompt_with(&name, "do the thing", msg_name.as_deref());
            match result {
                Ok(Accepted::Queued {
                    run_id,
                    duplicate: false,
                    ..
                }) => {
                    prop_assert_eq!(run_id.as_str(), name.as_str());
                    model.accepted.push(run_id.clone());
                    if let Some(m) = msg {
                        model.msg_ids.insert(*m, run_id);
                    }
                }
                Ok(Accepted::Queued {
                    run_id,
                    duplicate: true,
                    ..
                }) => {
                    let original = msg.and_then(|m| model.msg_ids.get(&m).cloned());
                    prop_assert_eq!(Some(run_id), original, "a duplicate names the original run");
                }
                Ok(Accepted::Done) => prop_assert!(false, "a prompt answers Queued"),
                Err(rejection) => {
                    let expected = if model.closed {
                        (ErrorClass::Conflict, "session_closed")
                    } else {
                        (ErrorClass::RateLimited, "queue_full")
                    };
                    prop_assert_eq!((rejection.class, rejection.code), expected);
                }
            }
        }
        Action::Cancel { pick: p } => {
            let mut candidates = model.accepted.clone();
            candidates.push(run_id("never-queued"));
            let target = pick(&candidates, *p).unwrap();
            if let Err(rejection) = w.cancel(Some(target.as_str())) {
                prop_assert_eq!(rejection.class, ErrorClass::NotFound);
            }
        }
        Action::CancelDefault => {
            if let Err(rejection) = w.cancel(None) {
                prop_assert_eq!(
                    (rejection.class, rejection.code),
                    (ErrorClass::NotFound, "no_running_run")
                );
            }
        }
        Action::Attach { after } => {
            let after = after.map(|a| u64::from(a) % (w.store.last_seq() + 3));
            w.attach(after);
        }
        Action::Detach { pick: p } => {
            if let Some(conn) = pick(&attached(w), *p) {
                w.detach(conn);
            }
        }
        Action::Ack { pick: p, seq } => {
            if let Some(conn) = pick(&attached(w), *p) {
                let last = w.store.last_seq();
                let seq = u64::from(*seq) % (last + 3);
                w.command(conn, ClientCommand::Ack { seq }).unwrap();
                model.acked_through = model.acked_through.max(seq.min(last));
            }
        }
        Action::AgentDelta => {
            if let Some(run) = w.current_box().and_then(|b| b.current_run.clone()) {
                w.delta(run.as_str(), "text ");
            }
        }
        Action::AgentFinish { status } => {
            if let Some(run) = w.current_box().and_then(|b| b.current_run.clone()) {
                w.finish(run.as_str(), *status);
            }
        }
        Action::AgentPermission { ask } => {
            if let Some(run) = w.current_box().and_then(|b| b.current_run.clone()) {
                let request = format!("q{}", model.next_request);
                model.next_request += 1;
                w.ask_permission(run.as_str(), &request, if *ask { "bash" } else { "read" });
            }
        }
        Action::AnswerPermission { pick: p } => {
            let requests: Vec<_> = w
                .store
                .events
                .iter()
                .filter_map(|e| match &e.event {
                    Event::PermissionRequest { request_id, .. } => Some(request_id.clone()),
                    _ => None,
                })
                .collect();
            if let (Some(request_id), Some(conn)) = (pick(&requests, *p), pick(&attached(w), *p)) {
                w.command(
                    conn,
                    ClientCommand::Permission {
                        request_id,
                        decision: PermissionDecision::AllowOnce,
                    },
                )
                .unwrap();
            }
        }
        Action::Heartbeat => w.heartbeat(),
        Action::SandboxDrop => w.sandbox_drop(),
        Action::SandboxReconnect => w.sandbox_reconnect(),
        Action::SandboxExit => w.sandbox_exit("killed"),
        Action::DuplicateSandboxMessage => w.resend_last_sandbox_message(),
        Action::LedgerFails { times } => w.ledger.fail_next(usize::from(*times)),
        Action::SpawnTrouble { plan } => w.spawn_script.push_back(*plan),
        Action::Restore => {
            let before = w.session.info();
            w.crash_and_restore();
            let after = w.session.info();
            prop_assert_eq!(before.status, after.status);
            prop_assert_eq!(before.queue_length, after.queue_length);
            prop_assert_eq!(before.last_seq, after.last_seq);
            prop_assert_eq!(w.session.attached_clients(), 0);
        }
        Action::StoreFails => {
            let (durable, evictions, records) =
                (w.store.last_seq(), w.evictions, w.ledger.records.len());
            w.input(Input::StoreFailed {
                failure: PortFailure::new(ErrorClass::Unavailable, "injected"),
            })
            .unwrap();
            w.drive();
            prop_assert_eq!(w.evictions, evictions + 1);
            prop_assert_eq!(
                w.store.last_seq(),
                durable,
                "an evicted machine writes nothing"
            );
            prop_assert_eq!(w.ledger.records.len(), records, "and records nothing");
            w.crash_and_restore();
        }
        Action::Advance { ms } => w.advance(Duration::from_millis(u64::from(*ms))),
        Action::Close => {
            w.input(Input::Close).unwrap();
            w.drive();
            model.closed = true;
        }
    }
    check_always(w)
}

/// Invariants that hold after every action.
fn check_always(w: &World) -> Result<(), TestCaseError> {
    for (run, statuses) in w.terminal_statuses() {
        prop_assert!(
            statuses.len() == 1,
            "run {} ended {} times",
            run,
            statuses.len()
        );
    }
    let seqs: Vec<u64> = w.store.events.iter().map(|e| e.seq).collect();
    prop_assert!(
        seqs.iter().copied().eq(1..=seqs.len() as u64),
        "seqs have a gap"
    );
    // A sandbox message is applied at most once, however often it is re-sent.
    let mut produced: BTreeMap<RunId, usize> = BTreeMap::new();
    for (_, _, message) in &w.sandbox_log {
        if let SandboxMessage::Event { run_id, .. } = message {
            *produced.entry(run_id.clone()).or_default() += 1;
        }
    }
    let mut applied: BTreeMap<RunId, usize> = BTreeMap::new();
    for event in &w.store.events {
        if let (Event::MessageDelta { .. }, Some(run_id)) = (&event.event, &event.run_id) {
            *applied.entry(run_id.clone()).or_default() += 1;
        }
    }
    for (run, count) in applied {
        let sent = produced.get(&run).copied().unwrap_or(0);
        prop_assert!(
            count <= sent,
            "{} deltas of {} applied, {} produced",
            count,
            run,
            sent
        );
    }
    prop_assert_eq!(w.session.last_seq(), w.store.last_seq());
    Ok(())
}

/// Invariants over the whole history.
fn check_history(w: &World) -> Result<(), TestCaseError> {
    // A client connection gets every event after its `after`, once, in order, and nothing else.
    for (conn, client) in &w.clients {
        let stream = client.stream();
        let after = client.after.unwrap_or(0);
        let expected: Vec<u64> = (after + 1..=after + stream.len() as u64).collect();
        prop_assert_eq!(&stream, &expected, "client {:?} (after {})", conn, after);
        if client.attached {
            let through = stream.last().copied().unwrap_or(after).max(after);
            prop_assert!(
                through >= w.store.last_seq(),
                "attached client {:?} missed events after #{}",
                conn,
                through
            );
        }
    }

    // At most one run in flight: a run is dispatched only after the previous one ended.
    let mut in_flight: Option<RunId> = None;
    for (_, effect) in &w.effects {
        match effect {
            Effect::Persist(commit) => {
                for event in &commit.events {
                    if matches!(event.event, Event::ExecutionComplete { .. })
                        && event.run_id == in_flight
                    {
                        in_flight = None;
                    }
                }
            }
            Effect::DispatchRun { run_id, .. } => {
                prop_assert!(
                    in_flight.is_none(),
                    "{} dispatched while {:?} was in flight",
                    run_id,
                    in_flight
                );
                in_flight = Some(run_id.clone());
            }
            _ => {}
        }
    }

    // Every record sent for a run is the same record.
    let mut sent: BTreeMap<RunId, &switchboard_core::run::RunRecord> = BTreeMap::new();
    for (_, record) in &w.ledger.calls {
        if let Some(first) = sent.insert(record.run_id.clone(), record) {
            prop_assert_eq!(
                first,
                record,
                "run {} was recorded with different content",
                record.run_id
            );
        }
    }
    Ok(())
}

fn run_case(actions: &[Action], cooperate: bool) -> Result<(), TestCaseError> {
    let config = property_config();
    let mut w = World::new(config.clone());
    w.input(Input::Start).unwrap();
    w.drive();
    let mut model = Model {
        accepted: Vec::new(),
        msg_ids: BTreeMap::new(),
        acked_through: 0,
        next_run: 1,
        next_request: 1,
        closed: false,
    };
    for action in actions {
        apply(&mut w, &mut model, action)?;
    }

    // Liveness: time runs past every timeout a few times, with the environment cooperating or not.
    w.spawn_script.clear();
    if cooperate {
        w.ledger.script.clear();
    } else {
        w.spawn_script
            .extend(std::iter::repeat_n(SpawnPlan::Silent, 1000));
        w.ledger.fail_next(1000);
    }
    let horizon = max_timeout(&config);
    for _ in 0..12 {
        w.advance(horizon);
    }
    let statuses = w.terminal_statuses();
    for run in &model.accepted {
        prop_assert!(
            statuses.contains_key(run.as_str()),
            "run {} never reached a terminal state",
            run
        );
    }
    prop_assert_eq!(
        statuses.len(),
        model.accepted.len(),
        "terminal states only for accepted runs"
    );
    prop_assert_eq!(w.session.queue_len(), 0);

    if cooperate {
        let recorded: BTreeSet<&RunId> = w.ledger.records.keys().collect();
        let accepted: BTreeSet<&RunId> = model.accepted.iter().collect();
        prop_assert_eq!(recorded, accepted, "one ledger record per terminal run");
        for (run, record) in &w.ledger.records {
            prop_assert_eq!(vec![record.status], statuses[run.as_str()].clone());
            let seqs: Vec<u64> = record.events.iter().map(|e| e.seq).collect();
            prop_assert!(
                seqs.windows(2).all(|p| p[0] < p[1]),
                "record events of {} out of order",
                run
            );
            prop_assert!(record
                .events
                .last()
                .is_some_and(|e| e.event.type_name() == "execution_complete"));
            prop_assert_eq!(record.event_count, record.events.len() as u64);
        }
        prop_assert!(
            w.store.outbox.is_empty(),
            "the outbox drains once the ledger answers"
        );
    } else {
        // A record the ledger still refuses keeps being retried, at most `ledger_retry_max` apart.
        let recent = w.now.as_millis() - (config.ledger_retry_max.as_millis() as u64);
        for record in &w.store.outbox {
            let last_try = w
                .ledger
                .calls
                .iter()
                .rev()
                .find(|(_, r)| r.run_id == record.run_id)
                .map(|(at, _)| *at);
            prop_assert!(
                last_try.is_some_and(|at| at.as_millis() >= recent),
                "{} is no longer retried",
                record.run_id
            );
        }
    }

    // Critical events are re-sent until ACKed, and only un-ACKed ones.
    let unacked: Vec<u64> = w
        .store
        .events
        .iter()
        .filter(|e| e.critical && e.seq > model.acked_through)
        .map(|e| e.seq)
        .collect();
    let last = w.store.last_seq();
    let probe = w.attach(Some(last));
    let on_attach: Vec<Vec<u64>> = w.clients[&probe].resends();
    if unacked.is_empty() {
        prop_assert!(on_attach.is_empty());
    } else {
        prop_assert_eq!(on_attach, vec![unacked.clone()], "re-sent on attach");
        w.advance(config.critical_resend_interval * 2);
        let resends = w.clients[&probe].resends();
        prop_assert_eq!(
            resends,
            vec![unacked.clone(); 3],
            "re-sent on attach and on every watchdog interval"
        );
        w.command(probe, ClientCommand::Ack { seq: last }).unwrap();
        let count = w.clients[&probe].resends().len();
        w.advance(config.critical_resend_interval * 3);
        prop_assert_eq!(
            w.clients[&probe].resends().len(),
            count,
            "not re-sent once ACKed"
        );
    }

    check_always(&w)?;
    check_history(&w)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 4096, ..ProptestConfig::default() })]

    #[test]
    fn session_machine_keeps_its_promises(actions in proptest::collection::vec(action(), 1..60), cooperate in proptest::bool::weighted(0.8)) {
        run_case(&actions, cooperate)?;
    }
}

/// A fixed interleaving that exercises the loss-restore-duplicate corner, kept as a plain test so
/// it runs the same way every time.
#[test]
fn known_tricky_interleaving() {
    let actions = [
        Action::Attach { after: None },
        Action::Prompt { msg: Some(1) },
        Action::AgentDelta,
        Action::Prompt { msg: Some(1) },
        Action::Prompt { msg: Some(2) },
        Action::SandboxDrop,
        Action::AgentDelta,
        Action::Restore,
        Action::SandboxReconnect,
        Action::DuplicateSandboxMessage,
        Action::AgentFinish {
            status: TerminalStatus::Completed,
        },
        Action::LedgerFails { times: 2 },
        Action::AgentPermission { ask: true },
        Action::Attach { after: Some(3) },
        Action::Advance { ms: 15_000 },
        Action::SandboxExit,
        Action::Ack { pick: 0, seq: 200 },
        Action::Advance { ms: 70_000 },
        Action::Prompt { msg: None },
        Action::Close,
    ];
    run_case(&actions, true).unwrap();
}
