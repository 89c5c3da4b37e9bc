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
    ClientHandle, ClientLink, CreateSession, EventPage, PromptRequest, Queued, SandboxHandle,
    SandboxLink, SessionHost, SessionHostError,
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
        InMemorySessionHost {
            inner: Arc::new(Inner {
                ports,
                cells: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Ticks every live session whose deadline has come (by the ports' clock), until none is due.
    pub async fn fire_due(&self) {
        let cells: Vec<Cell> = self.inner.cells.lock().unwrap().values().cloned().collect();
        let clock = self.inner.ports.clock.clone();
        for cell in cells {
            let mut guard = cell.lock_owned().await;
            for _ in 0..MAX_TICKS_PER_FIRE {
                let Some(runtime) = guard.as_mut() else { break };
                if runtime.poll_deadline().is_none_or(|at| at > clock.now()) {
                    break;
                }
                runtime.tick().await;
                settle(&mut guard).await;
            }
        }
    }

    /// Whether `key`'s runtime is in memory (false once it hibernated). A session in the middle
    /// of a call counts as live.
    pub fn is_live(&self, key: &SessionKey) -> bool {
        let cell = self.inner.cells.lock().unwrap().get(key).cloned();
        cell.is_some_and(|cell| cell.try_lock().is_none_or(|guard| guard.is_some()))
    }
}

impl Inner {
    fn cell(&self, key: &SessionKey) -> Cell {
        self.cells
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Locks `key`'s session, rebuilding it from the store if it is not in memory. `NotFound` when
    /// the store has no such session.
    async fn open(&self, key: &SessionKey) -> Result<Guard, SessionHostError> {
        let mut guard = self.cell(key).lock_owned().await;
        if guard.is_none() {
            *guard = SessionRuntime::rehydrate(self.ports.clone(), key.clone()).await?;
        }
        if guard.is_none() {
            return Err(SessionHostError::NotFound(format!(
                "no session {}",
                key.session()
            )));
        }
        Ok(guard)
    }

    /// Runs `work` on `key`'s session, then brings the session to rest.
    async fn call<T>(
        &self,
        key: &SessionKey,
        work: impl for<'a> FnOnce(&'a mut SessionRuntime) -> BoxFuture<'a, T>,
    ) -> Result<T, SessionHostError> {
        let mut guard = self.open(key).await?;
        let runtime = guard.as_mut().expect("an open session is in memory");
        let out = work(runtime).await;
        settle(&mut guard).await;
        Ok(out)
    }

    /// Like `call`, but only if the session is in memory (a hibernated one has no connections).
    async fn call_if_live(
        &self,
        key: &SessionKey,
        work: impl for<'a> FnOnce(&'a mut SessionRuntime) -> BoxFuture<'a, ()>,
    ) {
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
    let Some(runtime) = guard.as_mut() else {
        return;
    };
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

#[async_trait]
impl SessionHost for InMemorySessionHost {
    async fn create(
        &self,
        principal: &Principal,
        request: CreateSession,
    ) -> Result<SessionInfo, SessionHostError> {
        let key = principal.tenant().session(request.session_id);
        let mut guard = self.inner.cell(&key).lock_owned().await;
        if guard.is_none() {
            *guard = SessionRuntime::rehydrate(self.inner.ports.clone(), key.clone()).await?;
        }
        if guard.is_some() {
            return Err(SessionHostError::Conflict(format!(
                "session {} already exists",
                key.session()
            )));
        }
        let init = SessionInit {
            key,
            model: request.model,
            agent: request.agent,
            repo: request.repo,
            created_by: principal.attribution(),
            permissions: request.permissions,
        };
        let runtime = SessionRuntime::create(self.inner.ports.clone(), init).await?;
        let info = runtime.info();
        *guard = Some(runtime);
        settle(&mut guard).await;
        Ok(info)
    }

    async fn info(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
    ) -> Result<SessionInfo, SessionHostError> {
        self.inner
            .call(&tenant.session(session.clone()), |rt| {
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
            infos.push(self.info(tenant, &id).await?);
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
            .inner
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
        self.inner
            .call(&tenant.session(session.clone()), |rt| {
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
        self.inner
            .call(&tenant.session(session.clone()), |rt| {
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
        Ok(self
            .inner
            .call(&tenant.session(session.clone()), |rt| {
                Box::pin(rt.events(after, limit))
            })
            .await??)
    }

    async fn attach_client(
        &self,
        principal: &Principal,
        session: &SessionId,
        after: Option<u64>,
    ) -> Result<ClientLink, SessionHostError> {
        let key = principal.tenant().session(session.clone());
        let attached = self
            .inner
            .call(&key, |rt| {
                // Nothing reads while the replay runs inline here, so the channel must hold all of it.
                let backlog = rt.machine().last_seq().saturating_sub(after.unwrap_or(0));
                let buffer =
                    CLIENT_BUFFER + usize::try_from(backlog).unwrap_or(usize::MAX - CLIENT_BUFFER);
                Box::pin(rt.attach_client(after, buffer))
            })
            .await;
        let (conn, frames) = attached??;
        let handle = InMemoryClientHandle {
            inner: self.inner.clone(),
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
            .inner
            .call(key, |rt| {
                Box::pin(async move { rt.attach_sandbox(&token).await })
            })
            .await??;
        let handle = InMemorySandboxHandle {
            inner: self.inner.clone(),
            key: key.clone(),
            conn,
        };
        Ok(SandboxLink {
            handle: Box::new(handle),
            frames,
        })
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
        Ok(self
            .inner
            .call(&self.key, |rt| {
                Box::pin(async move { rt.client_message(conn, &by, message).await })
            })
            .await??)
    }

    async fn detach(&self) {
        let conn = self.conn;
        self.inner
            .call_if_live(&self.key, |rt| Box::pin(rt.detach_client(conn)))
            .await;
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
        Ok(self
            .inner
            .call(&self.key, |rt| Box::pin(rt.sandbox_message(conn, message)))
            .await??)
    }

    async fn detach(&self) {
        let conn = self.conn;
        self.inner
            .call_if_live(&self.key, |rt| Box::pin(rt.detach_sandbox(conn)))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minter::InMemoryMinter;
    use crate::{
        audit_log::InMemoryAuditLog, event_bus::InMemoryEventBus,
        model_gateway::InMemoryModelGateway, price_book::InMemoryPriceBook,
        run_ledger::InMemoryRunLedger, sandbox_provider::InMemorySandboxProvider,
        secret_vault::InMemorySecretVault, session_store::InMemorySessionStore, InMemoryClock,
    };
    use switchboard_core::protocol::{Event, ServerFrame, SessionStatus};
    use switchboard_core::session::{Commit, Persisted, SessionConfig};
    use switchboard_core::{ErrorClass, ModelRef, OrgId, Scope, UserId};
    use switchboard_ports::{SessionStore, SessionStoreError};

    /// Polls a future to completion on this thread (the fakes crate has no runtime).
    fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut fut = std::pin::pin!(fut);
        loop {
            if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    /// What the next commits do.
    enum Flake {
        /// The commit behaves.
        Pass,
        Fail(ErrorClass),
        /// The commit lands but the caller hears `Timeout`.
        LoseAnswer,
    }

    /// A session store whose commits follow a script, then behave.
    #[derive(Default)]
    struct FlakyStore {
        inner: InMemorySessionStore,
        script: Mutex<VecDeque<Flake>>,
        commits: Mutex<u32>,
    }

    impl FlakyStore {
        fn script(&self, flakes: impl IntoIterator<Item = Flake>) {
            self.script.lock().unwrap().extend(flakes);
        }
        fn commits(&self) -> u32 {
            *self.commits.lock().unwrap()
        }
    }

    #[async_trait]
    impl SessionStore for FlakyStore {
        async fn commit(&self, key: &SessionKey, commit: &Commit) -> Result<(), SessionStoreError> {
            *self.commits.lock().unwrap() += 1;
            let flake = self.script.lock().unwrap().pop_front();
            match flake {
                Some(Flake::Fail(class)) => Err(SessionStoreError::from_class(class, "scripted")),
                Some(Flake::LoseAnswer) => {
                    self.inner.commit(key, commit).await?;
                    Err(SessionStoreError::Timeout("the answer was lost".into()))
                }
                Some(Flake::Pass) | None => self.inner.commit(key, commit).await,
            }
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
        async fn list(
            &self,
            org: &switchboard_core::OrgId,
        ) -> Result<Vec<SessionId>, SessionStoreError> {
            self.inner.list(org).await
        }
    }

    struct World {
        host: InMemorySessionHost,
        /// What `host` runs on: a second host over them is the same deployment after a restart.
        ports: SessionPorts,
        clock: InMemoryClock,
        store: Arc<FlakyStore>,
        sandboxes: Arc<InMemorySandboxProvider>,
        principal: Principal,
    }

    fn world() -> World {
        let clock = InMemoryClock::new();
        let store = Arc::new(FlakyStore::default());
        let sandboxes = Arc::new(InMemorySandboxProvider::new());
        let vault = Arc::new(InMemorySecretVault::new(Arc::new(clock.clone())));
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
            callback_base: "ws://127.0.0.1:8080/".into(),
            config: SessionConfig::default(),
        };
        let principal = Principal::from_verified_credential(
            OrgId::parse("o-1").unwrap(),
            UserId::parse("u-1").unwrap(),
            None,
            Scope::MEMBER.to_vec(),
        );
        World {
            host: InMemorySessionHost::new(ports.clone()),
            ports,
            clock,
            store,
            sandboxes,
            principal,
        }
    }

    fn s1() -> SessionId {
        SessionId::parse("s-1").unwrap()
    }

    fn try_create(w: &World) -> Result<SessionInfo, SessionHostError> {
        let request = CreateSession {
            session_id: s1(),
            model: ModelRef::parse("openai/gpt-test").unwrap(),
            agent: "opencode".into(),
            repo: None,
            permissions: None,
        };
        block_on(w.host.create(&w.principal, request))
    }

    fn create(w: &World) -> SessionInfo {
        try_create(w).unwrap()
    }

    fn prompt(w: &World, run: &str) -> Result<Queued, SessionHostError> {
        let request = PromptRequest {
            run_id: RunId::parse(run).unwrap(),
            text: "hello".into(),
            client_msg_id: None,
        };
        block_on(w.host.prompt(&w.principal, &s1(), request))
    }

    fn drain(link: &mut ClientLink) -> (Vec<ServerFrame>, bool) {
        let mut frames = Vec::new();
        loop {
            match link.frames.try_recv() {
                Ok(frame) => frames.push(frame),
                Err(e) => return (frames, e.is_closed()),
            }
        }
    }

    #[test]
    fn spawn_spec_names_the_dial_back_route_and_a_fresh_token() {
        let w = world();
        create(&w);
        let spawned = w.sandboxes.spawned();
        assert_eq!(spawned.len(), 1);
        let spec = &spawned[0].1;
        assert_eq!(spec.session_key, "o-1:s-1");
        assert_eq!(
            spec.callback_url,
            "ws://127.0.0.1:8080/sandbox/v1/sessions/o-1/s-1/ws"
        );
        assert!(!spec.token.is_empty());
    }

    #[test]
    fn a_session_starts_in_one_commit_that_already_holds_its_sandbox_token() {
        let w = world();
        // The first commit lands; the next one (the spawn's answer) fails for good, which evicts
        // the session.
        let attempts = switchboard_ports::runtime::PERSIST_ATTEMPTS;
        w.store.script(
            std::iter::once(Flake::Pass)
                .chain((0..attempts).map(|_| Flake::Fail(ErrorClass::Unavailable))),
        );
        create(&w);
        assert_eq!(
            w.store.commits(),
            1 + attempts,
            "one commit started the session (with its token), then the spawn's answer failed"
        );
        assert!(!w.host.is_live(&w.principal.tenant().session(s1())));
        // The token was durable with the start: after a restart, the dial-back is accepted.
        let spawned = w.sandboxes.spawned();
        assert_eq!(spawned.len(), 1, "the provider was asked once");
        let token = SecretString::new(spawned[0].1.token.clone());
        let restarted = InMemorySessionHost::new(w.ports.clone());
        let key = w.principal.tenant().session(s1());
        let link = block_on(restarted.attach_sandbox(&key, &token));
        assert!(
            link.is_ok(),
            "the rebuilt session knows the token: {:?}",
            link.err()
        );
        let wrong = SecretString::new("sbx_not-the-token".to_string());
        let refused =
            block_on(InMemorySessionHost::new(w.ports.clone()).attach_sandbox(&key, &wrong));
        assert_eq!(
            refused.err().map(|e| e.class()),
            Some(ErrorClass::Unauthorized)
        );
    }

    #[test]
    fn no_sandbox_is_asked_for_when_the_start_is_not_durable() {
        let w = world();
        w.store
            .script((0..3).map(|_| Flake::Fail(ErrorClass::Unavailable)));
        let refused = try_create(&w).unwrap_err();
        assert_eq!(refused.class(), ErrorClass::Unavailable);
        assert!(
            w.sandboxes.spawned().is_empty(),
            "a sandbox for a session that does not exist would leak"
        );
    }

    #[test]
    fn a_failed_commit_fails_the_request_shows_nothing_and_stops_all_writes() {
        let w = world();
        create(&w);
        let mut client = block_on(w.host.attach_client(&w.principal, &s1(), None)).unwrap();
        let (before, closed) = drain(&mut client);
        assert!(!closed && !before.is_empty());
        let stored = w
            .store
            .inner
            .event_count(&w.principal.tenant().session(s1()));

        w.store
            .script((0..3).map(|_| Flake::Fail(ErrorClass::Unavailable)));
        let commits_before = w.store.commits();
        let refused = prompt(&w, "r-1").unwrap_err();
        assert_eq!(
            w.store.commits(),
            commits_before + switchboard_ports::runtime::PERSIST_ATTEMPTS,
            "the commit is tried a few times, then nothing more is written"
        );
        assert_eq!(
            refused.class(),
            ErrorClass::Unavailable,
            "the prompt was not durable: no 202"
        );

        let (after, closed) = drain(&mut client);
        assert!(
            closed,
            "clients are dropped once nothing more can be made durable"
        );
        assert!(
            after.iter().all(|f| !matches!(f, ServerFrame::Event(_))),
            "no event that is not in the store is shown: {after:?}"
        );
        assert_eq!(
            w.store
                .inner
                .event_count(&w.principal.tenant().session(s1())),
            stored
        );

        // The evicted runtime is gone; with the store back, the next request rebuilds the session
        // from its last durable state, where the refused prompt never happened.
        assert!(
            !w.host.is_live(&w.principal.tenant().session(s1())),
            "the actor was dropped"
        );
        let queued = prompt(&w, "r-2").expect("the rebuilt session takes prompts");
        assert_eq!(queued.run_id.as_str(), "r-2");
        assert_eq!(queued.position, 0, "the refused prompt was never queued");
    }

    #[test]
    fn a_commit_whose_answer_was_lost_is_found_in_the_store_not_failed() {
        let w = world();
        create(&w);
        w.store.script([Flake::LoseAnswer]);
        let queued = prompt(&w, "r-1").unwrap();
        assert_eq!(queued.position, 0);
        let page = block_on(w.host.events(&w.principal.tenant(), &s1(), 0, 100)).unwrap();
        let queued_events = page
            .events
            .iter()
            .filter(|e| matches!(e.event, Event::RunQueued { .. }))
            .count();
        assert_eq!(queued_events, 1);
        assert_eq!(
            block_on(w.host.info(&w.principal.tenant(), &s1()))
                .unwrap()
                .status,
            SessionStatus::Provisioning
        );
    }

    #[test]
    fn deadlines_fire_and_a_hibernated_session_comes_back_from_the_store() {
        let w = world();
        create(&w);
        let key = w.principal.tenant().session(s1());
        let config = SessionConfig::default();

        // The sandbox never dials back: a second spawn with a new token, then the cycle gives up.
        w.clock.advance(config.spawn_timeout);
        block_on(w.host.fire_due());
        let spawned = w.sandboxes.spawned();
        assert_eq!(spawned.len(), 2);
        let stale = SecretString::new(spawned[0].1.token.clone());
        let refused = block_on(w.host.attach_sandbox(&key, &stale))
            .err()
            .map(|e| e.class());
        assert_eq!(
            refused,
            Some(ErrorClass::Unauthorized),
            "the first token died with its spawn"
        );
        w.clock.advance(config.spawn_timeout);
        block_on(w.host.fire_due());
        let before = block_on(w.host.events(&w.principal.tenant(), &s1(), 0, 100)).unwrap();

        // Nothing is live any more: it hibernates, and any call rebuilds it from the store.
        assert!(w.host.is_live(&key));
        w.clock.advance(config.hibernate_after);
        block_on(w.host.fire_due());
        assert!(!w.host.is_live(&key), "the runtime was dropped");
        let info = block_on(w.host.info(&w.principal.tenant(), &s1())).unwrap();
        assert!(w.host.is_live(&key));
        assert_eq!(info.last_seq, before.last_seq);
        let mut client = block_on(w.host.attach_client(&w.principal, &s1(), None)).unwrap();
        let replayed: Vec<_> = drain(&mut client)
            .0
            .into_iter()
            .filter_map(|f| {
                if let ServerFrame::Event(e) = f {
                    Some(e)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(replayed, before.events);
        assert_eq!(
            prompt(&w, "r-1").unwrap().position,
            0,
            "it takes work again"
        );
        assert_eq!(
            w.sandboxes.spawned().len(),
            3,
            "and spawns a sandbox for it"
        );
        let live = drain(&mut client).0;
        assert!(
            live.iter().any(
                |f| matches!(f, ServerFrame::Event(e) if matches!(e.event, Event::RunQueued { .. }))
            ),
            "{live:?}"
        );
    }
}
