//! `LocalSessionHost` under virtual time: a session hibernates, comes back from the store and loses
//! no event; a client that stops reading is dropped while the others and the session carry on.

use futures::StreamExt;
use std::sync::Arc;
use switchboard_adapters::local_host::LocalSessionHost;
use switchboard_core::protocol::client::ControlFrame;
use switchboard_core::protocol::{
    ClientMessage, Event, EventEnvelope, SandboxMessage, ServerFrame, ServerToSandbox,
    TerminalStatus, Usage,
};
use switchboard_core::session::SessionConfig;
use switchboard_core::tenancy::{Principal, SessionKey};
use switchboard_core::{ErrorClass, ModelRef, OrgId, RunId, Scope, SessionId, UserId};
use switchboard_fakes::minter::InMemoryMinter;
use switchboard_fakes::{
    audit_log::InMemoryAuditLog, event_bus::InMemoryEventBus, model_gateway::InMemoryModelGateway,
    price_book::InMemoryPriceBook, run_ledger::InMemoryRunLedger,
    sandbox_provider::InMemorySandboxProvider, secret_vault::InMemorySecretVault,
    session_store::InMemorySessionStore, InMemoryClock,
};
use switchboard_ports::runtime::{SessionPorts, CLIENT_BUFFER};
use switchboard_ports::session::{ClientLink, CreateSession, PromptRequest, SandboxLink};
use switchboard_ports::{Classify, RunLedger, SecretString, SecretVault, SessionHost};

const MODEL: &str = "openai/gpt-test";

struct World {
    host: LocalSessionHost,
    clock: InMemoryClock,
    sandboxes: Arc<InMemorySandboxProvider>,
    ledger: Arc<InMemoryRunLedger>,
    principal: Principal,
}

impl World {
    async fn new(org: &str) -> World {
        let clock = InMemoryClock::new();
        let sandboxes = Arc::new(InMemorySandboxProvider::new());
        let ledger = Arc::new(InMemoryRunLedger::new());
        let vault = Arc::new(InMemorySecretVault::new(Arc::new(clock.clone())));
        let principal = Principal::from_verified_credential(
            OrgId::parse(org).unwrap(),
            UserId::parse("u-1").unwrap(),
            None,
            Scope::MEMBER.to_vec(),
        );
        vault
            .put(&principal.tenant(), "openai", &SecretString::new("sk-test"))
            .await
            .unwrap();
        let ports = SessionPorts {
            store: Arc::new(InMemorySessionStore::new()),
            sandboxes: sandboxes.clone(),
            gateway: Arc::new(InMemoryModelGateway::new(vault)),
            prices: Arc::new(InMemoryPriceBook::new()),
            ledger: ledger.clone(),
            bus: Arc::new(InMemoryEventBus::new()),
            audit: Arc::new(InMemoryAuditLog::new()),
            clock: Arc::new(clock.clone()),
            minter: Arc::new(InMemoryMinter::new()),
            callback_base: "ws://127.0.0.1:8080".into(),
            config: SessionConfig::default(),
        };
        World {
            host: LocalSessionHost::new(ports),
            clock,
            sandboxes,
            ledger,
            principal,
        }
    }

    fn key(&self, session: &str) -> SessionKey {
        self.principal
            .tenant()
            .session(SessionId::parse(session).unwrap())
    }

    async fn create(&self, session: &str) {
        let request = CreateSession {
            session_id: SessionId::parse(session).unwrap(),
            model: ModelRef::parse(MODEL).unwrap(),
            agent: "opencode".into(),
            repo: None,
            permissions: None,
        };
        self.host.create(&self.principal, request).await.unwrap();
    }

    async fn prompt(&self, session: &str, run: &str) {
        let request = PromptRequest {
            run_id: RunId::parse(run).unwrap(),
            text: format!("do {run}"),
            client_msg_id: None,
        };
        self.host
            .prompt(
                &self.principal,
                &SessionId::parse(session).unwrap(),
                request,
            )
            .await
            .unwrap();
    }

    /// Dials back with the token of the `nth` spawn for `session` (spawns run on the session's
    /// task, so this yields until the provider has seen it).
    async fn dial_back(&self, session: &str, nth: usize) -> SandboxLink {
        let key = self.key(session);
        let token = until(|| {
            let spawned = self.sandboxes.spawned();
            let mine: Vec<_> = spawned
                .into_iter()
                .filter(|(_, spec)| spec.session_key == key.to_string())
                .collect();
            mine.get(nth)
                .map(|(_, spec)| SecretString::new(spec.token.clone()))
        })
        .await;
        self.host.attach_sandbox(&key, &token).await.unwrap()
    }
}

/// Yields to the session tasks until `probe` answers (bounded: a hang fails the test).
async fn until<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..100_000 {
        if let Some(found) = probe() {
            return found;
        }
        tokio::task::yield_now().await;
    }
    panic!("the awaited condition never held");
}

/// The next `run` frame the sandbox gets.
async fn next_run(sandbox: &mut SandboxLink) -> RunId {
    loop {
        match sandbox
            .frames
            .next()
            .await
            .expect("the sandbox stream ended")
        {
            ServerToSandbox::Run { run_id, .. } => return run_id,
            _ => continue,
        }
    }
}

/// Plays one run on the sandbox: a reply in `deltas` pieces, then completion. Returns the next `n`.
async fn play_run(sandbox: &mut SandboxLink, mut n: u64, deltas: usize) -> u64 {
    let run_id = next_run(sandbox).await;
    for i in 0..deltas {
        let event = Event::MessageDelta {
            text: format!("piece {i} "),
        };
        sandbox
            .handle
            .send(SandboxMessage::Event {
                run_id: run_id.clone(),
                n,
                event,
            })
            .await
            .unwrap();
        n += 1;
    }
    let finished = SandboxMessage::RunFinished {
        run_id,
        n,
        status: TerminalStatus::Completed,
        stop_reason: None,
        usage: Usage::default(),
        error: None,
    };
    sandbox.handle.send(finished).await.unwrap();
    n + 1
}

/// Every event frame a client has received so far, without waiting.
fn drain_events(client: &mut ClientLink, into: &mut Vec<EventEnvelope>) {
    while let Ok(frame) = client.frames.try_recv() {
        if let ServerFrame::Event(event) = frame {
            into.push(event);
        }
    }
}

#[tokio::test]
async fn hibernated_session_comes_back_from_the_store_without_losing_events() {
    let w = World::new("org-hibernate").await;
    let tenant = w.principal.tenant();
    let session = SessionId::parse("s-1").unwrap();
    w.create("s-1").await;
    w.prompt("s-1", "r-1").await;
    let mut sandbox = w.dial_back("s-1", 0).await;
    play_run(&mut sandbox, 1, 5).await;
    until(|| (w.ledger.len() == 1).then_some(())).await;

    // Idle sandbox shut down, then nothing is live: the session hibernates and its task ends.
    let config = SessionConfig::default();
    w.clock.advance(config.sandbox_idle_timeout);
    loop {
        match sandbox.frames.next().await {
            Some(ServerToSandbox::Shutdown) => break,
            Some(_) => continue,
            None => panic!("the sandbox stream ended before shutdown"),
        }
    }
    sandbox.handle.detach().await;
    let before = w.host.events(&tenant, &session, 0, 10_000).await.unwrap();
    w.clock.advance(config.hibernate_after);
    until(|| (!w.host.is_live(&w.key("s-1"))).then_some(())).await;
    assert_eq!(w.host.live_sessions(), 0);

    // A client wakes it: the replay is exactly what was persisted before.
    let mut client = w
        .host
        .attach_client(&w.principal, &session, None)
        .await
        .unwrap();
    assert!(w.host.is_live(&w.key("s-1")), "the session was rehydrated");
    match client.frames.next().await.unwrap() {
        ServerFrame::Control(ControlFrame::Hello { last_seq, .. }) => {
            assert_eq!(last_seq, before.last_seq)
        }
        other => panic!("expected hello, got {other:?}"),
    }
    let mut seen = Vec::new();
    while seen.len() < before.events.len() {
        match client.frames.next().await.unwrap() {
            ServerFrame::Event(event) => seen.push(event),
            other => panic!("expected a replayed event, got {other:?}"),
        }
    }
    assert_eq!(seen, before.events);
    let deltas = seen
        .iter()
        .filter(|e| matches!(e.event, Event::MessageDelta { .. }))
        .count();
    assert_eq!(
        deltas, 5,
        "every piece of the first reply survived hibernation"
    );

    // And it carries on: a second run gets a fresh sandbox and its events continue the log.
    w.prompt("s-1", "r-2").await;
    let mut sandbox = w.dial_back("s-1", 1).await;
    play_run(&mut sandbox, 1, 3).await;
    until(|| (w.ledger.len() == 2).then_some(())).await;
    let after = w.host.events(&tenant, &session, 0, 10_000).await.unwrap();
    while seen.len() < after.events.len() {
        if let ServerFrame::Event(event) = client.frames.next().await.unwrap() {
            seen.push(event);
        }
    }
    assert_eq!(
        seen, after.events,
        "the client saw every event once, in order"
    );
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=after.last_seq).collect::<Vec<_>>(),
        "no gap and no repeat across hibernation"
    );
    let recorded = w
        .ledger
        .get(&tenant, &RunId::parse("r-1").unwrap())
        .await
        .unwrap();
    assert_eq!(recorded.status, TerminalStatus::Completed);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_the_others_carry_on() {
    let w = World::new("org-slow").await;
    let session = SessionId::parse("s-2").unwrap();
    w.create("s-2").await;
    let mut slow = w
        .host
        .attach_client(&w.principal, &session, None)
        .await
        .unwrap();
    let mut fast = w
        .host
        .attach_client(&w.principal, &session, None)
        .await
        .unwrap();
    w.prompt("s-2", "r-1").await;
    let mut sandbox = w.dial_back("s-2", 0).await;
    let run_id = next_run(&mut sandbox).await;

    // Far more events than a client may fall behind by; the fast client keeps up, the slow one
    // never reads.
    let mut fast_events = Vec::new();
    let pieces = 3 * CLIENT_BUFFER as u64;
    for n in 1..=pieces {
        let event = Event::MessageDelta {
            text: format!("{n} "),
        };
        sandbox
            .handle
            .send(SandboxMessage::Event {
                run_id: run_id.clone(),
                n,
                event,
            })
            .await
            .unwrap();
        drain_events(&mut fast, &mut fast_events);
        while sandbox.frames.try_recv().is_ok() {} // the sandbox reads its ACKs
    }
    let finished = SandboxMessage::RunFinished {
        run_id: run_id.clone(),
        n: pieces + 1,
        status: TerminalStatus::Completed,
        stop_reason: None,
        usage: Usage::default(),
        error: None,
    };
    sandbox.handle.send(finished).await.unwrap();
    fast.handle.send(ClientMessage::Ping {}).await.unwrap();

    // The fast client got everything, in order, through the completion, then its pong.
    loop {
        match fast
            .frames
            .next()
            .await
            .expect("the fast client was dropped")
        {
            ServerFrame::Event(event) => fast_events.push(event),
            ServerFrame::Control(ControlFrame::Pong) => break,
            ServerFrame::Control(_) => {}
        }
    }
    let last = w
        .host
        .events(&w.principal.tenant(), &session, 0, 10_000)
        .await
        .unwrap();
    assert_eq!(fast_events, last.events, "the fast client saw every event");
    assert!(
        fast_events
            .iter()
            .any(|e| matches!(e.event, Event::ExecutionComplete { .. })),
        "the run completed"
    );

    // The slow client holds at most its buffer, in order, and then its stream ends.
    let mut slow_frames = Vec::new();
    while let Some(frame) = slow.frames.next().await {
        slow_frames.push(frame);
    }
    assert!(matches!(
        slow_frames.first(),
        Some(ServerFrame::Control(ControlFrame::Hello { .. }))
    ));
    assert!(
        slow_frames.len() <= CLIENT_BUFFER + 2,
        "the slow client held {} frames",
        slow_frames.len()
    );
    let slow_seqs: Vec<u64> = slow_frames
        .iter()
        .filter_map(|f| {
            if let ServerFrame::Event(e) = f {
                Some(e.seq)
            } else {
                None
            }
        })
        .collect();
    let first = slow_seqs.first().copied().unwrap_or(1);
    assert_eq!(
        slow_seqs,
        (first..first + slow_seqs.len() as u64).collect::<Vec<_>>(),
        "what it got is an in-order prefix"
    );
    assert!(
        slow_seqs.len() < last.events.len(),
        "the slow client cannot have had everything"
    );

    // The session was never stalled and still answers; the dropped client may resume with `after`.
    let info = w.host.info(&w.principal.tenant(), &session).await.unwrap();
    assert_eq!(info.last_seq, last.last_seq);
    let resumed_after = slow_seqs.last().copied().unwrap_or(0);
    let mut resumed = w
        .host
        .attach_client(&w.principal, &session, Some(resumed_after))
        .await
        .unwrap();
    assert!(matches!(
        resumed.frames.next().await,
        Some(ServerFrame::Control(ControlFrame::Hello { .. }))
    ));
    let mut rest = Vec::new();
    while rest.len() < (last.last_seq - resumed_after) as usize {
        if let Some(ServerFrame::Event(event)) = resumed.frames.next().await {
            rest.push(event.seq);
        }
    }
    assert_eq!(
        rest,
        (resumed_after + 1..=last.last_seq).collect::<Vec<_>>(),
        "resuming misses nothing"
    );
}

#[tokio::test]
async fn racing_requests_for_one_key_meet_one_task() {
    let w = World::new("org-race").await;
    let tenant = w.principal.tenant();
    let session = SessionId::parse("s-race").unwrap();
    let request = || CreateSession {
        session_id: session.clone(),
        model: ModelRef::parse(MODEL).unwrap(),
        agent: "opencode".into(),
        repo: None,
        permissions: None,
    };

    // A lookup still finding out that the session does not exist does not make `create` fail.
    let (looked_up, created) = tokio::join!(
        w.host.info(&tenant, &session),
        w.host.create(&w.principal, request())
    );
    assert_eq!(looked_up.unwrap_err().class(), ErrorClass::NotFound);
    assert_eq!(created.unwrap().id, session);

    // Two creates of one new id: exactly one wins.
    let other = SessionId::parse("s-twice").unwrap();
    let twice = || CreateSession {
        session_id: other.clone(),
        ..request()
    };
    let (a, b) = tokio::join!(
        w.host.create(&w.principal, twice()),
        w.host.create(&w.principal, twice())
    );
    let classes: Vec<_> = [&a, &b]
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.class()))
        .collect();
    assert!(
        classes.contains(&None) && classes.contains(&Some(ErrorClass::Conflict)),
        "{classes:?}"
    );
    assert_eq!(w.host.live_sessions(), 2);
    // Spawns run on the session tasks: wait for both, then check neither session spawned twice.
    until(|| (w.sandboxes.spawned().len() >= 2).then_some(())).await;
    let mut keys: Vec<String> = w
        .sandboxes
        .spawned()
        .into_iter()
        .map(|(_, spec)| spec.session_key)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![w.key("s-race").to_string(), w.key("s-twice").to_string()],
        "one spawn per session"
    );
}
