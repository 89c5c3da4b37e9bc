//! A deterministic world around one session machine, in the style of quinn-proto's test `Pair`:
//! virtual time, a simulated session store (applies commits, serves replays from its log),
//! simulated clients that record what they receive, simulated sandboxes that number their
//! messages and resend what was not ACKed, and a scripted provider, dispatcher and run ledger.
//!
//! Everything the machine asks for is carried out in effect order; every answer the environment
//! gives goes into an inbox that [`World::step`] feeds back one input at a time. [`World::trace`]
//! keeps a compact, readable line per input and effect for snapshot tests.
//!
//! The world checks the machine's contract on every call and panics with the trace tail when it
//! is broken: one `Persist` per `handle`, first; event seqs without gap; every delivered, replayed
//! or re-sent event already durable.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use switchboard_core::crypto::TokenHash;
use switchboard_core::protocol::client::ControlFrame;
use switchboard_core::protocol::events::{
    ErrorBody, Event, EventEnvelope, PermissionDecision, SessionStatus, TerminalStatus, Usage,
};
use switchboard_core::protocol::sandbox::{SandboxMessage, ServerToSandbox};
use switchboard_core::protocol::ServerFrame;
use switchboard_core::run::{Price, RunRecord};
use switchboard_core::session::*;
use switchboard_core::tenancy::{Attribution, Principal, Scope};
use switchboard_core::{
    ApiKeyId, CallId, ClientMsgId, ConnId, ErrorClass, ModelRef, OrgId, RequestId, RunId,
    SandboxId, SessionId, Timestamp, UserId,
};

/// 2026-01-01T00:00:00Z: time zero of every world.
pub const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);

/// The price every dispatch resolves to unless scripted otherwise.
pub const PRICE: Price = Price {
    input_per_mtok_micros: 3_000_000,
    output_per_mtok_micros: 15_000_000,
};

/// Short, distinct timeouts so that traces are easy to read.
pub fn test_config() -> SessionConfig {
    SessionConfig {
        spawn_timeout: Duration::from_secs(30),
        spawn_attempts: 2,
        run_idle_timeout: Duration::from_secs(60),
        cancel_grace: Duration::from_secs(5),
        sandbox_reconnect_grace: Duration::from_secs(10),
        sandbox_idle_timeout: Duration::from_secs(120),
        hibernate_after: Duration::from_secs(30),
        critical_resend_interval: Duration::from_secs(10),
        permission_timeout: Duration::from_secs(20),
        ledger_retry_initial: Duration::from_secs(1),
        ledger_retry_max: Duration::from_secs(8),
        max_queue: 3,
        max_prompt_bytes: 1000,
        permission_policy: PermissionPolicy::default(),
        sandbox_idle_s: 900,
        sandbox_max_s: 3600,
    }
}

pub fn run_id(name: &str) -> RunId {
    RunId::parse(name).unwrap()
}

pub fn request_id(name: &str) -> RequestId {
    RequestId::parse(name).unwrap()
}

pub fn attribution() -> Attribution {
    Attribution {
        user_id: UserId::parse("user-1").unwrap(),
        api_key_id: Some(ApiKeyId::parse("key-1").unwrap()),
    }
}

pub fn session_init() -> SessionInit {
    let principal = Principal::from_verified_credential(
        OrgId::parse("org-1").unwrap(),
        UserId::parse("user-1").unwrap(),
        Some(ApiKeyId::parse("key-1").unwrap()),
        Scope::MEMBER.to_vec(),
    );
    SessionInit {
        key: principal
            .tenant()
            .session(SessionId::parse("sess-1").unwrap()),
        model: ModelRef::parse("anthropic/claude-sonnet-4").unwrap(),
        agent: "opencode".into(),
        repo: None,
        created_by: principal.attribution(),
        permissions: None,
    }
}

/// The token hash the simulated shell mints for spawn attempt `spawn`.
pub fn token_for(spawn: u32) -> TokenHash {
    let mut bytes = [0xab; 32];
    bytes[..4].copy_from_slice(&spawn.to_le_bytes());
    TokenHash(bytes)
}

// ----- the simulated store -------------------------------------------------------------------

/// The session store: an event log, the latest snapshot and the outbox.
#[derive(Debug, Default, Clone)]
pub struct Store {
    pub events: Vec<EventEnvelope>,
    pub snapshot: Option<SessionSnapshot>,
    pub outbox: Vec<RunRecord>,
    pub commits: usize,
}

impl Store {
    fn apply(&mut self, commit: &Commit) -> Result<(), String> {
        for (expected, event) in (self.last_seq() + 1..).zip(&commit.events) {
            if event.seq != expected {
                return Err(format!(
                    "seq gap: commit holds #{} where #{expected} was due",
                    event.seq
                ));
            }
        }
        self.events.extend(commit.events.iter().cloned());
        if let Some(snapshot) = &commit.snapshot {
            self.snapshot = Some(snapshot.clone());
        }
        for record in &commit.outbox_put {
            self.outbox.retain(|r| r.run_id != record.run_id);
            self.outbox.push(record.clone());
        }
        self.outbox
            .retain(|r| !commit.outbox_remove.contains(&r.run_id));
        self.commits += 1;
        Ok(())
    }

    pub fn last_seq(&self) -> u64 {
        self.events.last().map(|e| e.seq).unwrap_or(0)
    }

    pub fn event(&self, seq: u64) -> Option<&EventEnvelope> {
        self.events.iter().find(|e| e.seq == seq)
    }

    /// What a real store's `load` would hand back.
    pub fn persisted(&self) -> Persisted {
        let snapshot = self.snapshot.clone().expect("nothing was persisted yet");
        let active_run_events = match Session::active_run_first_seq(&snapshot) {
            Some((run_id, first)) => self
                .events
                .iter()
                .filter(|e| e.seq >= first && e.run_id.as_ref() == Some(&run_id))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Persisted {
            snapshot,
            outbox: self.outbox.clone(),
            active_run_events,
        }
    }

    /// Events of one type, in seq order.
    pub fn of_type(&self, type_name: &str) -> Vec<&EventEnvelope> {
        self.events
            .iter()
            .filter(|e| e.event.type_name() == type_name)
            .collect()
    }
}

// ----- simulated clients ---------------------------------------------------------------------

/// How a client got an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Replay,
    Live,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Hello {
        status: SessionStatus,
        last_seq: u64,
    },
    Event {
        seq: u64,
        via: Via,
    },
    Resent {
        seqs: Vec<u64>,
    },
    Pong,
    Error {
        code: String,
    },
}

/// One client connection and everything it received.
#[derive(Debug, Clone)]
pub struct Client {
    pub after: Option<u64>,
    pub attached: bool,
    pub received: Vec<Received>,
}

impl Client {
    /// Seqs received through replay and live delivery, in order.
    pub fn stream(&self) -> Vec<u64> {
        self.received
            .iter()
            .filter_map(|r| match r {
                Received::Event { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    /// Every re-send this client got, as lists of seqs.
    pub fn resends(&self) -> Vec<Vec<u64>> {
        self.received
            .iter()
            .filter_map(|r| match r {
                Received::Resent { seqs } => Some(seqs.clone()),
                _ => None,
            })
            .collect()
    }
}

// ----- simulated sandboxes -------------------------------------------------------------------

/// What the simulated provider does with a spawn attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnPlan {
    /// Creates the box, which dials back at once.
    DialBack,
    /// Creates the box, which never dials back.
    Silent,
    /// The provider call fails.
    ProviderError,
}

/// One simulated dev box (one spawn attempt).
#[derive(Debug, Clone)]
pub struct SimBox {
    pub spawn: u32,
    pub sandbox_id: SandboxId,
    pub token_hash: TokenHash,
    /// Its socket, while open (accepted or not yet answered).
    pub conn: Option<ConnId>,
    pub accepted: bool,
    pub terminated: bool,
    pub next_n: u64,
    /// Numbered messages sent and not ACKed yet; re-sent after every reconnect.
    pub unacked: BTreeMap<u64, SandboxMessage>,
    pub last_sent: Option<SandboxMessage>,
    pub received: Vec<ServerToSandbox>,
    /// The run the agent is working on.
    pub current_run: Option<RunId>,
}

// ----- the simulated ledger ------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Answers to the next `RecordRun`s; `Ok` when empty.
    pub script: VecDeque<Result<(), PortFailure>>,
    /// Records kept, idempotent on run id.
    pub records: BTreeMap<RunId, RunRecord>,
    /// Every `RecordRun` received, in order, with the time.
    pub calls: Vec<(Timestamp, RunRecord)>,
}

impl Ledger {
    pub fn fail_next(&mut self, times: usize) {
        for _ in 0..times {
            self.script.push_back(Err(PortFailure::new(
                ErrorClass::Unavailable,
                "ledger down",
            )));
        }
    }
}

// ----- the world -----------------------------------------------------------------------------

pub struct World {
    pub now: Timestamp,
    pub config: SessionConfig,
    pub session: Session,
    pub store: Store,
    pub clients: BTreeMap<ConnId, Client>,
    pub boxes: BTreeMap<u32, SimBox>,
    pub ledger: Ledger,
    pub spawn_script: VecDeque<SpawnPlan>,
    /// Answers to the next `DispatchRun`s; `Ok(Some(PRICE))` when empty.
    pub dispatch_script: VecDeque<Result<Option<Price>, PortFailure>>,
    /// The cancel a sandbox receives makes its agent stop and report `cancelled`.
    pub agent_obeys_cancel: bool,
    pub inbox: VecDeque<Input>,
    pub trace: Vec<String>,
    pub effects: Vec<(Timestamp, Effect)>,
    pub hibernations: usize,
    /// `Evict` effects seen (the store failed; the shell would drop the actor).
    pub evictions: usize,
    /// Every numbered message any box produced, as (spawn, n, message): re-sends not included.
    pub sandbox_log: Vec<(u32, u64, SandboxMessage)>,
    pub audits: Vec<switchboard_core::audit::AuditEntry>,
    pub published: Vec<OrgEvent>,
    pub steps: usize,
    next_conn: u64,
}

impl World {
    /// A world around a new session at `T0` (not started).
    pub fn new(config: SessionConfig) -> World {
        let session = Session::new(T0, config.clone(), session_init());
        World {
            now: T0,
            config,
            session,
            store: Store::default(),
            clients: BTreeMap::new(),
            boxes: BTreeMap::new(),
            ledger: Ledger::default(),
            spawn_script: VecDeque::new(),
            dispatch_script: VecDeque::new(),
            agent_obeys_cancel: true,
            inbox: VecDeque::new(),
            trace: Vec::new(),
            effects: Vec::new(),
            hibernations: 0,
            evictions: 0,
            sandbox_log: Vec::new(),
            audits: Vec::new(),
            published: Vec::new(),
            steps: 0,
            next_conn: 1,
        }
    }

    /// A started session whose sandbox has dialed back.
    pub fn started(config: SessionConfig) -> World {
        let mut world = World::new(config);
        world.input(Input::Start).unwrap();
        world.drive();
        world
    }

    fn elapsed(&self) -> String {
        let ms = self.now.as_millis() - T0.as_millis();
        format!("{:>4}.{:03}", ms / 1000, ms % 1000)
    }

    fn log(&mut self, line: String) {
        let line = format!("{} {line}", self.elapsed());
        self.trace.push(line);
    }

    /// Records a free-form line in the trace (what the test does next).
    pub fn note(&mut self, text: &str) {
        self.log(format!("-- {text}"));
    }

    fn fail(&self, message: &str) -> ! {
        let tail: Vec<&String> = self
            .trace
            .iter()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let tail: Vec<&str> = tail.iter().map(|s| s.as_str()).collect();
        panic!("{message}\n--- trace tail ---\n{}", tail.join("\n"));
    }

    fn conn(&mut self) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        conn
    }

    // ----- feeding the machine -------------------------------------------------------------

    /// Hands one input to the machine now and carries out its effects.
    pub fn input(&mut self, input: Input) -> Result<Accepted, Rejection> {
        self.log(format!("> {}", describe_input(&input)));
        let result = self.session.handle(self.now, input);
        match &result {
            Ok(Accepted::Done) => {}
            Ok(Accepted::Queued {
                run_id,
                position,
                duplicate,
            }) => {
                let dup = if *duplicate { " (duplicate)" } else { "" };
                self.log(format!("= queued {run_id} at {position}{dup}"));
            }
            Err(rejection) => {
                self.log(format!("= rejected {} {}", rejection.class, rejection.code))
            }
        }
        self.process_effects();
        result
    }

    /// Carries out everything the machine asked for, in order.
    pub fn process_effects(&mut self) {
        let mut batch = Vec::new();
        while let Some(effect) = self.session.poll_effect() {
            batch.push(effect);
        }
        let persists = batch
            .iter()
            .filter(|e| matches!(e, Effect::Persist(_)))
            .count();
        if persists > 1 || (persists == 1 && !matches!(batch[0], Effect::Persist(_))) {
            self.fail("one handle call must emit at most one Persist, and first");
        }
        for effect in batch {
            self.log(describe_effect(&effect));
            self.effects.push((self.now, effect.clone()));
            self.carry_out(effect);
        }
    }

    fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Persist(commit) => {
                if let Err(message) = self.store.apply(&commit) {
                    self.fail(&message);
                }
            }
            Effect::Deliver { to, frame } => {
                if let ServerFrame::Event(envelope) = &frame {
                    if self.store.event(envelope.seq) != Some(envelope) {
                        self.fail(&format!(
                            "event #{} delivered before it was persisted",
                            envelope.seq
                        ));
                    }
                }
                let received = match frame {
                    ServerFrame::Event(envelope) => Received::Event {
                        seq: envelope.seq,
                        via: Via::Live,
                    },
                    ServerFrame::Control(ControlFrame::Hello {
                        status, last_seq, ..
                    }) => Received::Hello { status, last_seq },
                    ServerFrame::Control(ControlFrame::Pong) => Received::Pong,
                    ServerFrame::Control(ControlFrame::Error { code, .. }) => {
                        Received::Error { code }
                    }
                };
                for conn in to {
                    if let Some(client) = self.clients.get_mut(&conn).filter(|c| c.attached) {
                        client.received.push(received.clone());
                    }
                }
            }
            Effect::Replay {
                conn,
                after,
                through,
            } => {
                if through > self.store.last_seq() {
                    self.fail(&format!(
                        "replay through #{through} beyond the store's #{}",
                        self.store.last_seq()
                    ));
                }
                let seqs: Vec<u64> = self
                    .store
                    .events
                    .iter()
                    .filter(|e| e.seq > after && e.seq <= through)
                    .map(|e| e.seq)
                    .collect();
                if let Some(client) = self.clients.get_mut(&conn).filter(|c| c.attached) {
                    client
                        .received
                        .extend(seqs.into_iter().map(|seq| Received::Event {
                            seq,
                            via: Via::Replay,
                        }));
                }
            }
            Effect::Resend { to, events } => {
                for event in &events {
                    if self.store.event(event.seq) != Some(event) || !event.critical {
                        self.fail(&format!(
                            "re-sent #{} is not a persisted critical event",
                            event.seq
                        ));
                    }
                }
                let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
                for conn in to {
                    if let Some(client) = self.clients.get_mut(&conn).filter(|c| c.attached) {
                        client
                            .received
                            .push(Received::Resent { seqs: seqs.clone() });
                    }
                }
            }
            Effect::AcceptSandbox { conn } => {
                let Some(spawn) = self.box_on(conn) else {
                    return;
                };
                let sim = self.boxes.get_mut(&spawn).unwrap();
                sim.accepted = true;
                let hello = SandboxMessage::Hello {
                    sandbox_id: sim.sandbox_id.clone(),
                    agent: "opencode".into(),
                    agent_version: "1.0.0".into(),
                };
                let resend: Vec<SandboxMessage> = sim.unacked.values().cloned().collect();
                self.inbox.push_back(Input::SandboxMessage {
                    conn,
                    message: hello,
                });
                for message in resend {
                    self.inbox
                        .push_back(Input::SandboxMessage { conn, message });
                }
            }
            Effect::RejectSandbox { conn } | Effect::CloseSandbox { conn } => {
                if let Some(spawn) = self.box_on(conn) {
                    let sim = self.boxes.get_mut(&spawn).unwrap();
                    sim.conn = None;
                    sim.accepted = false;
                }
            }
            Effect::SendToSandbox { conn, message } => {
                let Some(spawn) = self.box_on(conn) else {
                    return;
                };
                let obeys = self.agent_obeys_cancel;
                let sim = self.boxes.get_mut(&spawn).unwrap();
                sim.received.push(message.clone());
                match message {
                    ServerToSandbox::Ack { n } => {
                        sim.unacked.remove(&n);
                    }
                    ServerToSandbox::Cancel { run_id }
                        if obeys && sim.current_run.as_ref() == Some(&run_id) =>
                    {
                        self.sandbox_send(|n| SandboxMessage::RunFinished {
                            run_id,
                            n,
                            status: TerminalStatus::Cancelled,
                            stop_reason: Some("cancelled".into()),
                            usage: Usage {
                                input_tokens: 10,
                                output_tokens: 2,
                            },
                            error: None,
                        });
                    }
                    _ => {}
                }
            }
            Effect::DispatchRun {
                conn,
                run_id,
                text,
                model,
            } => {
                let answer = match self.box_on(conn).filter(|spawn| self.boxes[spawn].accepted) {
                    Some(spawn) => {
                        let sim = self.boxes.get_mut(&spawn).unwrap();
                        sim.current_run = Some(run_id.clone());
                        sim.received.push(ServerToSandbox::Run {
                            run_id: run_id.clone(),
                            text,
                            model,
                            gateway: switchboard_core::protocol::GatewayConfig {
                                base_url: "http://gateway.test".into(),
                                api_key: None,
                                headers: BTreeMap::new(),
                            },
                        });
                        self.dispatch_script.pop_front().unwrap_or(Ok(Some(PRICE)))
                    }
                    None => Err(PortFailure::new(
                        ErrorClass::Unavailable,
                        "sandbox socket is gone",
                    )),
                };
                self.inbox.push_back(Input::DispatchResult {
                    run_id,
                    result: answer,
                });
            }
            Effect::SpawnSandbox { spawn, request: _ } => {
                let plan = self.spawn_script.pop_front().unwrap_or(SpawnPlan::DialBack);
                let token_hash = token_for(spawn);
                self.inbox.push_back(Input::SandboxTokenIssued {
                    spawn,
                    token_hash: token_hash.clone(),
                });
                if plan == SpawnPlan::ProviderError {
                    let failure = PortFailure::new(ErrorClass::Unavailable, "provider down");
                    self.inbox.push_back(Input::SpawnResult {
                        spawn,
                        result: Err(failure),
                    });
                    return;
                }
                let sandbox_id = SandboxId::parse(format!("sb-{spawn}")).unwrap();
                self.inbox.push_back(Input::SpawnResult {
                    spawn,
                    result: Ok(sandbox_id.clone()),
                });
                let conn = (plan == SpawnPlan::DialBack).then(|| self.conn());
                self.boxes.insert(
                    spawn,
                    SimBox {
                        spawn,
                        sandbox_id,
                        token_hash: token_hash.clone(),
                        conn,
                        accepted: false,
                        terminated: false,
                        next_n: 1,
                        unacked: BTreeMap::new(),
                        last_sent: None,
                        received: Vec::new(),
                        current_run: None,
                    },
                );
                if let Some(conn) = conn {
                    self.inbox
                        .push_back(Input::SandboxConnect { conn, token_hash });
                }
            }
            Effect::TerminateSandbox { sandbox_id } => {
                let spawn = self
                    .boxes
                    .values()
                    .find(|b| b.sandbox_id == sandbox_id)
                    .map(|b| b.spawn);
                if let Some(spawn) = spawn {
                    let sim = self.boxes.get_mut(&spawn).unwrap();
                    sim.terminated = true;
                    if let Some(conn) = sim.conn.take() {
                        self.inbox.push_back(Input::SandboxDisconnected { conn });
                    }
                    sim.accepted = false;
                }
            }
            Effect::RecordRun(record) => {
                self.ledger.calls.push((self.now, record.clone()));
                let answer = self.ledger.script.pop_front().unwrap_or(Ok(()));
                if answer.is_ok() {
                    self.ledger
                        .records
                        .entry(record.run_id.clone())
                        .or_insert_with(|| record.clone());
                }
                self.inbox.push_back(Input::RunRecorded {
                    run_id: record.run_id,
                    result: answer,
                });
            }
            Effect::Publish(event) => self.published.push(event),
            Effect::Audit(entry) => self.audits.push(entry),
            Effect::Hibernate => self.hibernations += 1,
            Effect::Evict { .. } => self.evictions += 1,
        }
    }

    fn box_on(&self, conn: ConnId) -> Option<u32> {
        self.boxes
            .values()
            .find(|b| b.conn == Some(conn))
            .map(|b| b.spawn)
    }

    /// The newest simulated box.
    pub fn current_box(&self) -> Option<&SimBox> {
        self.boxes.values().last()
    }

    // ----- time ----------------------------------------------------------------------------

    /// Handles one input from the inbox, or a `Tick` when a deadline is due. False when quiet.
    pub fn step(&mut self) -> bool {
        if let Some(input) = self.inbox.pop_front() {
            // Answers are not rejected; a rejection here is a harness bug.
            let _ = self.input(input);
            self.steps += 1;
            return true;
        }
        if self
            .session
            .poll_deadline()
            .is_some_and(|deadline| deadline <= self.now)
        {
            let _ = self.input(Input::Tick);
            self.steps += 1;
            return true;
        }
        false
    }

    /// Processes the inbox and due deadlines until quiet; panics on livelock.
    pub fn drive(&mut self) {
        self.drive_bounded(10_000);
    }

    /// Like [`World::drive`], but fails when the world is not quiet after `max_steps` steps.
    pub fn drive_bounded(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            if !self.step() {
                return;
            }
        }
        self.fail(&format!("livelock: still busy after {max_steps} steps"));
    }

    /// Moves time forward to `target`, firing every deadline on the way.
    pub fn advance_to(&mut self, target: Timestamp) {
        self.drive();
        for _ in 0..100_000 {
            match self.session.poll_deadline() {
                Some(deadline) if deadline <= target => {
                    self.now = self.now.max(deadline);
                    self.drive();
                }
                _ => {
                    self.now = self.now.max(target);
                    self.drive();
                    return;
                }
            }
        }
        self.fail("deadlines keep coming: time cannot reach the target");
    }

    pub fn advance(&mut self, by: Duration) {
        self.advance_to(self.now.add(by));
    }

    /// Moves to the next deadline, if any, and handles it.
    pub fn advance_to_next_deadline(&mut self) -> bool {
        self.drive();
        match self.session.poll_deadline() {
            Some(deadline) => {
                self.now = self.now.max(deadline);
                self.drive();
                true
            }
            None => false,
        }
    }

    // ----- clients -------------------------------------------------------------------------

    /// A client connects asking for every event after `after`.
    pub fn attach(&mut self, after: Option<u64>) -> ConnId {
        let conn = self.conn();
        self.clients.insert(
            conn,
            Client {
                after,
                attached: true,
                received: Vec::new(),
            },
        );
        self.input(Input::ClientAttached { conn, after }).unwrap();
        self.drive();
        conn
    }

    pub fn detach(&mut self, conn: ConnId) {
        if let Some(client) = self.clients.get_mut(&conn) {
            client.attached = false;
        }
        self.input(Input::ClientDetached { conn }).unwrap();
        self.drive();
    }

    pub fn command(&mut self, conn: ConnId, command: ClientCommand) -> Result<Accepted, Rejection> {
        let result = self.input(Input::ClientCommand { conn, command });
        self.drive();
        result
    }

    /// A prompt over HTTP, attributed to the test user.
    pub fn prompt(&mut self, run: &str, text: &str) -> Result<Accepted, Rejection> {
        self.prompt_with(run, text, None)
    }

    pub fn prompt_with(
        &mut self,
        run: &str,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<Accepted, Rejection> {
        let input = Input::Prompt {
            run_id: run_id(run),
            by: attribution(),
            text: text.into(),
            client_msg_id: client_msg_id.map(|id| ClientMsgId::parse(id).unwrap()),
            conn: None,
        };
        let result = self.input(input);
        self.drive();
        result
    }

    pub fn cancel(&mut self, run: Option<&str>) -> Result<Accepted, Rejection> {
        let result = self.input(Input::Cancel {
            run_id: run.map(run_id),
        });
        self.drive();
        result
    }

    // ----- the sandbox ---------------------------------------------------------------------

    /// The newest box sends a message; numbered messages get the box's next `n`. It waits in
    /// the box's resend list until ACKed, and goes out now if the box has an accepted socket.
    pub fn sandbox_send(&mut self, make: impl FnOnce(u64) -> SandboxMessage) {
        let Some(spawn) = self.boxes.keys().last().copied() else {
            return;
        };
        let sim = self.boxes.get_mut(&spawn).unwrap();
        let message = make(sim.next_n);
        if let Some(n) = message.n() {
            sim.next_n = n + 1;
            sim.unacked.insert(n, message.clone());
            self.sandbox_log.push((spawn, n, message.clone()));
        }
        if let SandboxMessage::RunFinished { run_id, .. } = &message {
            if sim.current_run.as_ref() == Some(run_id) {
                sim.current_run = None;
            }
        }
        sim.last_sent = Some(message.clone());
        if let (Some(conn), true) = (sim.conn, sim.accepted) {
            self.inbox
                .push_back(Input::SandboxMessage { conn, message });
        }
    }

    pub fn delta(&mut self, run: &str, text: &str) {
        let (run_id, text) = (run_id(run), text.to_string());
        self.sandbox_send(|n| SandboxMessage::Event {
            run_id,
            n,
            event: Event::MessageDelta { text },
        });
        self.drive();
    }

    pub fn tool_call(&mut self, run: &str, call: &str, name: &str) {
        let run_id = run_id(run);
        let event = Event::ToolCall {
            call_id: CallId::parse(call).unwrap(),
            name: name.into(),
            input: serde_json::json!({"command": "ls"}),
        };
        self.sandbox_send(|n| SandboxMessage::Event { run_id, n, event });
        self.drive();
    }

    pub fn tool_result(&mut self, run: &str, call: &str) {
        let run_id = run_id(run);
        let event = Event::ToolResult {
            call_id: CallId::parse(call).unwrap(),
            status: switchboard_core::protocol::events::ToolStatus::Ok,
            output: serde_json::json!("Cargo.toml"),
        };
        self.sandbox_send(|n| SandboxMessage::Event { run_id, n, event });
        self.drive();
    }

    pub fn finish(&mut self, run: &str, status: TerminalStatus) {
        let run_id = run_id(run);
        let error = (status == TerminalStatus::Failed)
            .then(|| ErrorBody::new("agent_error", "the agent gave up"));
        self.sandbox_send(|n| SandboxMessage::RunFinished {
            run_id,
            n,
            status,
            stop_reason: Some("end_turn".into()),
            usage: Usage {
                input_tokens: 1200,
                output_tokens: 300,
            },
            error,
        });
        self.drive();
    }

    pub fn ask_permission(&mut self, run: &str, request: &str, tool: &str) {
        let (run_id, request_id, tool) = (run_id(run), request_id(request), tool.to_string());
        self.sandbox_send(|n| SandboxMessage::PermissionRequest {
            run_id,
            n,
            request_id,
            tool,
            input: serde_json::json!({"path": "src/lib.rs"}),
        });
        self.drive();
    }

    pub fn heartbeat(&mut self) {
        self.sandbox_send(|_| SandboxMessage::Heartbeat);
        self.drive();
    }

    /// The newest box sends its last message again (same `n`), as after a lost ACK.
    pub fn resend_last_sandbox_message(&mut self) {
        let Some(sim) = self.boxes.values().last() else {
            return;
        };
        if let (Some(message), Some(conn), true) = (sim.last_sent.clone(), sim.conn, sim.accepted) {
            self.inbox
                .push_back(Input::SandboxMessage { conn, message });
        }
        self.drive();
    }

    /// The newest box's socket drops (the box lives on).
    pub fn sandbox_drop(&mut self) {
        let Some(spawn) = self.boxes.keys().last().copied() else {
            return;
        };
        let sim = self.boxes.get_mut(&spawn).unwrap();
        if let Some(conn) = sim.conn.take() {
            sim.accepted = false;
            self.input(Input::SandboxDisconnected { conn }).unwrap();
        }
        self.drive();
    }

    /// The newest box dials back again with its token on a new socket.
    pub fn sandbox_reconnect(&mut self) {
        let Some(spawn) = self.boxes.keys().last().copied() else {
            return;
        };
        if self.boxes[&spawn].terminated {
            return;
        }
        let conn = self.conn();
        let old = {
            let sim = self.boxes.get_mut(&spawn).unwrap();
            sim.accepted = false;
            sim.conn.replace(conn)
        };
        let token_hash = self.boxes[&spawn].token_hash.clone();
        if let Some(old) = old {
            self.inbox
                .push_back(Input::SandboxDisconnected { conn: old });
        }
        self.input(Input::SandboxConnect { conn, token_hash })
            .unwrap();
        self.drive();
    }

    /// The provider reports the newest box gone.
    pub fn sandbox_exit(&mut self, reason: &str) {
        let Some(spawn) = self.boxes.keys().last().copied() else {
            return;
        };
        let sim = self.boxes.get_mut(&spawn).unwrap();
        sim.terminated = true;
        sim.accepted = false;
        let conn = sim.conn.take();
        let sandbox_id = sim.sandbox_id.clone();
        self.input(Input::SandboxExited {
            sandbox_id,
            reason: reason.into(),
        })
        .unwrap();
        if let Some(conn) = conn {
            self.inbox.push_back(Input::SandboxDisconnected { conn });
        }
        self.drive();
    }

    // ----- crash -----------------------------------------------------------------------------

    /// The process dies and the machine is rebuilt from the store: connections and the answers
    /// of port calls under way are lost; sandboxes live on and may dial back.
    pub fn crash_and_restore(&mut self) {
        self.log("~~ crash: machine rebuilt from the store".into());
        self.inbox.clear();
        for client in self.clients.values_mut() {
            client.attached = false;
        }
        for sim in self.boxes.values_mut() {
            sim.conn = None;
            sim.accepted = false;
        }
        let persisted = self.store.persisted();
        match Session::restore(self.now, self.config.clone(), persisted) {
            Ok(session) => self.session = session,
            Err(rejection) => self.fail(&format!("restore failed: {rejection}")),
        }
        self.process_effects();
        self.drive();
    }

    // ----- reading the results ---------------------------------------------------------------

    /// `execution_complete` statuses per run, from the store's log.
    pub fn terminal_statuses(&self) -> BTreeMap<String, Vec<TerminalStatus>> {
        let mut out: BTreeMap<String, Vec<TerminalStatus>> = BTreeMap::new();
        for envelope in &self.store.events {
            if let (Event::ExecutionComplete { status, .. }, Some(run_id)) =
                (&envelope.event, &envelope.run_id)
            {
                out.entry(run_id.to_string()).or_default().push(*status);
            }
        }
        out
    }

    /// The error code the run ended with.
    pub fn run_error(&self, run: &str) -> Option<String> {
        self.store
            .events
            .iter()
            .find_map(|e| match (&e.event, &e.run_id) {
                (
                    Event::ExecutionComplete {
                        error: Some(error), ..
                    },
                    Some(id),
                ) if id.as_str() == run => Some(error.code.clone()),
                _ => None,
            })
    }

    /// Frames the newest box received, compactly.
    pub fn sandbox_frames(&self) -> Vec<String> {
        self.current_box()
            .map(|b| b.received.iter().map(describe_to_sandbox).collect())
            .unwrap_or_default()
    }

    /// Types of the events in the store, as `#seq type`.
    pub fn event_types(&self) -> Vec<String> {
        self.store
            .events
            .iter()
            .map(|e| format!("#{} {}", e.seq, describe_event(e)))
            .collect()
    }
}

// ----- compact descriptions for the trace ----------------------------------------------------

fn status_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

pub fn describe_event(envelope: &EventEnvelope) -> String {
    let run = envelope
        .run_id
        .as_ref()
        .map(|r| format!(" {r}"))
        .unwrap_or_default();
    let detail = match &envelope.event {
        Event::SessionStatus { status } => status_name(status),
        Event::SandboxStatus { status, reason } => match reason {
            Some(reason) => format!("{} ({reason})", status_name(status)),
            None => status_name(status),
        },
        Event::RunQueued {
            position,
            client_msg_id,
            ..
        } => match client_msg_id {
            Some(id) => format!("at {position} msg {id}"),
            None => format!("at {position}"),
        },
        Event::RunStarted {} => String::new(),
        Event::MessageDelta { text } | Event::ThoughtDelta { text } => format!("{text:?}"),
        Event::ToolCall { call_id, name, .. } => format!("{call_id} {name}"),
        Event::ToolResult {
            call_id, status, ..
        } => format!("{call_id} {}", status_name(status)),
        Event::Plan { entries } => format!("{} entries", entries.len()),
        Event::PermissionRequest {
            request_id, tool, ..
        } => format!("{request_id} {tool}"),
        Event::PermissionResolved {
            request_id,
            decision,
            by,
        } => {
            format!(
                "{request_id} {} by {}",
                status_name(decision),
                status_name(by)
            )
        }
        Event::ContextRestored { from_seq, turns } => format!("from #{from_seq}, {turns} turns"),
        Event::EnvironmentDetected {
            package_manager, ..
        } => package_manager.clone(),
        Event::ExecutionComplete {
            status,
            cost_micros,
            error,
            ..
        } => match error {
            Some(error) => format!(
                "{} cost {cost_micros} error {}",
                status_name(status),
                error.code
            ),
            None => format!("{} cost {cost_micros}", status_name(status)),
        },
        Event::Error { code, .. } => code.clone(),
    };
    let critical = if envelope.critical { " !" } else { "" };
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" {detail}")
    };
    format!("{}{run}{detail}{critical}", envelope.event.type_name())
}

fn conns(to: &[ConnId]) -> String {
    to.iter()
        .map(|c| format!("c{}", c.0))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn describe_to_sandbox(message: &ServerToSandbox) -> String {
    match message {
        ServerToSandbox::Run { run_id, .. } => format!("run {run_id}"),
        ServerToSandbox::Cancel { run_id } => format!("cancel {run_id}"),
        ServerToSandbox::Ack { n } => format!("ack {n}"),
        ServerToSandbox::Permission {
            request_id,
            decision,
        } => format!("permission {request_id} {}", status_name(decision)),
        ServerToSandbox::Restore { turns } => format!("restore {} turns", turns.len()),
        ServerToSandbox::Shutdown => "shutdown".into(),
    }
}

pub fn describe_effect(effect: &Effect) -> String {
    match effect {
        Effect::Persist(commit) => {
            let mut parts: Vec<String> = commit
                .events
                .iter()
                .map(|e| format!("#{} {}", e.seq, describe_event(e)))
                .collect();
            if commit.snapshot.is_some() {
                parts.push("snapshot".into());
            }
            for record in &commit.outbox_put {
                parts.push(format!("outbox+{}", record.run_id));
            }
            for run_id in &commit.outbox_remove {
                parts.push(format!("outbox-{run_id}"));
            }
            format!("persist [{}]", parts.join(", "))
        }
        Effect::Deliver { to, frame } => match frame {
            ServerFrame::Event(envelope) => format!("deliver {} #{}", conns(to), envelope.seq),
            ServerFrame::Control(ControlFrame::Hello {
                status, last_seq, ..
            }) => {
                format!(
                    "deliver {} hello {} last_seq {last_seq}",
                    conns(to),
                    status_name(status)
                )
            }
            ServerFrame::Control(ControlFrame::Pong) => format!("deliver {} pong", conns(to)),
            ServerFrame::Control(ControlFrame::Error { code, .. }) => {
                format!("deliver {} error {code}", conns(to))
            }
        },
        Effect::Replay {
            conn,
            after,
            through,
        } => format!("replay c{} ({after}..={through}]", conn.0),
        Effect::Resend { to, events } => {
            let seqs: Vec<String> = events.iter().map(|e| format!("#{}", e.seq)).collect();
            format!("resend {} [{}]", conns(to), seqs.join(", "))
        }
        Effect::AcceptSandbox { conn } => format!("accept sandbox c{}", conn.0),
        Effect::RejectSandbox { conn } => format!("reject sandbox c{}", conn.0),
        Effect::CloseSandbox { conn } => format!("close sandbox c{}", conn.0),
        Effect::SendToSandbox { conn, message } => {
            format!("to sandbox c{}: {}", conn.0, describe_to_sandbox(message))
        }
        Effect::DispatchRun { conn, run_id, .. } => format!("dispatch {run_id} to c{}", conn.0),
        Effect::SpawnSandbox { spawn, .. } => format!("spawn #{spawn}"),
        Effect::TerminateSandbox { sandbox_id } => format!("terminate {sandbox_id}"),
        Effect::RecordRun(record) => {
            format!(
                "record {} {} ({} events)",
                record.run_id,
                status_name(&record.status),
                record.event_count
            )
        }
        Effect::Publish(event) => format!(
            "publish {}/{}",
            status_name(&event.status),
            status_name(&event.sandbox)
        ),
        Effect::Audit(entry) => format!(
            "audit {} {}",
            status_name(&entry.action),
            status_name(&entry.outcome)
        ),
        Effect::Hibernate => "hibernate".into(),
        Effect::Evict { reason } => format!("evict: {}", reason.message),
    }
}

fn describe_sandbox_message(message: &SandboxMessage) -> String {
    match message {
        SandboxMessage::Hello { sandbox_id, .. } => format!("hello {sandbox_id}"),
        SandboxMessage::Event { run_id, n, event } => {
            format!("n{n} {} {run_id}", event.type_name())
        }
        SandboxMessage::RunFinished {
            run_id, n, status, ..
        } => format!("n{n} run_finished {run_id} {}", status_name(status)),
        SandboxMessage::PermissionRequest {
            run_id,
            n,
            request_id,
            tool,
            ..
        } => {
            format!("n{n} permission_request {run_id} {request_id} {tool}")
        }
        SandboxMessage::Workspace { n, files } => format!("n{n} workspace {} files", files.len()),
        SandboxMessage::Heartbeat => "heartbeat".into(),
    }
}

pub fn describe_input(input: &Input) -> String {
    match input {
        Input::Start => "start".into(),
        Input::ClientAttached { conn, after } => match after {
            Some(after) => format!("client c{} attaches after {after}", conn.0),
            None => format!("client c{} attaches", conn.0),
        },
        Input::ClientDetached { conn } => format!("client c{} detaches", conn.0),
        Input::ClientCommand { conn, command } => {
            let command = match command {
                ClientCommand::Cancel {
                    run_id: Some(run_id),
                } => format!("cancel {run_id}"),
                ClientCommand::Cancel { run_id: None } => "cancel".into(),
                ClientCommand::Ack { seq } => format!("ack {seq}"),
                ClientCommand::Permission {
                    request_id,
                    decision,
                } => {
                    format!("permission {request_id} {}", status_name(decision))
                }
                ClientCommand::Ping => "ping".into(),
            };
            format!("client c{}: {command}", conn.0)
        }
        Input::Prompt {
            run_id,
            text,
            client_msg_id,
            ..
        } => match client_msg_id {
            Some(id) => format!("prompt {run_id} {text:?} msg {id}"),
            None => format!("prompt {run_id} {text:?}"),
        },
        Input::Cancel {
            run_id: Some(run_id),
        } => format!("cancel {run_id}"),
        Input::Cancel { run_id: None } => "cancel".into(),
        Input::Close => "close".into(),
        Input::SandboxConnect { conn, token_hash } => {
            format!(
                "sandbox c{} connects with token {:02x}{:02x}",
                conn.0, token_hash.0[0], token_hash.0[1]
            )
        }
        Input::SandboxDisconnected { conn } => format!("sandbox c{} disconnects", conn.0),
        Input::SandboxMessage { conn, message } => {
            format!("sandbox c{}: {}", conn.0, describe_sandbox_message(message))
        }
        Input::SandboxTokenIssued { spawn, .. } => format!("token issued for spawn #{spawn}"),
        Input::SpawnResult { spawn, result } => match result {
            Ok(id) => format!("spawn #{spawn} created {id}"),
            Err(failure) => format!("spawn #{spawn} failed: {}", failure.message),
        },
        Input::SandboxExited { sandbox_id, reason } => format!("{sandbox_id} exited: {reason}"),
        Input::DispatchResult { run_id, result } => match result {
            Ok(_) => format!("dispatched {run_id}"),
            Err(failure) => format!("dispatch of {run_id} failed: {}", failure.message),
        },
        Input::RunRecorded { run_id, result } => match result {
            Ok(()) => format!("ledger recorded {run_id}"),
            Err(failure) => format!("ledger failed {run_id}: {}", failure.message),
        },
        Input::StoreFailed { failure } => format!("store failed: {}", failure.message),
        Input::Tick => "tick".into(),
    }
}

/// Decision shorthand for tests.
pub const ALLOW: PermissionDecision = PermissionDecision::AllowOnce;
