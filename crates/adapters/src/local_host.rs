//! `LocalSessionHost`: the tokio `SessionHost`. One task per live session owns its
//! `SessionRuntime`; callers reach it through a bounded mailbox. Also `OsMinter`, the minter with
//! real randomness.
//!
//! - **One writer per key.** The registry (key → actor) is a plain mutex, and an actor is inserted
//!   under it before anything is awaited, so two requests racing to wake a session find the same
//!   task. The task itself creates or rehydrates the runtime; requests queued meanwhile wait in its
//!   mailbox.
//! - **Backpressure.** The mailbox is bounded: callers await capacity.
//! - **Pipelined sandbox frames.** A sandbox handle's `send` returns once the session's mailbox
//!   took the frame; the sandbox learns it is durable from the `ack` frame, and a frame the
//!   session refuses detaches the connection (its socket closes). Frames that queued up while the
//!   task was busy are taken together and fed through `SessionRuntime::sandbox_messages`, which
//!   makes their commits durable as one: a fast sandbox costs one fsync per batch, not per frame.
//! - **Slow work.** Deferred futures run inside the session's task (a `FuturesUnordered` polled
//!   alongside the mailbox), so nothing outlives its session and the task knows when none is left.
//! - **Time.** One timer per session, at `poll_deadline()`, through `Clock::sleep_until`: an
//!   `InMemoryClock` drives it deterministically in tests.
//! - **Hibernation.** When the runtime hibernates and no deferred work is left, the task removes
//!   itself from the registry and ends. A request that was already queued for it is handed to a
//!   fresh task, which rehydrates the session from the `SessionStore`.

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use switchboard_core::crypto::TokenHash;
use switchboard_core::protocol::{ClientMessage, SandboxMessage};
use switchboard_core::session::{Input, Session, SessionInfo, SessionInit};
use switchboard_core::tenancy::{Attribution, Principal, SessionKey, TenantContext};
use switchboard_core::{ConnId, ErrorClass, RunId, SessionId, Timestamp};
use switchboard_ports::runtime::{
    Minter, SessionPorts, SessionRuntime, BATCH_MESSAGES, CLIENT_BUFFER,
};
use switchboard_ports::session::{
    ClientHandle, ClientLink, CreateSession, EventPage, PromptRequest, Queued, SandboxHandle,
    SandboxLink, SessionHost, SessionHostError,
};
use switchboard_ports::{Classify, FromClass, SecretString};
use tokio::sync::{mpsc, oneshot};

/// Requests a session's mailbox holds before callers wait.
pub const MAILBOX: usize = 256;

/// How often a request is re-sent after landing on a session task that was ending.
const SEND_ATTEMPTS: usize = 8;

/// Work for a session task: runs with exclusive access to the runtime.
type Job = Box<dyn for<'a> FnOnce(&'a mut SessionRuntime) -> BoxFuture<'a, ()> + Send>;

/// What a session task's mailbox carries.
enum Request {
    Job(Job),
    /// A sandbox frame whose sender does not wait for it to be processed.
    Sandbox {
        conn: ConnId,
        message: SandboxMessage,
    },
}

/// Pins the higher-ranked signature on a closure (inference alone does not).
fn job<F>(f: F) -> Job
where
    F: for<'a> FnOnce(&'a mut SessionRuntime) -> BoxFuture<'a, ()> + Send + 'static,
{
    Box::new(f)
}

/// How one request to one session task went.
enum Attempt<T> {
    Answered(T),
    /// The task could not bring its session up (`NotFound`, or the store's error).
    Failed(SessionHostError),
    /// The task ended (hibernated) before it got to the request; nothing of it ran.
    Ended,
}

/// Sends `work` to one session task and waits for its answer.
async fn attempt<T, W>(actor: &Actor, work: W) -> Attempt<T>
where
    T: Send + 'static,
    W: for<'a> FnOnce(&'a mut SessionRuntime) -> BoxFuture<'a, T> + Send + 'static,
{
    let (reply, answer) = oneshot::channel();
    let request = job(move |rt| {
        Box::pin(async move {
            let _ = reply.send(work(rt).await);
        })
    });
    if actor.mailbox.send(Request::Job(request)).await.is_ok() {
        if let Ok(out) = answer.await {
            return Attempt::Answered(out);
        }
    }
    match actor.failed.get() {
        Some(error) => Attempt::Failed(error.clone()),
        None => Attempt::Ended,
    }
}

/// The tokio session host. Cloning shares the same sessions.
#[derive(Clone)]
pub struct LocalSessionHost {
    inner: Arc<Inner>,
}

struct Inner {
    ports: SessionPorts,
    actors: Mutex<HashMap<SessionKey, Actor>>,
    generations: AtomicU64,
}

/// The registry's handle on one session task.
#[derive(Clone)]
struct Actor {
    mailbox: mpsc::Sender<Request>,
    generation: u64,
    /// Set when the task could not bring its session up; queued requests get this error.
    failed: Arc<OnceLock<SessionHostError>>,
}

/// How a task brings its session up.
enum Activation {
    Rehydrate,
    Create {
        init: Box<SessionInit>,
        created: oneshot::Sender<Result<SessionInfo, SessionHostError>>,
    },
}

impl LocalSessionHost {
    /// A host over `ports`. Must be used inside a tokio runtime (it spawns tasks).
    pub fn new(ports: SessionPorts) -> Self {
        LocalSessionHost {
            inner: Arc::new(Inner {
                ports,
                actors: Mutex::new(HashMap::new()),
                generations: AtomicU64::new(0),
            }),
        }
    }

    /// How many sessions have a live task.
    pub fn live_sessions(&self) -> usize {
        self.inner.actors.lock().unwrap().len()
    }

    /// Whether `key` has a live task.
    pub fn is_live(&self, key: &SessionKey) -> bool {
        self.inner.actors.lock().unwrap().contains_key(key)
    }

    /// Starts `key`'s task under the registry lock the caller holds.
    fn spawn_actor(
        &self,
        actors: &mut HashMap<SessionKey, Actor>,
        key: &SessionKey,
        activation: Activation,
    ) -> Actor {
        let (mailbox, inbox) = mpsc::channel(MAILBOX);
        let actor = Actor {
            mailbox,
            generation: self.inner.generations.fetch_add(1, Ordering::Relaxed),
            failed: Arc::default(),
        };
        actors.insert(key.clone(), actor.clone());
        let task = SessionTask {
            registry: Arc::downgrade(&self.inner),
            ports: self.inner.ports.clone(),
            key: key.clone(),
            generation: actor.generation,
            failed: actor.failed.clone(),
        };
        tokio::spawn(task.run(activation, inbox));
        actor
    }

    /// The live task of `key`, woken (rehydrating) if there is none.
    fn actor(&self, key: &SessionKey) -> Actor {
        let mut actors = self.inner.actors.lock().unwrap();
        match actors.get(key) {
            Some(actor) => actor.clone(),
            None => self.spawn_actor(&mut actors, key, Activation::Rehydrate),
        }
    }

    /// Runs `work` on `key`'s session and returns its output. `NotFound` when there is no such
    /// session. `work` is cloned for a retry when it landed on a task that was ending.
    async fn call<T, W>(&self, key: &SessionKey, work: W) -> Result<T, SessionHostError>
    where
        T: Send + 'static,
        W: for<'a> FnOnce(&'a mut SessionRuntime) -> BoxFuture<'a, T> + Clone + Send + 'static,
    {
        for _ in 0..SEND_ATTEMPTS {
            match attempt(&self.actor(key), work.clone()).await {
                Attempt::Answered(out) => return Ok(out),
                Attempt::Failed(error) => return Err(error),
                // The task hibernated before it got to this request: the next one rehydrates.
                Attempt::Ended => continue,
            }
        }
        Err(SessionHostError::Unavailable(format!(
            "session {} kept ending before it could answer",
            key.session()
        )))
    }

    /// Runs `work` only if `key` has a live task (a hibernated session has no connections).
    async fn call_if_live(
        &self,
        key: &SessionKey,
        work: impl for<'a> FnOnce(&'a mut SessionRuntime) -> BoxFuture<'a, ()> + Send + 'static,
    ) {
        let actor = self.inner.actors.lock().unwrap().get(key).cloned();
        if let Some(actor) = actor {
            let _ = actor.mailbox.send(Request::Job(job(work))).await;
        }
    }

    /// A session's info: from its task when live, else read from the store without waking it.
    async fn peek(&self, key: &SessionKey) -> Result<Option<SessionInfo>, SessionHostError> {
        if self.is_live(key) {
            return self
                .call(key, |rt| Box::pin(async move { rt.info() }))
                .await
                .map(Some);
        }
        let ports = &self.inner.ports;
        let Some(persisted) = ports
            .store
            .load(key)
            .await
            .map_err(|e| SessionHostError::from_class(e.class(), e.to_string()))?
        else {
            return Ok(None);
        };
        Ok(Some(
            Session::restore(ports.clock.now(), ports.config.clone(), persisted)?.info(),
        ))
    }
}

/// One session's task.
struct SessionTask {
    registry: Weak<Inner>,
    ports: SessionPorts,
    key: SessionKey,
    generation: u64,
    failed: Arc<OnceLock<SessionHostError>>,
}

impl SessionTask {
    async fn run(self, activation: Activation, mut inbox: mpsc::Receiver<Request>) {
        match self.activate(activation).await {
            Ok(runtime) => self.serve(runtime, &mut inbox).await,
            // Set before `inbox` drops, so callers whose requests it held read why.
            Err(error) => drop(self.failed.set(error)),
        }
        self.leave_registry();
        // `inbox` drops last: a caller whose request it still held retries on a fresh task.
    }

    async fn activate(&self, activation: Activation) -> Result<SessionRuntime, SessionHostError> {
        let existing = SessionRuntime::rehydrate(self.ports.clone(), self.key.clone()).await;
        match activation {
            Activation::Rehydrate => existing?.ok_or_else(|| {
                SessionHostError::NotFound(format!("no session {}", self.key.session()))
            }),
            Activation::Create { init, created } => {
                let outcome = match existing {
                    Ok(Some(runtime)) => {
                        let _ = created.send(Err(SessionHostError::Conflict(format!(
                            "session {} already exists",
                            self.key.session()
                        ))));
                        return Ok(runtime);
                    }
                    Ok(None) => SessionRuntime::create(self.ports.clone(), *init)
                        .await
                        .map_err(SessionHostError::from),
                    Err(refused) => Err(refused.into()),
                };
                let _ = created.send(
                    outcome
                        .as_ref()
                        .map(SessionRuntime::info)
                        .map_err(Clone::clone),
                );
                outcome
            }
        }
    }

    /// The task's loop: requests, deferred work and the timer, until the session hibernates or the
    /// host is dropped.
    async fn serve(&self, mut runtime: SessionRuntime, inbox: &mut mpsc::Receiver<Request>) {
        let mut deferred = FuturesUnordered::new();
        let mut timer: Option<(Timestamp, BoxFuture<'static, ()>)> = None;
        // A request taken out of the inbox while a batch of sandbox frames was gathered.
        let mut taken: Option<Request> = None;
        loop {
            deferred.extend(runtime.take_deferred());
            if let Some(request) = taken.take() {
                Self::handle(&mut runtime, request, inbox, &mut taken).await;
                continue;
            }
            if runtime.is_hibernating() && deferred.is_empty() && inbox.is_empty() {
                return;
            }
            let deadline = runtime.poll_deadline();
            if timer.as_ref().map(|(at, _)| *at) != deadline {
                timer = deadline.map(|at| {
                    let clock = self.ports.clock.clone();
                    let sleep: BoxFuture<'static, ()> =
                        Box::pin(async move { clock.sleep_until(at).await });
                    (at, sleep)
                });
            }
            tokio::select! {
                next = inbox.recv() => match next {
                    Some(request) => Self::handle(&mut runtime, request, inbox, &mut taken).await,
                    None => return, // the host is gone
                },
                Some(completion) = deferred.next(), if !deferred.is_empty() => runtime.complete(completion).await,
                () = expiry(&mut timer) => {
                    timer = None;
                    runtime.tick().await;
                }
            }
        }
    }

    /// Carries out one request. A sandbox frame takes every sandbox frame queued right behind it
    /// into one batch; the first other request met is left in `taken`, to run next.
    async fn handle(
        runtime: &mut SessionRuntime,
        request: Request,
        inbox: &mut mpsc::Receiver<Request>,
        taken: &mut Option<Request>,
    ) {
        let (conn, message) = match request {
            Request::Job(job) => return job(runtime).await,
            Request::Sandbox { conn, message } => (conn, message),
        };
        let mut batch = vec![(conn, message)];
        while batch.len() < BATCH_MESSAGES {
            match inbox.try_recv() {
                Ok(Request::Sandbox { conn, message }) => batch.push((conn, message)),
                Ok(other) => {
                    *taken = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        // Refusals detach their connection inside the runtime; nobody waits for these answers.
        let _ = runtime.sandbox_messages(batch).await;
    }

    /// Removes this task from the registry, unless a newer one already took the key.
    fn leave_registry(&self) {
        if let Some(inner) = self.registry.upgrade() {
            let mut actors = inner.actors.lock().unwrap();
            if actors
                .get(&self.key)
                .is_some_and(|actor| actor.generation == self.generation)
            {
                actors.remove(&self.key);
            }
        }
    }
}

/// Resolves when the armed timer expires; never when none is armed.
async fn expiry(timer: &mut Option<(Timestamp, BoxFuture<'static, ()>)>) {
    match timer {
        Some((_, sleep)) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl SessionHost for LocalSessionHost {
    async fn create(
        &self,
        principal: &Principal,
        request: CreateSession,
    ) -> Result<SessionInfo, SessionHostError> {
        let key = principal.tenant().session(request.session_id);
        let mut init = Some(SessionInit {
            key: key.clone(),
            model: request.model,
            agent: request.agent,
            repo: request.repo,
            created_by: principal.attribution(),
            permissions: request.permissions,
        });
        for _ in 0..SEND_ATTEMPTS {
            let existing = {
                let mut actors = self.inner.actors.lock().unwrap();
                match actors.get(&key) {
                    Some(actor) => Ok(actor.clone()),
                    None => {
                        let (created, answer) = oneshot::channel();
                        let init = init.take().expect("a create task is spawned once");
                        self.spawn_actor(
                            &mut actors,
                            &key,
                            Activation::Create {
                                init: Box::new(init),
                                created,
                            },
                        );
                        Err(answer)
                    }
                }
            };
            let existing = match existing {
                Ok(actor) => actor,
                Err(answer) => {
                    let ended = || {
                        SessionHostError::Unavailable(
                            "the session task ended before answering".into(),
                        )
                    };
                    return answer.await.unwrap_or_else(|_| Err(ended()));
                }
            };
            // A task holds the key: the session exists, unless that task is finding out it does not.
            match attempt(&existing, |_rt| Box::pin(async {})).await {
                Attempt::Answered(()) => break,
                Attempt::Failed(error) if error.class() != ErrorClass::NotFound => {
                    return Err(error)
                }
                Attempt::Failed(_) | Attempt::Ended => continue,
            }
        }
        Err(SessionHostError::Conflict(format!(
            "session {} already exists",
            key.session()
        )))
    }

    async fn info(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
    ) -> Result<SessionInfo, SessionHostError> {
        self.call(&tenant.session(session.clone()), |rt| {
            Box::pin(async move { rt.info() })
        })
        .await
    }

    async fn list(&self, tenant: &TenantContext) -> Result<Vec<SessionInfo>, SessionHostError> {
        let ids = self
            .inner
            .ports
            .store
            .list(tenant.org())
            .await
            .map_err(|e| SessionHostError::from_class(e.class(), e.to_string()))?;
        let mut infos = Vec::with_capacity(ids.len());
        for id in ids {
            infos.extend(self.peek(&tenant.session(id)).await?);
        }
        Ok(infos)
    }

    async fn prompt(
        &self,
        principal: &Principal,
        session: &SessionId,
        request: PromptRequest,
    ) -> Result<Queued, SessionHostError> {
        let by = principal.attribution();
        Ok(self
            .call(&principal.tenant().session(session.clone()), |rt| {
                Box::pin(rt.prompt(by, request))
            })
            .await??)
    }

    async fn cancel(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
        run: Option<RunId>,
    ) -> Result<(), SessionHostError> {
        let input = Input::Cancel { run_id: run };
        self.call(&tenant.session(session.clone()), |rt| {
            Box::pin(rt.handle(input))
        })
        .await??;
        Ok(())
    }

    async fn close(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
    ) -> Result<(), SessionHostError> {
        self.call(&tenant.session(session.clone()), |rt| {
            Box::pin(rt.handle(Input::Close))
        })
        .await??;
        Ok(())
    }

    async fn events(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, SessionHostError> {
        // The task hands out the read; the store answers it outside the task.
        let read = self
            .call(&tenant.session(session.clone()), move |rt| {
                Box::pin(async move { rt.events(after, limit) })
            })
            .await?;
        Ok(read.await?)
    }

    async fn attach_client(
        &self,
        principal: &Principal,
        session: &SessionId,
        after: Option<u64>,
    ) -> Result<ClientLink, SessionHostError> {
        let key = principal.tenant().session(session.clone());
        let (conn, frames) = self
            .call(&key, move |rt| {
                Box::pin(rt.attach_client(after, CLIENT_BUFFER))
            })
            .await??;
        let handle = LocalClientHandle {
            host: self.clone(),
            key,
            conn,
            by: principal.attribution(),
        };
        Ok(ClientLink {
            handle: Box::new(handle),
            frames,
        })
    }

    async fn attach_sandbox(
        &self,
        key: &SessionKey,
        token: &SecretString,
    ) -> Result<SandboxLink, SessionHostError> {
        let token = token.clone();
        let (conn, frames) = self
            .call(key, |rt| {
                Box::pin(async move { rt.attach_sandbox(&token).await })
            })
            .await??;
        let handle = LocalSandboxHandle {
            host: self.clone(),
            key: key.clone(),
            conn,
        };
        Ok(SandboxLink {
            handle: Box::new(handle),
            frames,
        })
    }
}

struct LocalClientHandle {
    host: LocalSessionHost,
    key: SessionKey,
    conn: ConnId,
    by: Attribution,
}

#[async_trait]
impl ClientHandle for LocalClientHandle {
    fn conn(&self) -> ConnId {
        self.conn
    }

    async fn send(&self, message: ClientMessage) -> Result<(), SessionHostError> {
        let (conn, by) = (self.conn, self.by.clone());
        Ok(self
            .host
            .call(&self.key, move |rt| {
                Box::pin(async move { rt.client_message(conn, &by, message).await })
            })
            .await??)
    }

    async fn detach(&self) {
        let conn = self.conn;
        self.host
            .call_if_live(&self.key, move |rt| Box::pin(rt.detach_client(conn)))
            .await;
    }
}

struct LocalSandboxHandle {
    host: LocalSessionHost,
    key: SessionKey,
    conn: ConnId,
}

#[async_trait]
impl SandboxHandle for LocalSandboxHandle {
    fn conn(&self) -> ConnId {
        self.conn
    }

    /// Pipelined: returns once the session's mailbox took the frame (waiting for room). `NotFound`
    /// when the session has no live task, which means this connection is no longer attached.
    async fn send(&self, message: SandboxMessage) -> Result<(), SessionHostError> {
        let gone = || {
            SessionHostError::NotFound(format!(
                "sandbox connection {} of session {} is no longer attached",
                self.conn,
                self.key.session()
            ))
        };
        let actor = self
            .host
            .inner
            .actors
            .lock()
            .unwrap()
            .get(&self.key)
            .cloned();
        let actor = actor.ok_or_else(gone)?;
        let request = Request::Sandbox {
            conn: self.conn,
            message,
        };
        actor.mailbox.send(request).await.map_err(|_| gone())
    }

    async fn detach(&self) {
        let conn = self.conn;
        self.host
            .call_if_live(&self.key, move |rt| Box::pin(rt.detach_sandbox(conn)))
            .await;
    }
}

/// The minter with real randomness: `sbx_` + 64 hex digits of 32 random bytes as sandbox tokens,
/// SHA-256 as their hash, UUIDv7 run ids, and connection numbers from a process-wide counter.
#[derive(Debug, Default)]
pub struct OsMinter {
    conns: AtomicU64,
}

impl OsMinter {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Minter for OsMinter {
    fn sandbox_token(&self) -> (SecretString, TokenHash) {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source is available");
        let token = SecretString::new(format!("sbx_{}", hex::encode(bytes)));
        let hash = self.hash_token(&token);
        (token, hash)
    }

    fn hash_token(&self, token: &SecretString) -> TokenHash {
        TokenHash(Sha256::digest(token.expose().as_bytes()).into())
    }

    fn run_id(&self) -> RunId {
        RunId::parse(uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid run id")
    }

    fn conn_id(&self) -> ConnId {
        ConnId(self.conns.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::AtomicBool;
    use switchboard_core::protocol::{Event, ServerFrame, ServerToSandbox};
    use switchboard_core::session::{Commit, Persisted, SessionConfig};
    use switchboard_core::{ModelRef, OrgId, Scope, UserId};
    use switchboard_fakes::{
        audit_log::InMemoryAuditLog, event_bus::InMemoryEventBus, minter::InMemoryMinter,
        model_gateway::InMemoryModelGateway, price_book::InMemoryPriceBook,
        run_ledger::InMemoryRunLedger, sandbox_provider::InMemorySandboxProvider,
        secret_vault::InMemorySecretVault, session_store::InMemorySessionStore, InMemoryClock,
    };
    use switchboard_ports::session::{ClientLink, SandboxLink};
    use switchboard_ports::{SecretVault, SessionStore, SessionStoreError};
    use tokio::sync::watch;

    /// An in-memory store whose commits wait while the gate is shut, and fail while `fail` is set.
    /// It records how many events each commit carried.
    struct GatedStore {
        inner: InMemorySessionStore,
        open: watch::Sender<bool>,
        fail: AtomicBool,
        entered: AtomicU64,
        commits: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl SessionStore for GatedStore {
        async fn commit(&self, key: &SessionKey, commit: &Commit) -> Result<(), SessionStoreError> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.subscribe();
            let _ = open.wait_for(|o| *o).await;
            if self.fail.load(Ordering::SeqCst) {
                return Err(SessionStoreError::Unavailable("disk gone".into()));
            }
            self.inner.commit(key, commit).await?;
            self.commits.lock().unwrap().push(commit.events.len());
            Ok(())
        }
        async fn load(&self, key: &SessionKey) -> Result<Option<Persisted>, SessionStoreError> {
            self.inner.load(key).await
        }
        async fn events(
            &self,
            key: &SessionKey,
            after: u64,
            limit: usize,
        ) -> Result<Vec<switchboard_core::protocol::EventEnvelope>, SessionStoreError> {
            self.inner.events(key, after, limit).await
        }
        async fn list(&self, org: &OrgId) -> Result<Vec<SessionId>, SessionStoreError> {
            self.inner.list(org).await
        }
    }

    /// Yields to the session task until `probe` answers (bounded: a hang fails the test).
    async fn until<T>(mut probe: impl FnMut() -> Option<T>) -> T {
        for _ in 0..100_000 {
            if let Some(found) = probe() {
                return found;
            }
            tokio::task::yield_now().await;
        }
        panic!("the awaited condition never held");
    }

    /// A live session with its sandbox attached, a run dispatched and a client attached, over a
    /// gated store. Returns the store, the links, the run id and the next `n`.
    async fn streaming_session() -> (Arc<GatedStore>, SandboxLink, ClientLink, RunId) {
        let clock = InMemoryClock::new();
        let sandboxes = Arc::new(InMemorySandboxProvider::new());
        let vault = Arc::new(InMemorySecretVault::new(Arc::new(clock.clone())));
        let principal = Principal::from_verified_credential(
            OrgId::parse("o-batch").unwrap(),
            UserId::parse("u-1").unwrap(),
            None,
            Scope::MEMBER.to_vec(),
        );
        vault
            .put(&principal.tenant(), "openai", &SecretString::new("sk-test"))
            .await
            .unwrap();
        let store = Arc::new(GatedStore {
            inner: InMemorySessionStore::new(),
            open: watch::channel(true).0,
            fail: AtomicBool::new(false),
            entered: AtomicU64::new(0),
            commits: Mutex::new(Vec::new()),
        });
        let ports = SessionPorts {
            store: store.clone(),
            sandboxes: sandboxes.clone(),
            gateway: Arc::new(InMemoryModelGateway::new(vault)),
            prices: Arc::new(InMemoryPriceBook::new()),
            ledger: Arc::new(InMemoryRunLedger::new()),
            bus: Arc::new(InMemoryEventBus::new()),
            audit: Arc::new(InMemoryAuditLog::new()),
            clock: Arc::new(clock.clone()),
            minter: Arc::new(InMemoryMinter::new()),
            callback_base: "ws://127.0.0.1:8080".into(),
            config: SessionConfig::default(),
        };
        let host = LocalSessionHost::new(ports);
        let session = SessionId::parse("s-batch").unwrap();
        let request = CreateSession {
            session_id: session.clone(),
            model: ModelRef::parse("openai/gpt-test").unwrap(),
            agent: "opencode".into(),
            repo: None,
            permissions: None,
        };
        host.create(&principal, request).await.unwrap();
        let token = until(|| {
            sandboxes
                .spawned()
                .first()
                .map(|(_, spec)| SecretString::new(spec.token.clone()))
        })
        .await;
        let key = principal.tenant().session(session.clone());
        let mut sandbox = host.attach_sandbox(&key, &token).await.unwrap();
        let run = RunId::parse("r-batch").unwrap();
        let prompt = PromptRequest {
            run_id: run.clone(),
            text: "stream".into(),
            client_msg_id: None,
        };
        host.prompt(&principal, &session, prompt).await.unwrap();
        loop {
            match sandbox
                .frames
                .next()
                .await
                .expect("the sandbox stream is open")
            {
                ServerToSandbox::Run { .. } => break,
                _ => continue,
            }
        }
        let client = host
            .attach_client(&principal, &session, None)
            .await
            .unwrap();
        (store, sandbox, client, run)
    }

    fn delta(run: &RunId, n: u64) -> SandboxMessage {
        SandboxMessage::Event {
            run_id: run.clone(),
            n,
            event: Event::MessageDelta {
                text: format!("piece {n}"),
            },
        }
    }

    /// The `n`s acknowledged so far (and whether the sandbox stream ended).
    fn acks(sandbox: &mut SandboxLink) -> (Vec<u64>, bool) {
        let mut acked = Vec::new();
        loop {
            match sandbox.frames.try_recv() {
                Ok(ServerToSandbox::Ack { n }) => acked.push(n),
                Ok(_) => {}
                Err(e) => return (acked, e.is_closed()),
            }
        }
    }

    /// The texts of the deltas a client has received so far.
    fn deltas(client: &mut ClientLink) -> Vec<String> {
        let mut texts = Vec::new();
        while let Ok(frame) = client.frames.try_recv() {
            if let ServerFrame::Event(e) = frame {
                if let Event::MessageDelta { text } = e.event {
                    texts.push(text);
                }
            }
        }
        texts
    }

    #[tokio::test]
    async fn queued_sandbox_frames_share_one_commit_and_nothing_shows_before_it_is_durable() {
        let (store, mut sandbox, mut client, run) = streaming_session().await;
        let _ = acks(&mut sandbox);
        let _ = deltas(&mut client);
        let entered = store.entered.load(Ordering::SeqCst);
        let committed_before = store.commits.lock().unwrap().len();
        store.open.send_replace(false);
        // Pipelined: each send returns once the mailbox took the frame.
        for n in 1..=50 {
            sandbox.handle.send(delta(&run, n)).await.unwrap();
        }
        until(|| (store.entered.load(Ordering::SeqCst) > entered).then_some(())).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let (acked, ended) = acks(&mut sandbox);
        assert!(
            acked.is_empty() && !ended,
            "an ACK before the commit: {acked:?}"
        );
        assert!(
            deltas(&mut client).is_empty(),
            "an event shown before its commit"
        );

        store.open.send_replace(true);
        let mut acked = Vec::new();
        until(|| {
            acked.extend(acks(&mut sandbox).0);
            acked.contains(&50).then_some(())
        })
        .await;
        let mut seen = Vec::new();
        until(|| {
            seen.extend(deltas(&mut client));
            (seen.len() == 50).then_some(())
        })
        .await;
        assert_eq!(
            seen,
            (1..=50).map(|n| format!("piece {n}")).collect::<Vec<_>>()
        );
        let commits = store.commits.lock().unwrap().clone();
        let carrying = &commits[committed_before..];
        assert_eq!(carrying.iter().sum::<usize>(), 50, "{commits:?}");
        assert!(
            carrying.len() <= 2,
            "fifty queued frames are coalesced, not committed one by one: {commits:?}"
        );
        // The merged commit carried the snapshot of the state after the batch's last frame.
        let key = SessionKey::for_sandbox_dial_back(
            OrgId::parse("o-batch").unwrap(),
            SessionId::parse("s-batch").unwrap(),
        );
        let persisted = store.inner.load(&key).await.unwrap().unwrap();
        assert_eq!(
            persisted.snapshot.to_value().unwrap()["sandbox"]["last_n"],
            50
        );
    }

    #[tokio::test]
    async fn a_failed_batch_commit_acknowledges_and_shows_nothing_of_it() {
        let (store, mut sandbox, mut client, run) = streaming_session().await;
        let _ = acks(&mut sandbox);
        let _ = deltas(&mut client);
        store.fail.store(true, Ordering::SeqCst);
        for n in 1..=20 {
            // The session may already be gone for the later frames: that is a refusal, not a hang.
            let _ = sandbox.handle.send(delta(&run, n)).await;
        }
        let mut acked = Vec::new();
        until(|| {
            let (more, ended) = acks(&mut sandbox);
            acked.extend(more);
            ended.then_some(())
        })
        .await;
        assert!(
            acked.is_empty(),
            "nothing of a failed commit is acknowledged: {acked:?}"
        );
        assert!(
            deltas(&mut client).is_empty(),
            "nothing of a failed commit is shown"
        );
        let key_events = store.commits.lock().unwrap().iter().sum::<usize>();
        store.fail.store(false, Ordering::SeqCst);
        let stored = store
            .inner
            .events(
                &SessionKey::for_sandbox_dial_back(
                    OrgId::parse("o-batch").unwrap(),
                    SessionId::parse("s-batch").unwrap(),
                ),
                0,
                1000,
            )
            .await
            .unwrap();
        assert_eq!(
            stored.len(),
            key_events,
            "the store holds only what was committed"
        );
        assert!(stored
            .iter()
            .all(|e| !matches!(e.event, Event::MessageDelta { .. })));
    }

    #[test]
    fn os_minter_mints_fresh_tokens_and_time_ordered_run_ids() {
        let minter = OsMinter::new();
        let (a, hash_a) = minter.sandbox_token();
        let (b, _) = minter.sandbox_token();
        assert!(a.expose().starts_with("sbx_") && a.expose().len() == 4 + 64);
        assert_ne!(a.expose(), b.expose());
        assert!(minter.hash_token(&a).matches(&hash_a));
        let (first, second) = (minter.run_id(), minter.run_id());
        assert!(
            first.as_str() < second.as_str(),
            "UUIDv7 ids sort by creation: {first} then {second}"
        );
        assert_ne!(minter.conn_id(), minter.conn_id());
    }
}
