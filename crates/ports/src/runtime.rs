//! The session shell every `SessionHost` shares: one [`SessionRuntime`] owns one session's machine,
//! carries out the machine's effects through the ports, and keeps the connections' outboxes.
//!
//! A host (the in-memory fake, the tokio host, a Durable Object host) only decides where a runtime
//! lives and when it runs. It must:
//! - call one runtime from one place at a time (a lock, a task, a Durable Object);
//! - after every call, take [`SessionRuntime::take_deferred`] and run those futures (inline, on
//!   tasks, with `waitUntil`…), handing each one's [`Completion`] back to
//!   [`SessionRuntime::complete`];
//! - keep one timer at [`SessionRuntime::poll_deadline`] and call [`SessionRuntime::tick`] when it
//!   fires;
//! - drop the runtime when [`SessionRuntime::is_hibernating`] says so and no deferred future is
//!   still running; the next request rebuilds it with [`SessionRuntime::rehydrate`].
//!
//! How each effect maps to the ports ("inline" = carried out before the call returns, in the
//! machine's order; "deferred" = a future the host runs, whose answer comes back through
//! `complete`):
//!
//! | effect | carried out |
//! |---|---|
//! | `Persist` | inline: `SessionStore::commit`, tried up to [`PERSIST_ATTEMPTS`] times on transient errors. A final failure feeds `StoreFailed` (the machine answers `Evict`); no later commit of this runtime is attempted, and the calling request fails with the store's class. |
//! | `Deliver`, `Resend` | inline, into the clients' bounded outboxes. An event goes out only once it is durable. A client whose outbox is full is dropped (channel closed, `ClientDetached` fed): a slow client never stalls the session. |
//! | `Replay` | deferred: pages `SessionStore::events` into the client's outbox, waiting for that client to read; live frames for it are held until the replay is through. |
//! | `AcceptSandbox`, `RejectSandbox`, `CloseSandbox` | inline: mark the sandbox outbox accepted, or close it. |
//! | `SendToSandbox` | inline, into the sandbox outbox; a full outbox closes the socket (`SandboxDisconnected` fed). |
//! | `SpawnSandbox` | inline: mint a token and feed `SandboxTokenIssued` (in the same batch, so the token's hash is in the commit that asks for the sandbox); deferred, once that commit is durable: `SandboxProvider::spawn` → `SpawnResult`. |
//! | `TerminateSandbox` | deferred: `SandboxProvider::terminate`, a few tries; an unknown sandbox counts as ended. |
//! | `DispatchRun` | deferred: `PriceBook::price` and `ModelGateway::resolve`; then inline: the `run` frame, then `DispatchResult`. |
//! | `RecordRun` | deferred: `RunLedger::record` → `RunRecorded`. |
//! | `Publish`, `Audit` | inline, best effort: `EventBus::publish`, `AuditLog::append`; a failure is counted ([`SessionRuntime::best_effort_failures`]), never fed back. |
//! | `Hibernate` | a flag: [`SessionRuntime::is_hibernating`]. |
//! | `Evict` | inline: drop every client and close the sandbox socket, then the hibernation flag: the host drops the runtime and the next request rebuilds it from the store. |
//!
//! **Coalesced sandbox messages.** [`SessionRuntime::sandbox_messages`] feeds several sandbox
//! messages that queued up while the runtime was busy, one after another, and makes their commits
//! durable as one: each `Persist` is merged into the batch's commit (events appended, outbox
//! changes applied in order), and every effect that follows the batch's first `Persist` is held
//! until that merged commit is durable. The machine coalesces meanwhile
//! (`Session::begin_coalescing`): its steps leave the snapshot out, and the merged commit carries
//! the one snapshot of the state after the batch's last step, so the state is serialized once per
//! batch rather than once per message. Nothing is shown, acknowledged or
//! dispatched earlier than one commit per message would show it; a sandbox that streams faster than
//! one fsync per message gets one fsync per batch instead. A merged commit that fails fails every
//! message of the batch, and none of the held effects takes place.
//!
//! **One commit per call.** Every call that feeds an input ([`SessionRuntime::handle`] and the
//! calls built on it) is a batch of its own as well: the inputs the shell owes the machine for it
//! are fed inside the batch, so a step that asks for a sandbox and the step that takes the
//! sandbox's token are written as one commit (a session's start is one commit, not two), and the
//! provider is called only once that commit is durable.
//!
//! Inputs the shell itself owes the machine while carrying out effects (`SandboxTokenIssued`,
//! `StoreFailed`, `ClientDetached`, `SandboxDisconnected`) are fed after the effects already queued,
//! never re-entrantly.
//!
//! Architecture Invariant: no tokio here. Channels are `futures::channel::mpsc`, slow work is a
//! `BoxFuture`, time comes from the `Clock` port; the same runtime runs under any executor.

use crate::agent::{ModelGateway, PriceBook};
use crate::record::{AuditLog, EventBus, RunLedger};
use crate::sandbox::SandboxProvider;
use crate::session::{
    Clock, EventPage, PromptRequest, Queued, SessionHostError, SessionStore, SessionStoreError,
};
use crate::{Classify, FromClass, SecretString};
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::SinkExt;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use switchboard_core::crypto::TokenHash;
use switchboard_core::protocol::client::ControlFrame;
use switchboard_core::protocol::{
    ClientMessage, GatewayConfig, ServerFrame, ServerToSandbox, SpawnSpec, SpawnTimeouts,
};
use switchboard_core::run::Price;
use switchboard_core::session::{
    Accepted, ClientCommand, Commit, Effect, Input, PortFailure, Rejection, Session, SessionConfig,
    SessionInfo, SessionInit, SpawnRequest,
};
use switchboard_core::tenancy::{Attribution, SessionKey};
use switchboard_core::{ConnId, ErrorClass, ModelRef, RunId, Timestamp};

/// Tries of one commit before the store counts as failed (transient errors only, back to back:
/// longer outages are the machine's to handle, through `StoreFailed`).
pub const PERSIST_ATTEMPTS: u32 = 3;
/// Tries of one `terminate`; a sandbox that still leaks is ended by the provider's own lifetimes.
pub const TERMINATE_ATTEMPTS: u32 = 3;
/// Frames a client may fall behind by before it is dropped (the host may pass another size).
pub const CLIENT_BUFFER: usize = 256;
/// Frames the sandbox may fall behind by before its socket is closed.
pub const SANDBOX_BUFFER: usize = 1024;
/// Live frames held for a client while its replay streams; more drop the client.
pub const HELD_FRAMES: usize = 4096;
/// Events read from the store per replay page.
pub const REPLAY_PAGE: usize = 256;
/// Sandbox messages one call of [`SessionRuntime::sandbox_messages`] takes at most.
pub const BATCH_MESSAGES: usize = 256;

/// Randomness and hashing, which the core leaves to the shell.
pub trait Minter: Send + Sync {
    /// A fresh one-time sandbox token and its SHA-256.
    fn sandbox_token(&self) -> (SecretString, TokenHash);
    /// SHA-256 of a token as presented by a sandbox.
    fn hash_token(&self, token: &SecretString) -> TokenHash;
    /// A fresh run id (for prompts arriving on a WebSocket).
    fn run_id(&self) -> RunId;
    /// A fresh connection number, unique within the process.
    fn conn_id(&self) -> ConnId;
}

/// Everything a session runtime talks to, plus how sessions are configured.
#[derive(Clone)]
pub struct SessionPorts {
    pub store: Arc<dyn SessionStore>,
    pub sandboxes: Arc<dyn SandboxProvider>,
    pub gateway: Arc<dyn ModelGateway>,
    pub prices: Arc<dyn PriceBook>,
    pub ledger: Arc<dyn RunLedger>,
    pub bus: Arc<dyn EventBus>,
    pub audit: Arc<dyn AuditLog>,
    pub clock: Arc<dyn Clock>,
    pub minter: Arc<dyn Minter>,
    /// Where sandboxes dial back, e.g. `ws://127.0.0.1:8080` (see [`SessionPorts::callback_url`]).
    pub callback_base: String,
    pub config: SessionConfig,
}

impl SessionPorts {
    /// `{callback_base}/sandbox/v1/sessions/{org}/{session}/ws`.
    pub fn callback_url(&self, key: &SessionKey) -> String {
        format!(
            "{}/sandbox/v1/sessions/{}/{}/ws",
            self.callback_base.trim_end_matches('/'),
            key.org(),
            key.session()
        )
    }
}

/// Slow work left behind by a call; run it anywhere and hand its output to
/// [`SessionRuntime::complete`].
pub type Deferred = BoxFuture<'static, Completion>;

/// What a finished [`Deferred`] hands back to its runtime.
pub struct Completion(Done);

enum Done {
    /// Feed this port answer to the machine.
    Answer(Input),
    /// The gateway and price of a run are resolved (or not): send `run`, then `DispatchResult`.
    Dispatch {
        conn: ConnId,
        run_id: RunId,
        text: String,
        model: ModelRef,
        resolved: Result<(GatewayConfig, Option<Price>), PortFailure>,
    },
    /// A replay into `conn` is through (`complete`) or broke off.
    Replayed { conn: ConnId, complete: bool },
    /// Nothing comes back (terminate).
    Nothing,
}

struct ClientOutbox {
    tx: mpsc::Sender<ServerFrame>,
    /// Live frames waiting behind a replay that is still streaming into `tx`.
    held: Option<VecDeque<ServerFrame>>,
}

struct SandboxOutbox {
    tx: mpsc::Sender<ServerToSandbox>,
    /// The machine accepted the socket's token.
    accepted: bool,
}

/// One live session: its machine, its ports and its connections. See the module docs.
pub struct SessionRuntime {
    ports: SessionPorts,
    machine: Session,
    clients: BTreeMap<ConnId, ClientOutbox>,
    sandboxes: BTreeMap<ConnId, SandboxOutbox>,
    deferred: Vec<Deferred>,
    /// Inputs owed to the machine, fed once the effects already queued are carried out.
    owed: VecDeque<Input>,
    /// The highest seq known to be in the store: nothing above it is shown to a client.
    durable_seq: u64,
    /// Set by the first commit that could not be persisted; nothing is written after it.
    store_failure: Option<PortFailure>,
    /// A commit of the current call was not persisted.
    call_lost_commit: bool,
    hibernating: bool,
    best_effort_failures: u64,
    /// Set while a batch of sandbox messages is being fed (see the module docs).
    batch: Option<Batch>,
}

/// The commits and held effects of a batch: sandbox messages that queued up, or one call's input
/// and the inputs the shell owes the machine for it.
#[derive(Default)]
struct Batch {
    /// The batch's commits merged into one, once one of its steps committed anything.
    commit: Option<Commit>,
    /// Effects after the batch's first `Persist`, in the machine's order.
    held: VecDeque<Held>,
}

/// An effect waiting for its batch's commit.
enum Held {
    Effect(Effect),
    /// The provider call of a `SpawnSandbox` whose token was minted while the batch was open, so
    /// that the token's hash is in the batch's commit: the sandbox is asked for once that commit
    /// is durable, and never when it is not.
    Spawn {
        spawn: u32,
        spec: Box<SpawnSpec>,
    },
}

/// Folds `next` into `into` so that writing `into` has the effect of writing both in order:
/// events appended, the newer snapshot kept, outbox removals and puts applied in order (the store
/// applies a commit's removals before its puts).
fn merge_commit(into: &mut Commit, next: Commit) {
    into.events.extend(next.events);
    if next.snapshot.is_some() {
        into.snapshot = next.snapshot;
    }
    for run in next.outbox_remove {
        into.outbox_put.retain(|r| r.run_id != run);
        if !into.outbox_remove.contains(&run) {
            into.outbox_remove.push(run);
        }
    }
    for record in next.outbox_put {
        match into
            .outbox_put
            .iter_mut()
            .find(|r| r.run_id == record.run_id)
        {
            Some(put) => *put = record,
            None => into.outbox_put.push(record),
        }
    }
}

impl SessionRuntime {
    /// Starts a new session (`Input::Start`: its first events and its first spawn). The caller has
    /// made sure the key is new ([`SessionRuntime::rehydrate`] found nothing). Fails when the first
    /// commit cannot be persisted, with the store's class.
    pub async fn create(
        ports: SessionPorts,
        init: SessionInit,
    ) -> Result<SessionRuntime, Rejection> {
        let machine = Session::new(ports.clock.now(), ports.config.clone(), init);
        let mut runtime = SessionRuntime::around(ports, machine, 0);
        runtime.handle(Input::Start).await?;
        Ok(runtime)
    }

    /// Rebuilds a session from the store, and carries out what the restore calls for (flushing the
    /// ledger outbox again). `None` when the store has no such session; a store failure has the
    /// store's class, an unreadable snapshot is `Corrupt`.
    pub async fn rehydrate(
        ports: SessionPorts,
        key: SessionKey,
    ) -> Result<Option<SessionRuntime>, Rejection> {
        let persisted = match ports.store.load(&key).await {
            Ok(Some(persisted)) => persisted,
            Ok(None) => return Ok(None),
            Err(e) => return Err(store_rejection(&e)),
        };
        let machine = Session::restore(ports.clock.now(), ports.config.clone(), persisted)?;
        if machine.key() != &key {
            return Err(rejection(
                ErrorClass::Corrupt,
                "foreign_snapshot",
                format!("the snapshot stored under {key} names {}", machine.key()),
            ));
        }
        let durable_seq = machine.last_seq();
        let mut runtime = SessionRuntime::around(ports, machine, durable_seq);
        runtime.carry_out_effects().await;
        Ok(Some(runtime))
    }

    fn around(ports: SessionPorts, machine: Session, durable_seq: u64) -> SessionRuntime {
        SessionRuntime {
            ports,
            machine,
            clients: BTreeMap::new(),
            sandboxes: BTreeMap::new(),
            deferred: Vec::new(),
            owed: VecDeque::new(),
            durable_seq,
            store_failure: None,
            call_lost_commit: false,
            hibernating: false,
            best_effort_failures: 0,
            batch: None,
        }
    }

    pub fn key(&self) -> &SessionKey {
        self.machine.key()
    }

    /// The machine, to read its state.
    pub fn machine(&self) -> &Session {
        &self.machine
    }

    pub fn info(&self) -> SessionInfo {
        self.machine.info()
    }

    /// When [`SessionRuntime::tick`] has something to do.
    pub fn poll_deadline(&self) -> Option<Timestamp> {
        self.machine.poll_deadline()
    }

    /// The machine hibernated and nothing happened since: the host may drop this runtime (once
    /// its deferred futures are done).
    pub fn is_hibernating(&self) -> bool {
        self.hibernating
    }

    /// The store failure that stopped this runtime from writing, if one did.
    pub fn store_failure(&self) -> Option<&PortFailure> {
        self.store_failure.as_ref()
    }

    /// How many best-effort calls (`publish`, `audit`) failed so far.
    pub fn best_effort_failures(&self) -> u64 {
        self.best_effort_failures
    }

    /// The slow work left by the calls so far. Run each and hand its output to `complete`.
    pub fn take_deferred(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.deferred)
    }

    /// Feeds one input and carries out its effects. A machine refusal comes back unchanged; an
    /// accepted input whose commit could not be persisted fails with the store's class (so that,
    /// e.g., a prompt is never acknowledged before it is durable).
    pub async fn handle(&mut self, input: Input) -> Result<Accepted, Rejection> {
        self.call_lost_commit = false;
        // One batch for the input and what the shell owes the machine for it: a step that asks
        // for a sandbox and the step that takes its token are written as one commit.
        self.batch = Some(Batch::default());
        self.machine.begin_coalescing();
        let fed = self.feed(input);
        if fed.is_ok() {
            self.carry_out_effects().await;
        }
        self.flush_batch().await;
        let accepted = fed?;
        if self.call_lost_commit {
            let failure = self
                .store_failure
                .clone()
                .unwrap_or_else(|| PortFailure::new(ErrorClass::Unavailable, "not persisted"));
            return Err(rejection(failure.class, "store_failed", failure.message));
        }
        Ok(accepted)
    }

    /// Fires the watchdog if its deadline has come (calling early does nothing).
    pub async fn tick(&mut self) {
        if self
            .poll_deadline()
            .is_some_and(|at| at <= self.ports.clock.now())
        {
            let _ = self.handle(Input::Tick).await;
        }
    }

    /// Takes back the output of a [`Deferred`].
    pub async fn complete(&mut self, completion: Completion) {
        match completion.0 {
            Done::Answer(input) => self.owed.push_back(input),
            Done::Dispatch {
                conn,
                run_id,
                text,
                model,
                resolved,
            } => {
                let result = match resolved {
                    Ok((gateway, price)) => {
                        let run = ServerToSandbox::Run {
                            run_id: run_id.clone(),
                            text,
                            model,
                            gateway,
                        };
                        if self.send_to_sandbox(conn, run) {
                            Ok(price)
                        } else {
                            Err(PortFailure::new(
                                ErrorClass::Unavailable,
                                "the sandbox connection closed before the run could be sent",
                            ))
                        }
                    }
                    Err(failure) => Err(failure),
                };
                self.owed
                    .push_back(Input::DispatchResult { run_id, result });
            }
            Done::Replayed { conn, complete } => {
                if !complete {
                    self.drop_client(conn);
                } else if let Some(held) = self
                    .clients
                    .get_mut(&conn)
                    .and_then(|outbox| outbox.held.take())
                {
                    for frame in held {
                        self.send_to_client(conn, frame);
                    }
                }
            }
            Done::Nothing => {}
        }
        self.carry_out_effects().await;
    }

    /// A prompt over HTTP: `Queued` once it is durable (a re-sent `client_msg_id` answers the
    /// original run).
    pub async fn prompt(
        &mut self,
        by: Attribution,
        request: PromptRequest,
    ) -> Result<Queued, Rejection> {
        let PromptRequest {
            run_id,
            text,
            client_msg_id,
        } = request;
        match self
            .handle(Input::Prompt {
                run_id,
                by,
                text,
                client_msg_id,
                conn: None,
            })
            .await?
        {
            Accepted::Queued {
                run_id, position, ..
            } => Ok(Queued { run_id, position }),
            Accepted::Done => Err(rejection(
                ErrorClass::Conflict,
                "not_queued",
                "the session did not queue the prompt",
            )),
        }
    }

    /// Attaches a client that has every event with seq > `after` (none when `None`). Its outbox is
    /// registered before the machine hears of it, so the hello and the replay reach it. `buffer`
    /// is how far (in frames) it may fall behind live events before it is dropped.
    pub async fn attach_client(
        &mut self,
        after: Option<u64>,
        buffer: usize,
    ) -> Result<(ConnId, mpsc::Receiver<ServerFrame>), Rejection> {
        let conn = self.ports.minter.conn_id();
        let (tx, rx) = mpsc::channel(buffer);
        self.clients.insert(conn, ClientOutbox { tx, held: None });
        if let Err(refused) = self.handle(Input::ClientAttached { conn, after }).await {
            self.detach_client(conn).await;
            return Err(refused);
        }
        Ok((conn, rx))
    }

    /// A frame from an attached client. A prompt gets a fresh run id from the minter. Input the
    /// machine refuses is answered on the client's stream with an `error` frame (its `code` is the
    /// refusal's), not as an `Err`: `Err` means the connection itself is unknown.
    pub async fn client_message(
        &mut self,
        conn: ConnId,
        by: &Attribution,
        message: ClientMessage,
    ) -> Result<(), Rejection> {
        if !self.clients.contains_key(&conn) {
            return Err(rejection(
                ErrorClass::NotFound,
                "unknown_connection",
                format!("{conn} is not attached"),
            ));
        }
        let command = |command| Input::ClientCommand { conn, command };
        let input = match message {
            ClientMessage::Prompt {
                text,
                client_msg_id,
            } => Input::Prompt {
                run_id: self.ports.minter.run_id(),
                by: by.clone(),
                text,
                client_msg_id,
                conn: Some(conn),
            },
            ClientMessage::Cancel { run_id } => command(ClientCommand::Cancel { run_id }),
            ClientMessage::Ack { seq } => command(ClientCommand::Ack { seq }),
            ClientMessage::Permission {
                request_id,
                decision,
            } => command(ClientCommand::Permission {
                request_id,
                decision,
            }),
            ClientMessage::Ping { .. } => command(ClientCommand::Ping),
        };
        if let Err(refused) = self.handle(input).await {
            let error = ControlFrame::Error {
                code: refused.code.to_string(),
                message: refused.message,
            };
            self.send_to_client(conn, ServerFrame::Control(error));
            self.carry_out_effects().await;
        }
        Ok(())
    }

    /// The client went away (idempotent).
    pub async fn detach_client(&mut self, conn: ConnId) {
        self.drop_client(conn);
        self.carry_out_effects().await;
    }

    /// A sandbox dialled back with `token`. `Unauthorized` (nothing changed) unless the machine
    /// accepts the token's hash.
    pub async fn attach_sandbox(
        &mut self,
        token: &SecretString,
    ) -> Result<(ConnId, mpsc::Receiver<ServerToSandbox>), Rejection> {
        let conn = self.ports.minter.conn_id();
        let token_hash = self.ports.minter.hash_token(token);
        let (tx, rx) = mpsc::channel(SANDBOX_BUFFER);
        self.sandboxes.insert(
            conn,
            SandboxOutbox {
                tx,
                accepted: false,
            },
        );
        let fed = self
            .handle(Input::SandboxConnect { conn, token_hash })
            .await;
        let accepted = self
            .sandboxes
            .get(&conn)
            .is_some_and(|outbox| outbox.accepted);
        match fed {
            Ok(_) if accepted => Ok((conn, rx)),
            Ok(_) => {
                self.detach_sandbox(conn).await;
                Err(rejection(
                    ErrorClass::Unauthorized,
                    "sandbox_token_rejected",
                    "the sandbox token is wrong, stale or already replaced",
                ))
            }
            Err(refused) => {
                self.detach_sandbox(conn).await;
                Err(refused)
            }
        }
    }

    /// A frame from a sandbox socket. `NotFound` when the socket is no longer attached.
    pub async fn sandbox_message(
        &mut self,
        conn: ConnId,
        message: switchboard_core::protocol::SandboxMessage,
    ) -> Result<(), Rejection> {
        if !self.sandboxes.contains_key(&conn) {
            return Err(rejection(
                ErrorClass::NotFound,
                "unknown_connection",
                format!("{conn} is not attached"),
            ));
        }
        self.handle(Input::SandboxMessage { conn, message })
            .await
            .map(|_| ())
    }

    /// Frames from sandbox sockets that queued up, fed in order with their commits made durable
    /// as one (see the module docs). One answer per message, as [`SessionRuntime::sandbox_message`]
    /// would give; when the merged commit fails, every message it held fails with the store's
    /// class. A connection whose message is refused is treated as a pump treats a refusal: its
    /// later messages are not fed, and it is detached once the batch is through (after the ACKs
    /// of its earlier messages). At most [`BATCH_MESSAGES`] are coalesced per commit; more are fed
    /// in further batches.
    pub async fn sandbox_messages(
        &mut self,
        messages: Vec<(ConnId, switchboard_core::protocol::SandboxMessage)>,
    ) -> Vec<Result<(), Rejection>> {
        let mut answers = Vec::with_capacity(messages.len());
        let mut refused_conns: Vec<ConnId> = Vec::new();
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() {
            let mut fed = Vec::new();
            self.batch = Some(Batch::default());
            self.machine.begin_coalescing();
            for (conn, message) in messages.by_ref().take(BATCH_MESSAGES) {
                if !self.sandboxes.contains_key(&conn) || refused_conns.contains(&conn) {
                    answers.push(Err(rejection(
                        ErrorClass::NotFound,
                        "unknown_connection",
                        format!("{conn} is not attached"),
                    )));
                    continue;
                }
                match self.feed(Input::SandboxMessage { conn, message }) {
                    Ok(_) => {
                        fed.push(answers.len());
                        answers.push(Ok(()));
                    }
                    Err(refused) => {
                        refused_conns.push(conn);
                        answers.push(Err(refused));
                    }
                }
                self.carry_out_effects().await;
            }
            if !self.flush_batch().await {
                let failure = self
                    .store_failure
                    .clone()
                    .unwrap_or_else(|| PortFailure::new(ErrorClass::Unavailable, "not persisted"));
                for i in fed {
                    answers[i] = Err(rejection(
                        failure.class,
                        "store_failed",
                        failure.message.clone(),
                    ));
                }
            }
        }
        for conn in refused_conns {
            self.detach_sandbox(conn).await;
        }
        answers
    }

    /// Ends a batch: writes its merged commit, then carries out the held effects (or, when the
    /// commit was not persisted, drops them), then whatever they owe the machine. Whether the
    /// batch's commit (if it had one) is durable.
    async fn flush_batch(&mut self) -> bool {
        let Some(batch) = self.batch.take() else {
            return true;
        };
        // The state is serialized once for the batch, after its last step.
        let mut commit = batch.commit;
        if let Some(snapshot) = self.machine.end_coalescing() {
            commit.get_or_insert_with(Commit::default).snapshot = Some(snapshot);
        }
        let mut durable = true;
        if let Some(commit) = commit.filter(|c| !c.is_empty()) {
            let lost_before = std::mem::replace(&mut self.call_lost_commit, false);
            self.persist(commit).await;
            durable = !self.call_lost_commit;
            self.call_lost_commit |= lost_before;
        }
        if durable {
            for held in batch.held {
                match held {
                    Held::Effect(effect) => self.carry_out(effect).await,
                    Held::Spawn { spawn, spec } => self.call_provider(spawn, *spec),
                }
            }
        }
        self.carry_out_effects().await;
        durable
    }

    /// The sandbox socket went away (idempotent).
    pub async fn detach_sandbox(&mut self, conn: ConnId) {
        self.drop_sandbox(conn);
        self.carry_out_effects().await;
    }

    /// A page of the durable event log, with the last durable seq. The read does not need the
    /// runtime once started.
    pub fn events(
        &self,
        after: u64,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<EventPage, Rejection>> + Send + 'static {
        let (store, key, last_seq) = (
            self.ports.store.clone(),
            self.key().clone(),
            self.durable_seq,
        );
        async move {
            let events = store
                .events(&key, after, limit)
                .await
                .map_err(|e| store_rejection(&e))?;
            Ok(EventPage { events, last_seq })
        }
    }

    // ----- carrying out effects --------------------------------------------------------------

    /// Feeds the machine; an accepted input clears the hibernation flag (a new `Hibernate` may
    /// follow among its effects).
    fn feed(&mut self, input: Input) -> Result<Accepted, Rejection> {
        let accepted = self.machine.handle(self.ports.clock.now(), input)?;
        self.hibernating = false;
        Ok(accepted)
    }

    /// Drains the machine's effects, then feeds what the shell owes it, until both are empty.
    async fn carry_out_effects(&mut self) {
        loop {
            while let Some(effect) = self.machine.poll_effect() {
                let Some(effect) = self.hold_in_batch(effect) else {
                    continue;
                };
                let failed_before = self.store_failure.is_some();
                self.carry_out(effect).await;
                if !failed_before && self.store_failure.is_some() {
                    // The step's commit is not durable, so nothing else of that step may take
                    // effect: no ACK to the sandbox, no dispatch, no ledger record, no delivery.
                    // Only the machine's answer to `StoreFailed` (owed next) goes out.
                    while self.machine.poll_effect().is_some() {}
                }
            }
            let Some(input) = self.owed.pop_front() else {
                break;
            };
            // A late answer (an old spawn, a run that already ended) may be refused: nothing changes.
            let _ = self.feed(input);
        }
    }

    /// While a batch is open: merges a `Persist` into its commit and holds every effect after it;
    /// gives back an effect that may be carried out now. A held `SpawnSandbox` has its token minted
    /// at once (the machine takes the hash in the same batch); only the provider call waits.
    fn hold_in_batch(&mut self, effect: Effect) -> Option<Effect> {
        let Some(batch) = self.batch.as_mut() else {
            return Some(effect);
        };
        match effect {
            Effect::Persist(commit) => {
                match batch.commit.as_mut() {
                    Some(merged) => merge_commit(merged, commit),
                    None => batch.commit = Some(commit),
                }
                None
            }
            Effect::SpawnSandbox { spawn, request } if batch.commit.is_some() => {
                let spec = Box::new(self.mint_spawn(spawn, request));
                if let Some(batch) = self.batch.as_mut() {
                    batch.held.push_back(Held::Spawn { spawn, spec });
                }
                None
            }
            held if batch.commit.is_some() => {
                batch.held.push_back(Held::Effect(held));
                None
            }
            now => Some(now),
        }
    }

    async fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::Persist(commit) => self.persist(commit).await,
            Effect::Deliver { to, frame } => {
                if self.is_durable(&frame) {
                    if let Some((last, others)) = to.split_last() {
                        for conn in others {
                            self.send_to_client(*conn, frame.clone());
                        }
                        self.send_to_client(*last, frame);
                    }
                }
            }
            Effect::Resend { to, events } => {
                let durable_seq = self.durable_seq;
                for event in events.into_iter().filter(|e| e.seq <= durable_seq) {
                    for conn in &to {
                        self.send_to_client(*conn, ServerFrame::Event(event.clone()));
                    }
                }
            }
            Effect::Replay {
                conn,
                after,
                through,
            } => self.replay(conn, after, through),
            Effect::AcceptSandbox { conn } => {
                if let Some(outbox) = self.sandboxes.get_mut(&conn) {
                    outbox.accepted = true;
                }
            }
            Effect::RejectSandbox { conn } | Effect::CloseSandbox { conn } => {
                // The machine made this decision itself: it needs no `SandboxDisconnected`.
                if let Some(mut outbox) = self.sandboxes.remove(&conn) {
                    outbox.tx.close_channel();
                }
            }
            Effect::SendToSandbox { conn, message } => {
                self.send_to_sandbox(conn, message);
            }
            Effect::DispatchRun {
                conn,
                run_id,
                text,
                model,
            } => self.dispatch(conn, run_id, text, model),
            Effect::SpawnSandbox { spawn, request } => {
                let spec = self.mint_spawn(spawn, request);
                self.call_provider(spawn, spec);
            }
            Effect::TerminateSandbox { sandbox_id } => {
                let provider = self.ports.sandboxes.clone();
                self.defer(async move {
                    for _ in 0..TERMINATE_ATTEMPTS {
                        match provider.terminate(&sandbox_id).await {
                            Err(e) if e.class().is_transient() => continue,
                            // Done, already gone (`NotFound`), or refused for good.
                            _ => break,
                        }
                    }
                    Completion(Done::Nothing)
                });
            }
            Effect::RecordRun(record) => {
                let ledger = self.ports.ledger.clone();
                self.defer(async move {
                    let result = ledger
                        .record(&record)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_failure());
                    Completion(Done::Answer(Input::RunRecorded {
                        run_id: record.run_id,
                        result,
                    }))
                });
            }
            Effect::Publish(event) => {
                if self.ports.bus.publish(&event).await.is_err() {
                    self.best_effort_failures += 1;
                }
            }
            Effect::Audit(entry) => {
                if self.ports.audit.append(&entry).await.is_err() {
                    self.best_effort_failures += 1;
                }
            }
            Effect::Hibernate => self.hibernating = true,
            Effect::Evict { .. } => {
                // Nothing shown from now on could be durable: clients (already sent the machine's
                // `error` frame) reconnect and resume from what the store holds; the sandbox
                // re-dials and re-sends what was not ACKed. The host drops this runtime.
                let conns: Vec<ConnId> = self.clients.keys().copied().collect();
                for conn in conns {
                    self.drop_client(conn);
                }
                for (_, mut outbox) in std::mem::take(&mut self.sandboxes) {
                    outbox.tx.close_channel();
                }
                self.hibernating = true;
            }
        }
    }

    /// Mints spawn attempt `spawn`'s token, owes the machine its hash, and gives the provider's
    /// spec.
    fn mint_spawn(&mut self, spawn: u32, request: SpawnRequest) -> SpawnSpec {
        let (token, token_hash) = self.ports.minter.sandbox_token();
        self.owed
            .push_back(Input::SandboxTokenIssued { spawn, token_hash });
        let key = self.key();
        SpawnSpec {
            session_key: key.to_string(),
            callback_url: self.ports.callback_url(key),
            token: token.expose().to_string(),
            agent: request.agent,
            repo: request.repo,
            env: BTreeMap::new(),
            timeouts: SpawnTimeouts {
                idle_s: request.idle_s,
                max_s: request.max_s,
            },
        }
    }

    /// Asks the provider for spawn attempt `spawn`'s sandbox (deferred; answers `SpawnResult`).
    fn call_provider(&mut self, spawn: u32, spec: SpawnSpec) {
        let provider = self.ports.sandboxes.clone();
        self.defer(async move {
            let result = provider.spawn(&spec).await.map_err(|e| e.to_failure());
            Completion(Done::Answer(Input::SpawnResult { spawn, result }))
        });
    }

    fn defer(&mut self, work: impl std::future::Future<Output = Completion> + Send + 'static) {
        self.deferred.push(Box::pin(work));
    }

    /// Writes one commit. After a failure nothing more is written: a later commit would leave
    /// the snapshot ahead of the log.
    async fn persist(&mut self, commit: Commit) {
        if self.store_failure.is_some() {
            self.call_lost_commit = true;
            return;
        }
        match commit_with_retries(self.ports.store.clone(), self.key().clone(), &commit).await {
            Ok(()) => {
                if let Some(last) = commit.events.last() {
                    self.durable_seq = last.seq;
                }
            }
            Err(e) => {
                let failure = e.to_failure();
                self.store_failure = Some(failure.clone());
                self.call_lost_commit = true;
                // The machine answers with `Evict`, which drops every client and the sandbox.
                self.owed.push_back(Input::StoreFailed { failure });
            }
        }
    }

    fn is_durable(&self, frame: &ServerFrame) -> bool {
        match frame {
            ServerFrame::Event(event) => event.seq <= self.durable_seq,
            ServerFrame::Control(_) => true,
        }
    }

    /// Queues a frame for a client, or drops the client when it has fallen too far behind.
    fn send_to_client(&mut self, conn: ConnId, frame: ServerFrame) {
        let Some(outbox) = self.clients.get_mut(&conn) else {
            return;
        };
        let queued = match outbox.held.as_mut() {
            Some(held) if held.len() < HELD_FRAMES => {
                held.push_back(frame);
                true
            }
            Some(_) => false,
            None => outbox.tx.try_send(frame).is_ok(),
        };
        if !queued {
            self.drop_client(conn);
        }
    }

    /// Closes a client's stream and tells the machine (once).
    fn drop_client(&mut self, conn: ConnId) {
        if let Some(mut outbox) = self.clients.remove(&conn) {
            // Closing (not just dropping) also stops a replay that holds a clone of the sender.
            outbox.tx.close_channel();
            self.owed.push_back(Input::ClientDetached { conn });
        }
    }

    /// Streams persisted events `after < seq <= through` into the client's outbox at the pace the
    /// client reads; live frames wait in `held` meanwhile.
    fn replay(&mut self, conn: ConnId, after: u64, through: u64) {
        let Some(outbox) = self.clients.get_mut(&conn) else {
            return;
        };
        outbox.held.get_or_insert_with(VecDeque::new);
        let mut tx = outbox.tx.clone();
        let store = self.ports.store.clone();
        let key = self.key().clone();
        self.defer(async move {
            let mut seen = after;
            while seen < through {
                let Ok(page) = store.events(&key, seen, REPLAY_PAGE).await else {
                    break;
                };
                if page.is_empty() {
                    break;
                }
                for event in page.into_iter().take_while(|e| e.seq <= through) {
                    // A gap in the log would break "every event exactly once": give up instead.
                    if event.seq != seen + 1 || tx.send(ServerFrame::Event(event)).await.is_err() {
                        return Completion(Done::Replayed {
                            conn,
                            complete: false,
                        });
                    }
                    seen += 1;
                }
            }
            Completion(Done::Replayed {
                conn,
                complete: seen >= through,
            })
        });
    }

    /// Queues a frame for a sandbox; a socket that fell too far behind (or is gone) is closed.
    fn send_to_sandbox(&mut self, conn: ConnId, message: ServerToSandbox) -> bool {
        let Some(outbox) = self.sandboxes.get_mut(&conn) else {
            return false;
        };
        if outbox.tx.try_send(message).is_ok() {
            return true;
        }
        self.drop_sandbox(conn);
        false
    }

    /// Closes a sandbox socket from the shell's side and tells the machine if it had accepted it.
    fn drop_sandbox(&mut self, conn: ConnId) {
        if let Some(mut outbox) = self.sandboxes.remove(&conn) {
            outbox.tx.close_channel();
            if outbox.accepted {
                self.owed.push_back(Input::SandboxDisconnected { conn });
            }
        }
    }

    /// Resolves what the run needs (price first: a run whose cost cannot be known fails rather
    /// than being recorded as free), then hands it back to be sent in order with other frames.
    fn dispatch(&mut self, conn: ConnId, run_id: RunId, text: String, model: ModelRef) {
        let (prices, gateway) = (self.ports.prices.clone(), self.ports.gateway.clone());
        let tenant = self.key().tenant();
        self.defer(async move {
            let resolved = async {
                let price = prices.price(&model).await.map_err(|e| e.to_failure())?;
                let config = gateway
                    .resolve(&tenant, &run_id, &model)
                    .await
                    .map_err(|e| e.to_failure())?;
                Ok((config, price))
            }
            .await;
            Completion(Done::Dispatch {
                conn,
                run_id,
                text,
                model,
                resolved,
            })
        });
    }
}

/// Commits, retrying transient failures. (Free functions: the runtime is `Send` but not `Sync`,
/// so its futures never hold `&self` across an await.)
async fn commit_with_retries(
    store: Arc<dyn SessionStore>,
    key: SessionKey,
    commit: &Commit,
) -> Result<(), SessionStoreError> {
    let mut attempt = 1;
    loop {
        let error = match store.commit(&key, commit).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // A retry refused as a seq conflict may mean an earlier try landed but its answer was lost.
        if attempt > 1
            && error.class() == ErrorClass::Conflict
            && landed(&*store, &key, commit).await
        {
            return Ok(());
        }
        if !error.class().is_transient() || attempt >= PERSIST_ATTEMPTS {
            return Err(error);
        }
        attempt += 1;
    }
}

/// Whether the last event of `commit` is in the store as written (commits are atomic).
async fn landed(store: &dyn SessionStore, key: &SessionKey, commit: &Commit) -> bool {
    let Some(last) = commit.events.last() else {
        return false;
    };
    matches!(store.events(key, last.seq - 1, 1).await, Ok(page) if page.first() == Some(last))
}

fn rejection(class: ErrorClass, code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        class,
        code,
        message: message.into(),
    }
}

fn store_rejection(e: &SessionStoreError) -> Rejection {
    rejection(e.class(), "store_failed", e.to_string())
}

/// A machine refusal as the host port's error: same class, `code: message` as the message.
impl From<Rejection> for SessionHostError {
    fn from(refused: Rejection) -> Self {
        SessionHostError::from_class(refused.class, refused.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::run::RunRecord;

    fn record(run: &str, cost: u64) -> RunRecord {
        serde_json::from_value(serde_json::json!({
            "run_id": run, "session_id": "s", "org_id": "o", "user_id": "u", "api_key_id": null,
            "model": "openai/gpt-test", "provider": "openai", "status": "completed",
            "queued_at": "2026-01-01T00:00:00.000Z", "started_at": null,
            "ended_at": "2026-01-01T00:00:01.000Z",
            "usage": {"input_tokens": 1, "output_tokens": 1}, "cost_micros": cost, "event_count": 0,
        }))
        .expect("a run record")
    }

    fn run(id: &str) -> RunId {
        RunId::parse(id).unwrap()
    }

    fn puts(c: &Commit) -> Vec<(String, u64)> {
        c.outbox_put
            .iter()
            .map(|r| (r.run_id.to_string(), r.cost_micros))
            .collect()
    }

    #[test]
    fn merged_commits_write_what_the_commits_wrote_in_order() {
        let snapshot = |n: u64| {
            Some(switchboard_core::session::SessionSnapshot::from_value(
                &serde_json::json!({ "n": n }),
            ))
        };
        let mut merged = Commit {
            snapshot: snapshot(1),
            outbox_put: vec![record("r1", 1), record("r3", 3)],
            ..Commit::default()
        };
        // A later put of r1 replaces it in place; r2 is removed though never put here.
        merge_commit(
            &mut merged,
            Commit {
                snapshot: snapshot(2),
                outbox_put: vec![record("r1", 10)],
                outbox_remove: vec![run("r2")],
                ..Commit::default()
            },
        );
        assert_eq!(puts(&merged), [("r1".into(), 10), ("r3".into(), 3)]);
        assert_eq!(merged.outbox_remove, [run("r2")]);
        assert_eq!(merged.snapshot, snapshot(2), "the newest snapshot wins");
        // Removing r3 drops its put; a commit without a snapshot keeps the last one.
        merge_commit(
            &mut merged,
            Commit {
                outbox_remove: vec![run("r3")],
                ..Commit::default()
            },
        );
        assert_eq!(puts(&merged), [("r1".into(), 10)]);
        assert_eq!(merged.outbox_remove, [run("r2"), run("r3")]);
        assert_eq!(merged.snapshot, snapshot(2));
        // Removed then put again: the store applies removals before puts, so it ends present.
        merge_commit(
            &mut merged,
            Commit {
                outbox_put: vec![record("r2", 20)],
                ..Commit::default()
            },
        );
        assert_eq!(puts(&merged), [("r1".into(), 10), ("r2".into(), 20)]);
        assert!(merged.outbox_remove.contains(&run("r2")));
    }
}
