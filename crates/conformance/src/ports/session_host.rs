//! Contract cases, fault catalog and `Faulty` wrapper for `SessionHost`.
//!
//! A host is tested over the in-memory fakes of every other port ([`Fixture::over_fakes`]); the
//! cases play the sandbox by reading the token the `InMemorySandboxProvider` was given. The
//! lifecycle disruptions of hosts (store, provider, ledger failures under a live session) belong
//! to the separate lifecycle suite, so [`disruptions`] is empty here.

use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, Faulty};
use crate::harness::{self, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchboard_adapters::local_host::LocalSessionHost;
use switchboard_core::protocol::client::ControlFrame;
use switchboard_core::protocol::{
    ClientMessage, Event, SandboxMessage, ServerFrame, ServerToSandbox, SessionStatus,
    TerminalStatus, Usage,
};
use switchboard_core::session::{SessionConfig, SessionInfo};
use switchboard_core::tenancy::{Principal, SessionKey, TenantContext};
use switchboard_core::{ClientMsgId, ModelRef, OrgId, RunId, Scope, SessionId, UserId};
use switchboard_fakes::audit_log::InMemoryAuditLog;
use switchboard_fakes::event_bus::InMemoryEventBus;
use switchboard_fakes::minter::InMemoryMinter;
use switchboard_fakes::model_gateway::InMemoryModelGateway;
use switchboard_fakes::price_book::InMemoryPriceBook;
use switchboard_fakes::run_ledger::InMemoryRunLedger;
use switchboard_fakes::sandbox_provider::InMemorySandboxProvider;
use switchboard_fakes::secret_vault::InMemorySecretVault;
use switchboard_fakes::session_host::InMemorySessionHost;
use switchboard_fakes::session_store::InMemorySessionStore;
use switchboard_fakes::InMemoryClock;
use switchboard_ports::error::ErrorClass;
use switchboard_ports::runtime::SessionPorts;
use switchboard_ports::session::{
    ClientLink, CreateSession, EventPage, PromptRequest, Queued, SandboxLink,
};
use switchboard_ports::{
    Classify, PortId, SecretString, SecretVault, SessionHost, SessionHostError,
};

/// The model every case's sessions use (its provider has a key in the fixture's vault once
/// [`Fixture::byok`] ran).
pub const MODEL: &str = "openai/gpt-test";

/// What every `SessionHost` case gets: the host, and the fakes it runs over.
pub struct Fixture {
    pub host: Arc<dyn SessionHost>,
    /// The time source of the host and of every fake.
    pub clock: InMemoryClock,
    /// Records every spawn with its spec, so a case can dial back with the token.
    pub sandboxes: Arc<InMemorySandboxProvider>,
    /// Where the model gateway finds BYOK keys.
    pub vault: Arc<dyn SecretVault>,
}

impl Fixture {
    /// Builds the in-memory ports (store, provider, gateway, prices, ledger, bus, audit, clock,
    /// minter), hands them to `host` and keeps what the cases need.
    pub fn over_fakes(host: impl FnOnce(SessionPorts) -> Arc<dyn SessionHost>) -> Fixture {
        let clock = InMemoryClock::new();
        let sandboxes = Arc::new(InMemorySandboxProvider::new());
        let vault: Arc<dyn SecretVault> =
            Arc::new(InMemorySecretVault::new(Arc::new(clock.clone())));
        let ports = SessionPorts {
            store: Arc::new(InMemorySessionStore::new()),
            sandboxes: sandboxes.clone(),
            gateway: Arc::new(InMemoryModelGateway::new(vault.clone())),
            prices: Arc::new(InMemoryPriceBook::new()),
            ledger: Arc::new(InMemoryRunLedger::new()),
            bus: Arc::new(InMemoryEventBus::new()),
            audit: Arc::new(InMemoryAuditLog::new()),
            clock: Arc::new(clock.clone()),
            minter: Arc::new(InMemoryMinter::new()),
            callback_base: "ws://127.0.0.1:8080".into(),
            config: SessionConfig::default(),
        };
        Fixture {
            host: host(ports),
            clock,
            sandboxes,
            vault,
        }
    }

    /// Stores a key for the model's provider, so runs of `tenant` can be dispatched.
    pub async fn byok(&self, tenant: &TenantContext) -> Result<(), String> {
        let provider = ModelRef::parse(MODEL)
            .map_err(|e| e.to_string())?
            .provider()
            .to_string();
        self.vault
            .put(tenant, &provider, &SecretString::new("sk-test-key"))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Dials back into `key` as its latest sandbox would, with the token it was spawned with.
    pub async fn dial_back(&self, key: &SessionKey) -> Result<SandboxLink, String> {
        let token = self.sandbox_token(key).await?;
        self.host
            .attach_sandbox(key, &token)
            .await
            .map_err(|e| format!("dialling back with the spawned token failed: {e}"))
    }

    /// The token of `key`'s latest spawn. A host may spawn in the background: this waits (by
    /// yielding, bounded) until the provider has seen the spawn.
    pub async fn sandbox_token(&self, key: &SessionKey) -> Result<SecretString, String> {
        let wanted = key.to_string();
        for _ in 0..10_000 {
            let spawned = self.sandboxes.spawned();
            if let Some((_, spec)) = spawned
                .iter()
                .rev()
                .find(|(_, spec)| spec.session_key == wanted)
            {
                return Ok(SecretString::new(spec.token.clone()));
            }
            tokio::task::yield_now().await;
        }
        Err(format!("no sandbox was spawned for {wanted}"))
    }
}

/// Every contract case of `SessionHost`, one per `# Contract` bullet.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "create_then_info",
            run: |f| Box::pin(create_then_info(f)),
        },
        Case {
            name: "other_tenant_not_found",
            run: |f| Box::pin(other_tenant_not_found(f)),
        },
        Case {
            name: "prompt_queues_fifo",
            run: |f| Box::pin(prompt_queues_fifo(f)),
        },
        Case {
            name: "duplicate_client_msg_id",
            run: |f| Box::pin(duplicate_client_msg_id(f)),
        },
        Case {
            name: "client_replay_after",
            run: |f| Box::pin(client_replay_after(f)),
        },
        Case {
            name: "sandbox_bad_token_unauthorized",
            run: |f| Box::pin(sandbox_bad_token_unauthorized(f)),
        },
        Case {
            name: "closed_session_refuses_prompts",
            run: |f| Box::pin(closed_session_refuses_prompts(f)),
        },
        Case {
            name: "list_is_tenant_scoped",
            run: |f| Box::pin(list_is_tenant_scoped(f)),
        },
    ]
}

// ----- helpers ---------------------------------------------------------------------------------

static NEXT_ORG: AtomicU64 = AtomicU64::new(1);

/// A member of a fresh org.
fn member() -> Principal {
    let n = NEXT_ORG.fetch_add(1, Ordering::Relaxed);
    let org = OrgId::parse(format!("org-host-{n}")).expect("valid org id");
    let user = UserId::parse(format!("user-host-{n}")).expect("valid user id");
    Principal::from_verified_credential(org, user, None, Scope::MEMBER.to_vec())
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).expect("valid session id")
}

fn run(s: &str) -> RunId {
    RunId::parse(s).expect("valid run id")
}

fn create_request(session: &str) -> CreateSession {
    CreateSession {
        session_id: sid(session),
        model: ModelRef::parse(MODEL).expect("valid model"),
        agent: "opencode".into(),
        repo: None,
        permissions: None,
    }
}

fn prompt_request(run_id: &str, text: &str, client_msg_id: Option<&str>) -> PromptRequest {
    PromptRequest {
        run_id: run(run_id),
        text: text.into(),
        client_msg_id: client_msg_id
            .map(|id| ClientMsgId::parse(id).expect("valid client message id")),
    }
}

/// The next frame for a sandbox that is a `run`, skipping ACKs and the like.
async fn next_run(link: &mut SandboxLink) -> Result<RunId, String> {
    while let Some(frame) = link.frames.next().await {
        if let ServerToSandbox::Run { run_id, .. } = frame {
            return Ok(run_id);
        }
    }
    Err("the sandbox stream ended before a run was sent".into())
}

async fn next_frame(link: &mut ClientLink) -> Result<ServerFrame, String> {
    link.frames
        .next()
        .await
        .ok_or_else(|| "the client stream ended early".to_string())
}

fn run_queued_count(page: &EventPage) -> usize {
    page.events
        .iter()
        .filter(|e| matches!(e.event, Event::RunQueued { .. }))
        .count()
}

// ----- cases -----------------------------------------------------------------------------------

async fn create_then_info(f: Fixture) -> CaseResult {
    let p = member();
    let created = ok!(f.host.create(&p, create_request("s-create")).await);
    ensure_eq!(created.status, SessionStatus::Provisioning);
    ensure_eq!(created.model.to_string(), MODEL);
    ensure_eq!(created.id, sid("s-create"));
    let info = ok!(f.host.info(&p.tenant(), &sid("s-create")).await);
    ensure_eq!(info.status, SessionStatus::Provisioning);
    ensure_eq!(info.model.to_string(), MODEL);
    expect_class!(
        f.host.create(&p, create_request("s-create")).await,
        ErrorClass::Conflict
    );
    expect_class!(
        f.host.info(&p.tenant(), &sid("s-never-created")).await,
        ErrorClass::NotFound
    );
    Ok(())
}

async fn other_tenant_not_found(f: Fixture) -> CaseResult {
    let (owner, other) = (member(), member());
    ok!(f.host.create(&owner, create_request("s-private")).await);
    let token = f
        .sandbox_token(&owner.tenant().session(sid("s-private")))
        .await?;
    let (tenant, s) = (other.tenant(), sid("s-private"));

    expect_class!(f.host.info(&tenant, &s).await, ErrorClass::NotFound);
    expect_class!(
        f.host
            .prompt(&other, &s, prompt_request("r-intruder", "hi", None))
            .await,
        ErrorClass::NotFound
    );
    expect_class!(f.host.cancel(&tenant, &s, None).await, ErrorClass::NotFound);
    expect_class!(f.host.close(&tenant, &s).await, ErrorClass::NotFound);
    expect_class!(
        f.host.events(&tenant, &s, 0, 100).await,
        ErrorClass::NotFound
    );
    match f.host.attach_client(&other, &s, None).await {
        Err(e) => ensure_eq!(
            e.class(),
            ErrorClass::NotFound,
            "attach_client to another org's session"
        ),
        Ok(_) => return Err("attach_client to another org's session succeeded".into()),
    }
    // Even the right token does not open the session under another org's route.
    match f
        .host
        .attach_sandbox(&tenant.session(s.clone()), &token)
        .await
    {
        Err(e) => ensure_eq!(
            e.class(),
            ErrorClass::NotFound,
            "attach_sandbox under another org's route"
        ),
        Ok(_) => return Err("attach_sandbox under another org's route succeeded".into()),
    }
    ensure!(
        ok!(f.host.list(&tenant).await).is_empty(),
        "the other org lists the session"
    );

    let info = ok!(f.host.info(&owner.tenant(), &s).await);
    ensure_eq!(
        info.status,
        SessionStatus::Provisioning,
        "the owner's session was touched"
    );
    ensure_eq!(info.queue_length, 0, "the owner's session was touched");
    Ok(())
}

async fn prompt_queues_fifo(f: Fixture) -> CaseResult {
    let p = member();
    let s = sid("s-fifo");
    ok!(f.byok(&p.tenant()).await);
    ok!(f.host.create(&p, create_request("s-fifo")).await);
    for (i, run_id) in ["r-1", "r-2", "r-3"].into_iter().enumerate() {
        let queued = ok!(f
            .host
            .prompt(&p, &s, prompt_request(run_id, &format!("prompt {i}"), None))
            .await);
        ensure_eq!(
            queued,
            Queued {
                run_id: run(run_id),
                position: i as u32
            }
        );
    }
    let mut sandbox = ok!(f.dial_back(&p.tenant().session(s.clone())).await);
    for (n, expected) in (1u64..).zip(["r-1", "r-2", "r-3"]) {
        let sent = next_run(&mut sandbox).await?;
        ensure_eq!(
            sent,
            run(expected),
            "runs must reach the sandbox in prompt order"
        );
        let finished = SandboxMessage::RunFinished {
            run_id: sent,
            n,
            status: TerminalStatus::Completed,
            stop_reason: None,
            usage: Usage::default(),
            error: None,
        };
        ok!(sandbox.handle.send(finished).await);
    }
    let page = ok!(f.host.events(&p.tenant(), &s, 0, 1000).await);
    let completed = page
        .events
        .iter()
        .filter(|e| matches!(e.event, Event::ExecutionComplete { .. }))
        .map(|e| e.run_id.clone());
    ensure_eq!(
        completed.collect::<Vec<_>>(),
        vec![Some(run("r-1")), Some(run("r-2")), Some(run("r-3"))]
    );
    Ok(())
}

async fn duplicate_client_msg_id(f: Fixture) -> CaseResult {
    let p = member();
    let s = sid("s-dup");
    ok!(f.host.create(&p, create_request("s-dup")).await);
    let first = ok!(f
        .host
        .prompt(&p, &s, prompt_request("r-first", "do it", Some("msg-1")))
        .await);
    ensure_eq!(
        first,
        Queued {
            run_id: run("r-first"),
            position: 0
        }
    );
    let again = ok!(f
        .host
        .prompt(&p, &s, prompt_request("r-again", "do it", Some("msg-1")))
        .await);
    ensure_eq!(
        again.run_id,
        run("r-first"),
        "a re-sent client_msg_id must answer the original run"
    );
    let info = ok!(f.host.info(&p.tenant(), &s).await);
    ensure_eq!(info.queue_length, 1, "the prompt must be queued once");
    let page = ok!(f.host.events(&p.tenant(), &s, 0, 1000).await);
    ensure_eq!(run_queued_count(&page), 1, "one run.queued event");
    Ok(())
}

async fn client_replay_after(f: Fixture) -> CaseResult {
    let p = member();
    let s = sid("s-replay");
    ok!(f.host.create(&p, create_request("s-replay")).await);
    ok!(f
        .host
        .prompt(&p, &s, prompt_request("r-a", "first", None))
        .await);
    ok!(f
        .host
        .prompt(&p, &s, prompt_request("r-b", "second", None))
        .await);
    let SessionInfo { last_seq, .. } = ok!(f.host.info(&p.tenant(), &s).await);
    ensure!(
        last_seq >= 3,
        "expected at least three events before attaching, got last_seq {last_seq}"
    );

    let mut link = ok!(f.host.attach_client(&p, &s, Some(1)).await);
    match next_frame(&mut link).await? {
        ServerFrame::Control(ControlFrame::Hello {
            session_id,
            last_seq: said,
            ..
        }) => {
            ensure_eq!(session_id, s.clone());
            ensure_eq!(said, last_seq, "hello names the last seq");
        }
        other => return Err(format!("the first frame must be hello, got {other:?}")),
    }
    for seq in 2..=last_seq {
        match next_frame(&mut link).await? {
            ServerFrame::Event(e) => {
                ensure_eq!(e.seq, seq, "replay must be every event after 1, in order")
            }
            other => return Err(format!("expected event {seq}, got {other:?}")),
        }
    }
    // A live event follows the replay exactly once, then a pong marks the end of what was sent.
    ok!(f
        .host
        .prompt(&p, &s, prompt_request("r-c", "third", None))
        .await);
    ok!(link.handle.send(ClientMessage::Ping {}).await);
    match next_frame(&mut link).await? {
        ServerFrame::Event(e) => ensure_eq!(e.seq, last_seq + 1, "the live event"),
        other => {
            return Err(format!(
                "expected the live event {}, got {other:?}",
                last_seq + 1
            ))
        }
    }
    match next_frame(&mut link).await? {
        ServerFrame::Control(ControlFrame::Pong) => {}
        other => {
            return Err(format!(
                "expected pong and nothing before it, got {other:?}"
            ))
        }
    }
    ensure!(
        link.frames.try_recv().is_err(),
        "nothing may follow the pong"
    );
    link.handle.detach().await;
    Ok(())
}

async fn sandbox_bad_token_unauthorized(f: Fixture) -> CaseResult {
    let p = member();
    let s = sid("s-token");
    let key = p.tenant().session(s.clone());
    ok!(f.host.create(&p, create_request("s-token")).await);
    let good = f.sandbox_token(&key).await?;
    let info_before = ok!(f.host.info(&p.tenant(), &s).await);
    let events_before = ok!(f.host.events(&p.tenant(), &s, 0, 1000).await);

    for wrong in [
        format!("{}x", good.expose()),
        "sbx_wrong".to_string(),
        String::new(),
    ] {
        match f.host.attach_sandbox(&key, &SecretString::new(wrong)).await {
            Err(e) => ensure_eq!(e.class(), ErrorClass::Unauthorized, "a wrong sandbox token"),
            Ok(_) => return Err("a wrong sandbox token was accepted".into()),
        }
    }
    ensure_eq!(
        ok!(f.host.info(&p.tenant(), &s).await),
        info_before,
        "a refused token changed the session"
    );
    ensure_eq!(
        ok!(f.host.events(&p.tenant(), &s, 0, 1000).await),
        events_before,
        "a refused token added events"
    );
    ok!(f.host.attach_sandbox(&key, &good).await.map(|_| ()));
    Ok(())
}

async fn closed_session_refuses_prompts(f: Fixture) -> CaseResult {
    let p = member();
    let s = sid("s-closed");
    ok!(f.host.create(&p, create_request("s-closed")).await);
    ok!(f.host.close(&p.tenant(), &s).await);
    expect_class!(
        f.host
            .prompt(&p, &s, prompt_request("r-late", "too late", None))
            .await,
        ErrorClass::Conflict
    );
    let info = ok!(f.host.info(&p.tenant(), &s).await);
    ensure_eq!(info.status, SessionStatus::Closed);
    let page = ok!(f.host.events(&p.tenant(), &s, 0, 1000).await);
    ensure_eq!(
        run_queued_count(&page),
        0,
        "no run may be queued after close"
    );
    Ok(())
}

async fn list_is_tenant_scoped(f: Fixture) -> CaseResult {
    let (a, b) = (member(), member());
    ok!(f.host.create(&a, create_request("s-one")).await);
    ok!(f.host.create(&a, create_request("s-two")).await);
    ok!(f.host.create(&b, create_request("s-three")).await);
    // The same session id in another org is another session.
    ok!(f.host.create(&b, create_request("s-one")).await);
    let ids = |infos: Vec<SessionInfo>| {
        infos
            .into_iter()
            .map(|i| i.id.to_string())
            .collect::<BTreeSet<_>>()
    };
    ensure_eq!(
        ids(ok!(f.host.list(&a.tenant()).await)),
        BTreeSet::from(["s-one".to_string(), "s-two".to_string()])
    );
    ensure_eq!(
        ids(ok!(f.host.list(&b.tenant()).await)),
        BTreeSet::from(["s-one".to_string(), "s-three".to_string()])
    );
    ensure!(
        ok!(f.host.list(&member().tenant()).await).is_empty(),
        "a new org lists sessions"
    );
    Ok(())
}

// ----- implementations, catalog, faults --------------------------------------------------------

/// The fake and every real `SessionHost`, each over the in-memory fakes of the other ports.
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(Fixture::over_fakes(|ports| {
                Arc::new(InMemorySessionHost::new(ports))
            }))
        }),
        Implementation::new("tokio_local", ImplKind::Adapter, || async {
            Ok(Fixture::over_fakes(|ports| {
                Arc::new(LocalSessionHost::new(ports))
            }))
        }),
    ]
}

/// The fault catalog of `SessionHost`.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "create",
        outcome: "the caller gets 503 and no session exists; creating again with the same id succeeds",
    },
    CatalogEntry {
        fault: Fault::LostAnswer,
        op: "create",
        outcome: "the session exists once; creating again with the same id is Conflict and info shows it",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "prompt",
        outcome: "nothing is queued; a retry with the same client_msg_id queues the prompt once",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "prompt",
        outcome: "the caller cannot tell whether the prompt was queued; a retry with the same client_msg_id answers the one run",
    },
    CatalogEntry {
        fault: Fault::LostAnswer,
        op: "prompt",
        outcome: "the prompt is queued once; a retry with the same client_msg_id answers the original run id",
    },
    CatalogEntry {
        fault: Fault::RateLimited,
        op: "prompt",
        outcome: "nothing is queued and the caller gets 429; a later retry queues the prompt once",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "attach_client",
        outcome: "no connection is made; the client reconnects with its last seq as `after` and misses nothing",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "attach_sandbox",
        outcome: "the dial-back fails and changes nothing; the sandbox retries with the same token within the reconnect grace",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "events",
        outcome: "no page is returned; the caller retries with the same `after` and gets every event once",
    },
    CatalogEntry {
        fault: Fault::Slow,
        op: "info",
        outcome: "a slow answer is still the session's current info",
    },
];

#[async_trait]
impl SessionHost for Faulty<dyn SessionHost> {
    async fn create(
        &self,
        principal: &Principal,
        request: CreateSession,
    ) -> Result<SessionInfo, SessionHostError> {
        self.call("create", || self.inner.create(principal, request))
            .await
    }
    async fn info(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
    ) -> Result<SessionInfo, SessionHostError> {
        self.call("info", || self.inner.info(tenant, session)).await
    }
    async fn list(&self, tenant: &TenantContext) -> Result<Vec<SessionInfo>, SessionHostError> {
        self.call("list", || self.inner.list(tenant)).await
    }
    async fn prompt(
        &self,
        principal: &Principal,
        session: &SessionId,
        request: PromptRequest,
    ) -> Result<Queued, SessionHostError> {
        self.call("prompt", || self.inner.prompt(principal, session, request))
            .await
    }
    async fn cancel(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
        run: Option<RunId>,
    ) -> Result<(), SessionHostError> {
        self.call("cancel", || self.inner.cancel(tenant, session, run))
            .await
    }
    async fn close(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
    ) -> Result<(), SessionHostError> {
        self.call("close", || self.inner.close(tenant, session))
            .await
    }
    async fn events(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, SessionHostError> {
        self.call("events", || {
            self.inner.events(tenant, session, after, limit)
        })
        .await
    }
    async fn attach_client(
        &self,
        principal: &Principal,
        session: &SessionId,
        after: Option<u64>,
    ) -> Result<ClientLink, SessionHostError> {
        self.call("attach_client", || {
            self.inner.attach_client(principal, session, after)
        })
        .await
    }
    async fn attach_sandbox(
        &self,
        key: &SessionKey,
        token: &SecretString,
    ) -> Result<SandboxLink, SessionHostError> {
        self.call("attach_sandbox", || self.inner.attach_sandbox(key, token))
            .await
    }
}

/// The suite of `SessionHost`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::SessionHost, cases(), implementations(), CATALOG)
}

/// The host disruptions live in the lifecycle suite (they need every port under a live session).
pub fn disruptions() -> Vec<DisruptionCase> {
    Vec::new()
}

/// Runs every `SessionHost` case against an adapter author's host. Build the fixture with
/// [`Fixture::over_fakes`].
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    harness::check(PortId::SessionHost, name, make, &cases())
}
