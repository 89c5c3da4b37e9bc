//! The session state machine itself: its public API, the per-`handle` commit, the reconciliation
//! that follows every input, and the watchdog.
//!
//! Run handling lives in `runs.rs`, the sandbox link in `sandbox_link.rs`, the persisted layout in
//! `state.rs`; they all add `impl Session` blocks to the type defined here.

use super::state::{InFlightPeek, Link, Phase, SandboxSlot, State, VersionPeek, SNAPSHOT_VERSION};
use super::types::*;
use crate::error::ErrorClass;
use crate::ids::{ConnId, RunId};
use crate::model::ModelRef;
use crate::protocol::client::ControlFrame;
use crate::protocol::events::{Event, EventEnvelope, SandboxStatus, SessionStatus, TerminalStatus};
use crate::protocol::ServerFrame;
use crate::run::{RunRecord, RunState};
use crate::tenancy::SessionKey;
use crate::time::Timestamp;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// One session's state machine. See the module docs of `session` for how to drive it.
///
/// What the shell owes the machine:
/// - Carry out effects in the order `poll_effect` returns them. Each `handle` call yields at most
///   one [`Effect::Persist`], always first; nothing after it may happen before it is durable.
///   When it cannot be made durable, feed [`Input::StoreFailed`] (the machine fails closed).
/// - To write the commits of several calls as one, wrap the calls in
///   [`Session::begin_coalescing`] and [`Session::end_coalescing`]: merge their `Persist`s, add the
///   snapshot `end_coalescing` returns, and hold everything that followed the first `Persist`
///   until the merged commit is durable.
/// - Answer every [`Effect::SpawnSandbox`] with [`Input::SandboxTokenIssued`] (at once) and
///   [`Input::SpawnResult`]; every [`Effect::DispatchRun`] with [`Input::DispatchResult`]; every
///   [`Effect::RecordRun`] with [`Input::RunRecorded`]. A `RecordRun` left unanswered for
///   `ledger_retry_max` is sent again (the ledger is idempotent on run id).
/// - Arm one timer at [`Session::poll_deadline`] after each call and feed [`Input::Tick`] when it
///   fires. An early tick does nothing.
/// - After [`Session::restore`], drain `poll_effect` before feeding inputs: outbox records go out
///   to the ledger again.
///
/// Timers that are not persisted (run idle, sandbox idle, critical re-send, hibernation, ledger
/// retries) restart from the restore time; spawn, reconnect, cancel and permission deadlines are
/// persisted as timestamps.
#[derive(Debug)]
pub struct Session {
    pub(super) key: SessionKey,
    pub(super) config: SessionConfig,
    pub(super) state: State,
    pub(super) live: Live,
    effects: VecDeque<Effect>,
}

/// What the machine keeps only while it is live: connections, timers, the outbox schedule and the
/// work of the current `handle` call. Rebuilt on restore.
#[derive(Debug)]
pub(super) struct Live {
    /// Attached clients, each with the highest seq it already has (live events above it go out).
    pub clients: BTreeMap<ConnId, u64>,
    /// Run records not yet acknowledged by the ledger, oldest first.
    pub outbox: Vec<OutboxEntry>,
    pub resend_at: Option<Timestamp>,
    pub hibernate_at: Option<Timestamp>,
    /// `Hibernate` went out and nothing has happened since.
    pub hibernated: bool,
    /// Since when the connected sandbox has had nothing to do.
    pub sandbox_idle_since: Option<Timestamp>,
    /// The snapshot as last persisted (`None` before the first), to tell whether a commit
    /// needs a new one.
    pub persisted_snapshot: Option<SessionSnapshot>,
    /// Where each step serializes the state, kept between steps for its capacity.
    pub snapshot_buffer: Vec<u8>,
    /// Between [`Session::begin_coalescing`] and [`Session::end_coalescing`].
    pub coalescing: bool,
    /// Statuses last published on the org event bus.
    pub published: Option<(SessionStatus, SandboxStatus)>,
    pub step: Step,
    /// The store failed and `Evict` went out: this machine takes no more input.
    pub evicted: Option<PortFailure>,
}

/// A run record waiting for the ledger.
#[derive(Debug, Clone)]
pub(super) struct OutboxEntry {
    pub record: RunRecord,
    /// A `RecordRun` went out and no answer came yet.
    pub awaiting_answer: bool,
    /// When to send `RecordRun` (again): the retry time, or the answer timeout while awaiting.
    pub next_attempt_at: Timestamp,
    /// Delay before the next retry after a failure.
    pub retry_delay: Duration,
}

/// What one `handle` call produced so far: it becomes one `Persist` followed by the rest.
#[derive(Debug, Default)]
pub(super) struct Step {
    pub events: Vec<EventEnvelope>,
    pub outbox_put: Vec<RunRecord>,
    pub outbox_remove: Vec<RunId>,
    /// Effects that go out after the `Persist`, in order.
    pub effects: Vec<Effect>,
    /// `Hibernate` goes out last.
    pub hibernate: bool,
}

/// `now + d`, never earlier than one millisecond after `now`, so that no timer can fire again at
/// the instant it was handled (which would livelock a driver).
pub(super) fn later(now: Timestamp, d: Duration) -> Timestamp {
    now.add(d.max(Duration::from_millis(1)))
}

pub(super) fn rejection(
    class: ErrorClass,
    code: &'static str,
    message: impl Into<String>,
) -> Rejection {
    Rejection {
        class,
        code,
        message: message.into(),
    }
}

impl Session {
    /// A brand-new session. Call `handle(now, Input::Start)` next.
    pub fn new(now: Timestamp, config: SessionConfig, init: SessionInit) -> Session {
        let state = State {
            version: SNAPSHOT_VERSION,
            org_id: init.key.org().clone(),
            session_id: init.key.session().clone(),
            model: init.model,
            agent: init.agent,
            repo: init.repo,
            created_by: init.created_by,
            created_at: now,
            phase: Phase::Created,
            announced_status: None,
            next_seq: 1,
            queue: VecDeque::new(),
            in_flight: None,
            unacked: Vec::new(),
            sandbox: SandboxSlot {
                spawn: 0,
                attempts: 0,
                token_hash: None,
                sandbox_id: None,
                link: Link::Absent,
                last_n: 0,
                restore_pending: false,
                status: SandboxStatus::None,
                outgoing: Vec::new(),
            },
            recent_prompts: VecDeque::new(),
            conversation: Vec::new(),
            conversation_from_seq: None,
            permission_asks: Vec::new(),
            permissions: init.permissions,
        };
        Session {
            key: init.key,
            config,
            state,
            live: Live {
                clients: BTreeMap::new(),
                outbox: Vec::new(),
                resend_at: None,
                hibernate_at: None,
                hibernated: false,
                sandbox_idle_since: None,
                persisted_snapshot: None,
                snapshot_buffer: Vec::new(),
                coalescing: false,
                published: None,
                step: Step::default(),
                evicted: None,
            },
            effects: VecDeque::new(),
        }
    }

    /// Rebuilds a machine from what the store persisted. A snapshot it cannot read is `Corrupt`.
    ///
    /// No client is attached afterwards, and a sandbox that was connected counts as disconnected
    /// from `now` (it has the reconnect grace to dial back). Drain [`Session::poll_effect`] next:
    /// every outbox entry is flushed to the ledger again (the ledger is idempotent on run id).
    pub fn restore(
        now: Timestamp,
        config: SessionConfig,
        persisted: Persisted,
    ) -> Result<Session, Rejection> {
        let corrupt =
            |message: String| rejection(ErrorClass::Corrupt, "unreadable_snapshot", message);
        let text = persisted.snapshot.as_str();
        let version = serde_json::from_str::<VersionPeek>(text)
            .map_err(|e| corrupt(format!("snapshot is not a JSON object: {e}")))?
            .version
            .as_ref()
            .and_then(serde_json::Value::as_u64);
        if version != Some(u64::from(SNAPSHOT_VERSION)) {
            return Err(corrupt(format!(
                "snapshot version {version:?} is not {SNAPSHOT_VERSION}"
            )));
        }
        let mut state: State = serde_json::from_str(text)
            .map_err(|e| corrupt(format!("snapshot does not decode: {e}")))?;
        if state.next_seq == 0 {
            return Err(corrupt("snapshot has next_seq 0".into()));
        }

        for run in state.queue.iter_mut() {
            run.events = vec![run.queued_event()];
            run.last_life = now;
        }
        if let Some(run) = state.in_flight.as_mut() {
            let mut events: Vec<EventEnvelope> = persisted
                .active_run_events
                .into_iter()
                .filter(|e| {
                    e.run_id.as_ref() == Some(&run.run_id)
                        && e.seq >= run.queued_seq
                        && e.seq < state.next_seq
                })
                .collect();
            events.sort_by_key(|e| e.seq);
            events.dedup_by_key(|e| e.seq);
            if events.first().map(|e| e.seq) != Some(run.queued_seq) {
                events.insert(0, run.queued_event());
            }
            run.reply = events
                .iter()
                .filter_map(|e| match &e.event {
                    Event::MessageDelta { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            run.events = events;
            run.last_life = now;
        }
        // Sockets do not survive a restart.
        if let Link::Connected { .. } = state.sandbox.link {
            state.sandbox.link = Link::Reconnecting { since: now };
        }

        let key = SessionKey::from_host_storage(state.org_id.clone(), state.session_id.clone());
        let published = Some((state.phase.visible(), state.sandbox.status));
        let mut session = Session {
            key,
            config,
            state,
            live: Live {
                clients: BTreeMap::new(),
                outbox: Vec::new(),
                resend_at: None,
                hibernate_at: None,
                hibernated: false,
                sandbox_idle_since: None,
                persisted_snapshot: Some(persisted.snapshot),
                snapshot_buffer: Vec::new(),
                coalescing: false,
                published,
                step: Step::default(),
                evicted: None,
            },
            effects: VecDeque::new(),
        };
        for record in persisted.outbox {
            if session
                .live
                .outbox
                .iter()
                .any(|e| e.record.run_id == record.run_id)
            {
                continue;
            }
            session.send_to_ledger(now, record, session.config.ledger_retry_initial);
        }
        session.finish_step(now);
        Ok(session)
    }

    /// Which run was in flight in `snapshot`, and the seq of its first event, so the store can
    /// load that run's events for [`Persisted::active_run_events`].
    pub fn active_run_first_seq(snapshot: &SessionSnapshot) -> Option<(RunId, u64)> {
        let peek: InFlightPeek = serde_json::from_str(snapshot.as_str()).ok()?;
        peek.in_flight.map(|run| (run.run_id, run.queued_seq))
    }

    /// Feeds one input. Effects are queued for [`Session::poll_effect`]; a rejection changes
    /// nothing and queues nothing.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Result<Accepted, Rejection> {
        if let Some(failure) = &self.live.evicted {
            return Err(Rejection {
                class: ErrorClass::Unavailable,
                code: "session_evicted",
                message: format!(
                    "the session is being rebuilt after a store failure: {}",
                    failure.message
                ),
            });
        }
        let result = self.apply(now, input);
        match &result {
            Ok(_) => self.finish_step(now),
            Err(_) => debug_assert!(
                self.live.step.events.is_empty() && self.live.step.effects.is_empty(),
                "a rejected input must not change anything"
            ),
        }
        result
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Starts a run of steps whose commits the shell merges and writes as one (a batch of sandbox
    /// messages that queued up). Until [`Session::end_coalescing`], every accepted step still
    /// begins with a `Persist`, but one that leaves the snapshot out, and one that goes out even
    /// when nothing else is in it: everything the step does after it must wait for the merged
    /// commit. The state is then serialized once for the whole run instead of once per step.
    pub fn begin_coalescing(&mut self) {
        self.live.coalescing = true;
    }

    /// Ends the run of steps begun by [`Session::begin_coalescing`]: the snapshot the merged
    /// commit must carry, when the state differs from the last snapshot handed out.
    pub fn end_coalescing(&mut self) -> Option<SessionSnapshot> {
        self.live.coalescing = false;
        if self.live.evicted.is_some() {
            return None;
        }
        self.changed_snapshot()
    }

    /// The earliest time at which `handle(now, Input::Tick)` has something to do.
    pub fn poll_deadline(&self) -> Option<Timestamp> {
        if self.live.evicted.is_some() {
            return None;
        }
        let config = &self.config;
        let mut deadlines: Vec<Timestamp> = Vec::new();
        match self.state.sandbox.link {
            Link::Spawning { since } => deadlines.push(later(since, config.spawn_timeout)),
            Link::Reconnecting { since } => {
                deadlines.push(later(since, config.sandbox_reconnect_grace))
            }
            Link::Absent | Link::Connected { .. } => {}
        }
        if let Some(run) = self.state.in_flight.as_ref() {
            deadlines.extend(self.run_deadline(run));
        }
        deadlines.extend(self.state.permission_asks.iter().map(|ask| ask.deadline));
        if let Some(since) = self.live.sandbox_idle_since {
            deadlines.push(later(since, config.sandbox_idle_timeout));
        }
        deadlines.extend(self.live.outbox.iter().map(|entry| entry.next_attempt_at));
        deadlines.extend(self.live.resend_at);
        deadlines.extend(self.live.hibernate_at);
        deadlines.into_iter().min()
    }

    pub fn key(&self) -> &SessionKey {
        &self.key
    }

    /// Summary for `GET /v1/sessions/{id}`.
    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.state.session_id.clone(),
            status: self.status(),
            model: self.state.model.clone(),
            sandbox: SandboxInfo {
                status: self.sandbox_status(),
            },
            queue_length: u32::try_from(self.queue_len()).unwrap_or(u32::MAX),
            last_seq: self.last_seq(),
            created_at: self.state.created_at,
            permissions: self.permission_policy().clone(),
        }
    }

    /// The permission policy in force: the session's own, else the server's.
    pub fn permission_policy(&self) -> &PermissionPolicy {
        self.state
            .permissions
            .as_ref()
            .unwrap_or(&self.config.permission_policy)
    }

    /// The session status as clients see it.
    pub fn status(&self) -> SessionStatus {
        self.state.phase.visible()
    }

    pub fn sandbox_status(&self) -> SandboxStatus {
        self.state.sandbox.status
    }

    /// Seq of the latest event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.state.next_seq - 1
    }

    /// Runs waiting in the queue (the run in flight not included).
    pub fn queue_len(&self) -> usize {
        self.state.queue.len()
    }

    /// Nothing is live: no client, no run, no sandbox, no spawn under way, nothing for the ledger.
    pub fn is_hibernatable(&self) -> bool {
        self.live.clients.is_empty()
            && self.state.queue.is_empty()
            && self.state.in_flight.is_none()
            && self.state.sandbox.link == Link::Absent
            && self.live.outbox.is_empty()
    }

    pub fn attached_clients(&self) -> usize {
        self.live.clients.len()
    }

    pub fn created_at(&self) -> Timestamp {
        self.state.created_at
    }

    pub fn model(&self) -> &ModelRef {
        &self.state.model
    }

    fn apply(&mut self, now: Timestamp, input: Input) -> Result<Accepted, Rejection> {
        match input {
            Input::Start => self.start(now),
            Input::ClientAttached { conn, after } => self.attach_client(conn, after),
            Input::ClientDetached { conn } => {
                self.live.clients.remove(&conn);
            }
            Input::ClientCommand { conn, command } => {
                return self.client_command(now, conn, command)
            }
            Input::Prompt {
                run_id,
                by,
                text,
                client_msg_id,
                conn: _,
            } => return self.prompt(now, run_id, by, text, client_msg_id),
            Input::Cancel { run_id } => self.cancel(now, run_id)?,
            Input::Close => self.close(now),
            Input::SandboxConnect { conn, token_hash } => {
                self.sandbox_connect(now, conn, token_hash)
            }
            Input::SandboxDisconnected { conn } => self.sandbox_disconnected(now, conn),
            Input::SandboxMessage { conn, message } => self.sandbox_message(now, conn, message),
            Input::SandboxTokenIssued { spawn, token_hash } => self.token_issued(spawn, token_hash),
            Input::SpawnResult { spawn, result } => self.spawn_result(now, spawn, result),
            Input::SandboxExited { sandbox_id, reason } => {
                self.sandbox_exited(now, sandbox_id, reason)
            }
            Input::DispatchResult { run_id, result } => self.dispatch_result(now, run_id, result),
            Input::RunRecorded { run_id, result } => self.run_recorded(now, run_id, result),
            Input::StoreFailed { failure } => self.store_failed(now, failure),
            Input::Tick => self.tick(now),
        }
        Ok(Accepted::Done)
    }

    // ----- events and the commit -------------------------------------------------------------

    /// Appends an event: next seq, stamped `now`, delivered to every attached client after the
    /// commit, kept un-ACKed when critical, and added to the run in flight when it is one of its.
    /// Returns it as the step holds it (clone it only where it must be kept elsewhere).
    pub(super) fn emit(
        &mut self,
        now: Timestamp,
        run_id: Option<RunId>,
        event: Event,
    ) -> &EventEnvelope {
        let seq = self.state.next_seq;
        self.state.next_seq += 1;
        let envelope = EventEnvelope {
            seq,
            run_id,
            at: now,
            critical: event.is_critical(),
            event,
        };
        if envelope.critical {
            self.state.unacked.push(envelope.clone());
        }
        if let Some(run) = self.state.in_flight.as_mut() {
            if envelope.run_id.as_ref() == Some(&run.run_id) {
                run.events.push(envelope.clone());
            }
        }
        let to: Vec<ConnId> = self
            .live
            .clients
            .iter()
            .filter(|(_, seen)| seq > **seen)
            .map(|(conn, _)| *conn)
            .collect();
        if !to.is_empty() {
            self.live.step.effects.push(Effect::Deliver {
                to,
                frame: ServerFrame::Event(envelope.clone()),
            });
        }
        self.live.step.events.push(envelope);
        self.live
            .step
            .events
            .last()
            .expect("the event was just added")
    }

    /// Queues an effect to go out after this call's `Persist`.
    pub(super) fn effect(&mut self, effect: Effect) {
        self.live.step.effects.push(effect);
    }

    /// Ends a `handle` call: reconcile, re-arm timers, then queue one `Persist` (events, snapshot
    /// if the state changed, outbox changes) followed by every other effect of the call.
    fn finish_step(&mut self, now: Timestamp) {
        if self.live.evicted.is_some() {
            // Nothing more is decided or written: only the eviction's own effects go out.
            let step = std::mem::take(&mut self.live.step);
            self.effects.extend(step.effects);
            return;
        }
        self.reconcile(now);
        self.rearm_timers(now);

        let step = std::mem::take(&mut self.live.step);
        let coalescing = self.live.coalescing;
        let commit = Commit {
            events: step.events,
            snapshot: if coalescing {
                None
            } else {
                self.changed_snapshot()
            },
            outbox_put: step.outbox_put,
            outbox_remove: step.outbox_remove,
        };
        if coalescing || !commit.is_empty() {
            self.effects.push_back(Effect::Persist(commit));
        }
        self.effects.extend(step.effects);

        let statuses = (self.status(), self.sandbox_status());
        if self.state.phase != Phase::Created && self.live.published != Some(statuses) {
            self.live.published = Some(statuses);
            self.effects.push_back(Effect::Publish(OrgEvent {
                org_id: self.state.org_id.clone(),
                session_id: self.state.session_id.clone(),
                status: statuses.0,
                sandbox: statuses.1,
                at: now,
            }));
        }
        if step.hibernate {
            self.effects.push_back(Effect::Hibernate);
        }
    }

    /// The state's snapshot when it differs from the one last persisted (which it then becomes).
    ///
    /// The state is serialized straight to JSON text and compared byte for byte: no value tree is
    /// built, and a change can never be missed. The text is the JSON object that printing a
    /// `serde_json::Value` of the state gave before: the same bytes where serde_json keeps object
    /// keys in insertion order (`preserve_order`, which the server's build has through
    /// `agent-client-protocol`), the same keys in another order otherwise.
    pub(super) fn changed_snapshot(&mut self) -> Option<SessionSnapshot> {
        let buffer = &mut self.live.snapshot_buffer;
        buffer.clear();
        serde_json::to_writer(&mut *buffer, &self.state)
            .expect("the session state always serializes");
        if self
            .live
            .persisted_snapshot
            .as_ref()
            .is_some_and(|persisted| persisted.as_str().as_bytes() == buffer.as_slice())
        {
            return None;
        }
        let text = std::str::from_utf8(buffer).expect("serde_json writes UTF-8");
        let snapshot = SessionSnapshot::from_json(text);
        self.live.persisted_snapshot = Some(snapshot.clone());
        Some(snapshot)
    }

    /// Carries out what the state calls for after any input: dispatch the head of the queue or
    /// spawn a sandbox for it, keep `Ready`/`Running` in step with the run, announce the status.
    fn reconcile(&mut self, now: Timestamp) {
        if self.state.phase.accepts_work()
            && self.state.in_flight.is_none()
            && !self.state.queue.is_empty()
        {
            match self.state.sandbox.link {
                Link::Connected { conn } => self.dispatch_head(now, conn),
                Link::Absent => self.begin_spawn_cycle(now),
                Link::Spawning { .. } | Link::Reconnecting { .. } => {}
            }
        }
        if matches!(self.state.phase, Phase::Ready | Phase::Running) {
            // Running from a run's start until nothing is in flight: a run dispatched right after
            // another keeps the session running, without a `ready` blip in between.
            self.state.phase = match self.state.in_flight.as_ref().map(|run| run.state) {
                Some(RunState::Running) => Phase::Running,
                Some(_) => self.state.phase,
                None => Phase::Ready,
            };
        }
        self.announce_status(now);
    }

    /// Emits `session.status` when the visible status differs from the last announced one.
    pub(super) fn announce_status(&mut self, now: Timestamp) {
        if self.state.phase == Phase::Created {
            return;
        }
        let status = self.state.phase.visible();
        if self.state.announced_status != Some(status) {
            self.state.announced_status = Some(status);
            self.emit(now, None, Event::SessionStatus { status });
        }
    }

    /// Sets the sandbox status clients see, with a `sandbox.status` event when it changes.
    pub(super) fn set_sandbox_status(
        &mut self,
        now: Timestamp,
        status: SandboxStatus,
        reason: Option<&str>,
    ) {
        if self.state.sandbox.status != status {
            self.state.sandbox.status = status;
            self.emit(
                now,
                None,
                Event::SandboxStatus {
                    status,
                    reason: reason.map(str::to_string),
                },
            );
        }
    }

    fn rearm_timers(&mut self, now: Timestamp) {
        let sandbox_idle = matches!(self.state.sandbox.link, Link::Connected { .. })
            && self.state.in_flight.is_none()
            && self.state.queue.is_empty();
        if sandbox_idle {
            self.live.sandbox_idle_since.get_or_insert(now);
        } else {
            self.live.sandbox_idle_since = None;
        }

        if !self.live.clients.is_empty() && !self.state.unacked.is_empty() {
            let interval = self.config.critical_resend_interval;
            self.live
                .resend_at
                .get_or_insert_with(|| later(now, interval));
        } else {
            self.live.resend_at = None;
        }

        if self.is_hibernatable() {
            if !self.live.hibernated {
                let after = self.config.hibernate_after;
                self.live
                    .hibernate_at
                    .get_or_insert_with(|| later(now, after));
            }
        } else {
            self.live.hibernate_at = None;
            self.live.hibernated = false;
        }
    }

    // ----- lifecycle -------------------------------------------------------------------------

    fn start(&mut self, now: Timestamp) {
        if self.state.phase != Phase::Created {
            return;
        }
        self.state.phase = Phase::Provisioning;
        self.announce_status(now);
        if self.state.sandbox.link == Link::Absent {
            self.begin_spawn_cycle(now);
        }
    }

    /// Cancels everything, shuts the sandbox down and ends `closed`. A second close does nothing.
    fn close(&mut self, now: Timestamp) {
        if !self.state.phase.accepts_work() {
            return;
        }
        self.state.phase = Phase::Closing;
        self.end_all_runs(now, TerminalStatus::Cancelled, None);
        self.shut_down_sandbox(now, "session_closed");
        self.state.phase = Phase::Closed;
        self.announce_status(now);
    }

    /// The store cannot persist: fail closed, as a crash would. Nothing more is written (no error
    /// event, no ledger record: they could not be durable, and a record of an outcome the store
    /// never saw would contradict the session rebuilt from it). Clients are told with an
    /// unsequenced `error` frame, the sandbox socket is closed (the bridge re-dials and re-sends
    /// what was not ACKed), and the shell drops the actor.
    fn store_failed(&mut self, _now: Timestamp, failure: PortFailure) {
        let clients: Vec<ConnId> = self.live.clients.keys().copied().collect();
        if !clients.is_empty() {
            self.effect(Effect::Deliver {
                to: clients,
                frame: ServerFrame::Control(ControlFrame::Error {
                    code: "store_unavailable".into(),
                    message: format!(
                        "the session store is unavailable ({}); reconnect to resume",
                        failure.message
                    ),
                }),
            });
        }
        if let Link::Connected { conn } = self.state.sandbox.link {
            self.effect(Effect::CloseSandbox { conn });
        }
        self.effect(Effect::Evict {
            reason: failure.clone(),
        });
        self.live.evicted = Some(failure);
    }

    // ----- clients ---------------------------------------------------------------------------

    fn attach_client(&mut self, conn: ConnId, after: Option<u64>) {
        let last_seq = self.last_seq();
        let after = after.unwrap_or(0);
        let hello = ControlFrame::Hello {
            session_id: self.state.session_id.clone(),
            status: self.status(),
            last_seq,
        };
        self.effect(Effect::Deliver {
            to: vec![conn],
            frame: ServerFrame::Control(hello),
        });
        if after < last_seq {
            self.effect(Effect::Replay {
                conn,
                after,
                through: last_seq,
            });
        }
        let resend: Vec<EventEnvelope> = self
            .state
            .unacked
            .iter()
            .filter(|e| e.seq <= after)
            .cloned()
            .collect();
        if !resend.is_empty() {
            self.effect(Effect::Resend {
                to: vec![conn],
                events: resend,
            });
        }
        self.live.clients.insert(conn, after.max(last_seq));
    }

    fn client_command(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        command: ClientCommand,
    ) -> Result<Accepted, Rejection> {
        match command {
            ClientCommand::Ping => {
                self.effect(Effect::Deliver {
                    to: vec![conn],
                    frame: ServerFrame::Control(ControlFrame::Pong),
                });
            }
            ClientCommand::Ack { seq } => self.state.unacked.retain(|e| e.seq > seq),
            ClientCommand::Cancel { run_id } => self.cancel(now, run_id)?,
            ClientCommand::Permission {
                request_id,
                decision,
            } => {
                if !self.answer_permission(now, &request_id, decision) {
                    let error = ControlFrame::Error {
                        code: "unknown_request".into(),
                        message: format!(
                            "no permission request {request_id} is waiting for an answer"
                        ),
                    };
                    self.effect(Effect::Deliver {
                        to: vec![conn],
                        frame: ServerFrame::Control(error),
                    });
                }
            }
        }
        Ok(Accepted::Done)
    }

    // ----- watchdog --------------------------------------------------------------------------

    /// Processes everything due at `now`. Calling it early does nothing.
    fn tick(&mut self, now: Timestamp) {
        match self.state.sandbox.link {
            Link::Spawning { since } if now >= later(since, self.config.spawn_timeout) => {
                let message = format!(
                    "the sandbox did not dial back within {:?}",
                    self.config.spawn_timeout
                );
                self.spawn_attempt_failed(now, "sandbox_spawn_timeout", &message);
            }
            Link::Reconnecting { since }
                if now >= later(since, self.config.sandbox_reconnect_grace) =>
            {
                self.sandbox_lost(now, "reconnect_timeout");
            }
            _ => {}
        }

        self.run_watchdog(now);
        self.expire_permission_asks(now);

        if let Some(since) = self.live.sandbox_idle_since {
            if now >= later(since, self.config.sandbox_idle_timeout)
                && self.state.in_flight.is_none()
                && self.state.queue.is_empty()
            {
                self.shut_down_sandbox(now, "idle");
            }
        }

        self.retry_ledger(now);

        if self.live.resend_at.is_some_and(|at| now >= at) {
            let to: Vec<ConnId> = self.live.clients.keys().copied().collect();
            if !to.is_empty() && !self.state.unacked.is_empty() {
                self.effect(Effect::Resend {
                    to,
                    events: self.state.unacked.clone(),
                });
            }
            self.live.resend_at = Some(later(now, self.config.critical_resend_interval));
        }

        if self.live.hibernate_at.is_some_and(|at| now >= at) && self.is_hibernatable() {
            self.live.hibernate_at = None;
            self.live.hibernated = true;
            self.live.step.hibernate = true;
        }
    }
}
