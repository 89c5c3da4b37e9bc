//! `InMemorySessionHost`: the `SessionHost` port over `SessionRuntime` with no tasks. Every call
//! locks its session, runs it, and runs the slow work it left behind inline until the session is
//! at rest; time moves only when a test advances the clock and calls
//! [`InMemorySessionHost::fire_due`].

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::lock::{Mutex as AsyncMutex, OwnedMutexGuard};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use switchboard_core::protocol::{ClientMessage, SandboxMessage};
use switchboard_core::session::{Input, SessionInfo, SessionInit};
use switchboard_core::tenancy::{Attribution, Principal, SessionKey, TenantContext};
use switchboard_core::{ConnId, RunId, SessionId};
use switchboard_ports::runtime::{SessionPorts, SessionRuntime, CLIENT_BUFFER};
use switchboard_ports::session::{
    ClientHandle, ClientLink, CreateSession, EventPage, PromptRequest, Queued, SandboxHandle, SandboxLink, SessionHost,
    SessionHostError,
};
use switchboard_ports::{Classify, FromClass, SecretString};

/// How many times `fire_due` ticks one session in a row before moving on (a guard against a
/// machine whose deadline does not move).
const MAX_TICKS_PER_FIRE: usize = 64;

/// One session's slot: `None` while it hibernates (or was never loaded).
type Cell = Arc<AsyncMutex<Option<SessionRuntime>>>;
type Guard = OwnedMutexGuard<Option<SessionRuntime>>;

/// An in-memory [`SessionHost`]. Sessions hibernate for real: the runtime is dropped and rebuilt
/// from the `SessionStore` on the next call, as a real host would.
#[derive(Clone)]
pub struct InMemorySessionHost {
    inner: Arc<Inner>,
}

struct Inner {
    ports: SessionPorts,
    cells: Mutex<BTreeMap<SessionKey, Cell>>,
}

impl InMemorySessionHost {
    pub fn new(ports: SessionPorts) -> Self {
        InMemorySessionHost { inner: Arc::new(Inner { ports, cells: Mutex::new(BTreeMap::new()) }) }
    }

    /// Ticks every live session whose deadline has come (by the ports' clock), until none is due.
    pub async fn fire_due(&self) {
        let cells: Vec<Cell> = self.inner.cells.lock().unwrap().values().cloned().collect();
        let clock = self.inner.ports.clock.clone();
        for cell in cells {
            let mut guard = cell.lock_owned().await;
            for _ in 0..MAX_TICKS_PER_FIRE {
                let Some(runtime) = guard.as_mut() else { break };
                if !runtime.poll_deadline().is_some_and(|at| at <= clock.now()) {
                    break;
                }
                runtime.tick().await;
                settle(&mut guard).await;
            }
        }
    }

    /// Whether `key`'s runtime is in memory (false once it hibernated).
    pub fn is_live(&self, key: &SessionKey) -> bool {
        let cell = self.inner.cells.lock().unwrap().get(key).cloned();
        cell.and_then(|cell| cell.try_lock().map(|guard| guard.is_some())).unwrap_or(false)
    }
}

impl Inner {
    fn cell(&self, key: &SessionKey) -> Cell {
        self.cells.lock().unwrap().entry(key.clone()).or_default().clone()
    }

    /// Locks `key`'s session, rebuilding it from the store if it is not in memory. `NotFound` when
    /// the store has no such session.
    async fn open(&self, key: &SessionKey) -> Result<Guard, SessionHostError> {
        let mut guard = self.cell(key).lock_owned().await;
        if guard.is_none() {
            *guard = SessionRuntime::rehydrate(self.ports.clone(), key.clone()).await?;
        }
        if guard.is_none() {
            return Err(SessionHostError::NotFound(format!("no session {}", key.session())));
        }
        Ok(guard)
    }

    /// Runs `work` on `key`'s session, then brings the session to rest.
    async fn call<T>(&self, key: &SessionKey, work: impl for<'a> FnOnce(&'a mut SessionRuntime) -> BoxFuture<'a, T>) -> Result<T, SessionHostError> {
        let mut guard = self.open(key).await?;
        let runtime = guard.as_mut().expect("an open session is in memory");
        let out = work(runtime).await;
        settle(&mut guard).await;
        Ok(out)
    }

    /// Like `call`, but only if the session is in memory (a hibernated one has no connections).
    async fn call_if_live(&self, key: &SessionKey, work: impl for<'a> FnOnce(&'a mut SessionRuntime) -> BoxFuture<'a, ()>) {
        let mut guard = self.cell(key).lock_owned().await;
        if let Some(runtime) = guard.as_mut() {
            work(runtime).await;
            settle(&mut guard).await;
        }
    }
}

/// Runs the session's deferred work to completion, feeding each result back (which may leave more
/// work: a loop, not recursion), then drops the runtime if it hibernated.
async fn settle(guard: &mut Guard) {
    let Some(runtime) = guard.as_mut() else { return };
    let mut pending: VecDeque<_> = runtime.take_deferred().into();
    while let Some(work) = pending.pop_front() {
        let completion = work.await;
        runtime.complete(completion).await;
        pending.extend(runtime.take_deferred());
    }
    if runtime.is_hibernating() {
        **guard = None;
    }
}

fn not_found(session: &SessionId) -> SessionHostError {
    SessionHostError::NotFound(format!("no session {session}"))
}

#[async_trait]
impl SessionHost for InMemorySessionHost {
    async fn create(&self, principal: &Principal, request: CreateSession) -> Result<SessionInfo, SessionHostError> {
        let key = principal.tenant().session(request.session_id);
        let mut guard = self.inner.cell(&key).lock_owned().await;
        if guard.is_none() {
            *guard = SessionRuntime::rehydrate(self.inner.ports.clone(), key.clone()).await?;
        }
        if guard.is_some() {
            return Err(SessionHostError::Conflict(format!("session {} already exists", key.session())));
        }
        let init = SessionInit { key, model: request.model, agent: request.agent, repo: request.repo, created_by: principal.attribution() };
        let runtime = SessionRuntime::create(self.inner.ports.clone(), init).await?;
        let info = runtime.info();
        *guard = Some(runtime);
        settle(&mut guard).await;
        Ok(info)
    }

    async fn info(&self, tenant: &TenantContext, session: &SessionId) -> Result<SessionInfo, SessionHostError> {
        self.inner.call(&tenant.session(session.clone()), |rt| Box::pin(async move { rt.info() })).await
    }

    async fn list(&self, tenant: &TenantContext) -> Result<Vec<SessionInfo>, SessionHostError> {
        let ids = self.inner.ports.store.list(tenant.org()).await.map_err(|e| SessionHostError::from_class(e.class(), e.to_string()))?;
        let mut infos = Vec::with_capacity(ids.len());
        for id in ids {
            infos.push(self.info(tenant, &id).await?);
        }
        Ok(infos)
    }

    async fn prompt(&self, principal: &Principal, session: &SessionId, request: PromptRequest) -> Result<Queued, SessionHostError> {
        let by = principal.attribution();
        Ok(self.inner.call(&principal.tenant().session(session.clone()), |rt| Box::pin(rt.prompt(by, request))).await??)
    }

    async fn cancel(&self, tenant: &TenantContext, session: &SessionId, run: Option<RunId>) -> Result<(), SessionHostError> {
        let input = Input::Cancel { run_id: run };
        self.inner.call(&tenant.session(session.clone()), |rt| Box::pin(rt.handle(input))).await??;
        Ok(())
    }

    async fn close(&self, tenant: &TenantContext, session: &SessionId) -> Result<(), SessionHostError> {
        self.inner.call(&tenant.session(session.clone()), |rt| Box::pin(rt.handle(Input::Close))).await??;
        Ok(())
    }

    async fn events(&self, tenant: &TenantContext, session: &SessionId, after: u64, limit: usize) -> Result<EventPage, SessionHostError> {
        Ok(self.inner.call(&tenant.session(session.clone()), |rt| Box::pin(rt.events(after, limit))).await??)
    }

    async fn attach_client(&self, principal: &Principal, session: &SessionId, after: Option<u64>) -> Result<ClientLink, SessionHostError> {
        let key = principal.tenant().session(session.clone());
        let attached = self
            .inner
            .call(&key, |rt| {
                // Nothing reads while the replay runs inline here, so the channel must hold all of it.
                let backlog = rt.machine().last_seq().saturating_sub(after.unwrap_or(0));
                let buffer = CLIENT_BUFFER + usize::try_from(backlog).unwrap_or(usize::MAX - CLIENT_BUFFER);
                Box::pin(rt.attach_client(after, buffer))
            })
            .await;
        let (conn, frames) = attached.map_err(|e| if e.class() == switchboard_core::ErrorClass::NotFound { not_found(session) } else { e })??;
        let handle = InMemoryClientHandle { inner: self.inner.clone(), key, conn, by: principal.attribution() };
        Ok(ClientLink { handle: Box::new(handle), frames })
    }

    async fn attach_sandbox(&self, key: &SessionKey, token: &SecretString) -> Result<SandboxLink, SessionHostError> {
        let token = token.clone();
        let (conn, frames) = self.inner.call(key, |rt| Box::pin(async move { rt.attach_sandbox(&token).await })).await??;
        let handle = InMemorySandboxHandle { inner: self.inner.clone(), key: key.clone(), conn };
        Ok(SandboxLink { handle: Box::new(handle), frames })
    }
}

struct InMemoryClientHandle {
    inner: Arc<Inner>,
    key: SessionKey,
    conn: ConnId,
    by: Attribution,
}

#[async_trait]
impl ClientHandle for InMemoryClientHandle {
    fn conn(&self) -> ConnId {
        self.conn
    }

    async fn send(&self, message: ClientMessage) -> Result<(), SessionHostError> {
        let (conn, by) = (self.conn, self.by.clone());
        Ok(self.inner.call(&self.key, |rt| Box::pin(async move { rt.client_message(conn, &by, message).await })).await??)
    }

    async fn detach(&self) {
        let conn = self.conn;
        self.inner.call_if_live(&self.key, |rt| Box::pin(rt.detach_client(conn))).await;
    }
}

struct InMemorySandboxHandle {
    inner: Arc<Inner>,
    key: SessionKey,
    conn: ConnId,
}

#[async_trait]
impl SandboxHandle for InMemorySandboxHandle {
    fn conn(&self) -> ConnId {
        self.conn
    }

    async fn send(&self, message: SandboxMessage) -> Result<(), SessionHostError> {
        let conn = self.conn;
        Ok(self.inner.call(&self.key, |rt| Box::pin(rt.sandbox_message(conn, message))).await??)
    }

    async fn detach(&self) {
        let conn = self.conn;
        self.inner.call_if_live(&self.key, |rt| Box::pin(rt.detach_sandbox(conn))).await;
    }
}
