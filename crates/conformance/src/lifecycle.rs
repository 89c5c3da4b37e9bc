//! The lifecycle half of the disruption suite: every catalogued fault of the ports a session runs
//! on (store, clock, sandbox provider, model gateway, price book, run ledger, event bus, audit log,
//! and the host itself) injected through that port's `Faulty` wrapper into a whole session
//! lifecycle under the deterministic `InMemorySessionHost`, asserting the catalog's outcome.
//!
//! Every case checks, as it applies: the caller sees success or an error of the fault's class,
//! never a success with bad data; nothing is half-applied (the stored log has no gap, every event a
//! client got is the stored one, no run is recorded twice, no sandbox is left running); and once
//! the plan heals (and time has passed the backoffs) the session recovers, or stays closed, as the
//! catalog says. Time moves only through [`Lifecycle::advance`], which sleeps through the `Clock`
//! port as a host's timer would and then fires what is due.

use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, FaultPlan, Faulty};
use crate::harness::{block_on, BoxFut, CaseResult, Outcome, CASE_TIMEOUT};
use crate::ports::{
    audit_log, clock, event_bus, model_gateway, price_book, run_ledger, sandbox_provider,
    session_host, session_store,
};
use crate::{ensure, ensure_eq, expect_class, ok};
use futures::{FutureExt, StreamExt};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::audit::{AuditAction, AuditOutcome};
use switchboard_core::protocol::client::ControlFrame;
use switchboard_core::protocol::{
    ErrorBody, Event, EventEnvelope, GatewayConfig, SandboxMessage, SandboxStatus, ServerFrame,
    ServerToSandbox, SessionStatus, SpawnSpec, TerminalStatus, ToolStatus, Usage,
};
use switchboard_core::run::{Price, RunRecord};
use switchboard_core::session::{OrgEvent, SessionConfig, SessionInfo};
use switchboard_core::tenancy::{Principal, SessionKey, TenantContext};
use switchboard_core::{
    CallId, ClientMsgId, ModelRef, OrgId, RunId, SandboxId, Scope, SessionId, UserId,
};
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
use switchboard_ports::record::RunQuery;
use switchboard_ports::runtime::{SessionPorts, PERSIST_ATTEMPTS, TERMINATE_ATTEMPTS};
use switchboard_ports::session::{ClientLink, CreateSession, PromptRequest, Queued, SandboxLink};
use switchboard_ports::{
    AuditLog, Clock, EventBus, ModelGateway, PortId, PriceBook, RunLedger, SandboxProvider,
    SecretString, SecretVault, SessionHost, SessionHostError, SessionStore,
};

// ----- the table: which flow proves which catalog entry ----------------------------------------

/// The ports whose catalogs the lifecycle suite covers.
const CATALOGS: [(PortId, &[CatalogEntry]); 9] = [
    (PortId::SessionStore, session_store::CATALOG),
    (PortId::Clock, clock::CATALOG),
    (PortId::SandboxProvider, sandbox_provider::CATALOG),
    (PortId::ModelGateway, model_gateway::CATALOG),
    (PortId::PriceBook, price_book::CATALOG),
    (PortId::RunLedger, run_ledger::CATALOG),
    (PortId::EventBus, event_bus::CATALOG),
    (PortId::AuditLog, audit_log::CATALOG),
    (PortId::SessionHost, session_host::CATALOG),
];

/// One flow: runs the lifecycle with the entry's fault injected and checks its outcome.
type Flow = fn(CatalogEntry) -> BoxFut<'static, CaseResult>;

/// `fn(CatalogEntry) -> BoxFut` of an async flow.
macro_rules! flow {
    ($name:ident) => {
        |entry| Box::pin($name(entry))
    };
}

/// The flow that proves `entry` of `port`'s catalog: the catalog, row by row. An entry with no row
/// gets no case, which the tripwire reports.
#[rustfmt::skip]
fn flow(port: PortId, entry: &CatalogEntry) -> Option<Flow> {
    use Fault::*;
    use PortId as P;
    let flow: Flow = match (port, entry.op, entry.fault) {
        (P::SessionStore, "commit", Unavailable) => flow!(store_outage_evicts_the_session),
        (P::SessionStore, "commit", Timeout) => flow!(timed_out_commit_is_retried_then_evicts),
        (P::SessionStore, "commit", LostAnswer) => flow!(lost_commit_answer_lands_once),
        (P::SessionStore, "commit", Slow) => flow!(slow_commit_delivers_in_seq_order),
        (P::SessionStore, "load", Unavailable | Timeout | Corrupt) => flow!(failed_activation_overwrites_nothing),
        (P::SessionStore, "events", Unavailable) => flow!(failed_replay_resumes_from_the_same_seq),

        (P::Clock, "sleep_until", Slow) => flow!(late_timers_still_fire_in_deadline_order),

        (P::SandboxProvider, "spawn", Unavailable | Timeout | RateLimited) => flow!(failed_spawns_fail_the_waiting_run),
        (P::SandboxProvider, "spawn", LostAnswer) => flow!(orphaned_sandbox_cannot_dial_back),
        (P::SandboxProvider, "spawn", Slow) => flow!(slow_spawn_connects_and_runs_in_order),
        (P::SandboxProvider, "terminate", Unavailable) => flow!(session_closes_when_terminate_fails),

        (P::ModelGateway, "resolve", Unavailable | Timeout | RateLimited | Corrupt) => flow!(failed_dispatch_sends_nothing),
        (P::ModelGateway, "resolve", Slow) => flow!(slow_dispatch_starts_the_run),

        (P::PriceBook, "price", Unavailable | Timeout | Corrupt) => flow!(failed_dispatch_sends_nothing),
        (P::PriceBook, "price", Slow) => flow!(slow_dispatch_starts_the_run),

        (P::RunLedger, "record", Unavailable | Timeout) => flow!(outbox_retries_until_recorded_once),
        (P::RunLedger, "record", LostAnswer) => flow!(lost_record_answer_is_recorded_once),
        (P::RunLedger, "record", Slow) => flow!(slow_record_does_not_hold_the_stream),
        (P::RunLedger, "get", Unavailable | Corrupt) => flow!(run_history_read_fails_then_reads),
        (P::RunLedger, "list", Unavailable | Timeout) => flow!(run_history_read_fails_then_reads),

        (P::EventBus, "publish", Unavailable | Timeout) => flow!(dashboard_misses_only_the_status_change),
        (P::EventBus, "publish", Slow) => flow!(slow_publish_still_reaches_the_dashboard),
        (P::EventBus, "subscribe", Unavailable) => flow!(failed_subscribe_opens_no_stream),

        (P::AuditLog, "append", Unavailable | Timeout) => flow!(lost_audit_entry_keeps_the_denial),
        (P::AuditLog, "list", Unavailable | Corrupt) => flow!(audit_listing_fails_then_lists),

        (P::SessionHost, "create", Unavailable) => flow!(refused_create_leaves_no_session),
        (P::SessionHost, "create", LostAnswer) => flow!(lost_create_answer_session_exists_once),
        (P::SessionHost, "prompt", Unavailable | Timeout | RateLimited) => flow!(refused_prompt_retried_queues_once),
        (P::SessionHost, "prompt", LostAnswer) => flow!(lost_prompt_answer_queues_once),
        (P::SessionHost, "attach_client", Unavailable) => flow!(client_reconnects_and_misses_nothing),
        (P::SessionHost, "attach_sandbox", Unavailable) => flow!(sandbox_redials_within_the_grace),
        (P::SessionHost, "events", Timeout) => flow!(events_page_retried_gets_every_event_once),
        (P::SessionHost, "info", Slow) => flow!(info_is_current),
        _ => return None,
    };
    Some(flow)
}

/// One disruption case per catalog entry of the nine lifecycle ports that has a flow.
pub fn cases() -> Vec<DisruptionCase> {
    CATALOGS
        .iter()
        .flat_map(|(port, catalog)| catalog.iter().map(move |entry| (*port, *entry)))
        .filter_map(|(port, entry)| {
            let flow = flow(port, &entry)?;
            Some(DisruptionCase {
                port,
                entry: entry.name(),
                run: Box::new(move || run(flow, entry)),
            })
        })
        .collect()
}

fn run(flow: Flow, entry: CatalogEntry) -> Outcome {
    block_on(async move {
        match tokio::time::timeout(CASE_TIMEOUT, flow(entry)).await {
            Ok(Ok(())) => Outcome::Passed,
            Ok(Err(message)) => Outcome::Failed(format!(
                "{message}\n  (documented outcome: {})",
                entry.outcome
            )),
            Err(_) => Outcome::Failed(format!("the flow did not finish within {CASE_TIMEOUT:?}")),
        }
    })
}

// ----- the driver ------------------------------------------------------------------------------

/// The model every lifecycle session runs; its provider has a key in the vault.
pub const MODEL: &str = "openai/gpt-lifecycle";
/// The BYOK key of the model's provider: what a `run` frame must carry.
pub const PROVIDER_KEY: &str = "sk-lifecycle-provider-key";
/// The listed price of [`MODEL`].
pub const PRICE: Price = Price {
    input_per_mtok_micros: 3_000_000,
    output_per_mtok_micros: 15_000_000,
};
/// What the played agent reports for every run.
pub const USAGE: Usage = Usage {
    input_tokens: 1_200,
    output_tokens: 300,
};

static NEXT_ORG: AtomicU64 = AtomicU64::new(1);

/// A `run` frame the sandbox received.
#[derive(Debug, Clone, PartialEq)]
pub struct SentRun {
    pub run_id: RunId,
    pub text: String,
    pub gateway: GatewayConfig,
}

/// The sandbox as the test plays it.
struct PlayedSandbox {
    link: SandboxLink,
    spec: SpawnSpec,
    /// The last `n` the sandbox numbered a message with.
    n: u64,
    /// Every frame the session sent it, in order.
    frames: Vec<ServerToSandbox>,
    /// `run` frames not played yet.
    pending: VecDeque<SentRun>,
    /// Every numbered message it sent, to re-send what was not ACKed after a re-dial.
    sent: Vec<SandboxMessage>,
    /// The session closed the socket.
    closed: bool,
}

/// One client connection and what it received.
struct Client {
    link: ClientLink,
    /// The `after` it attached with.
    after: u64,
    events: Vec<EventEnvelope>,
    controls: Vec<ControlFrame>,
    /// The session ended the stream.
    closed: bool,
}

/// One session over the in-memory fakes, with at most one port behind a `Faulty` wrapper, played
/// from the outside: an HTTP caller, a WebSocket client and the sandbox.
pub struct Lifecycle {
    /// What the flow calls (the `Faulty` host in the `session_host` cases).
    pub host: Arc<dyn SessionHost>,
    /// The host itself, to fire deadlines.
    pub runtime_host: InMemorySessionHost,
    /// The ports as the session sees them (one of them may be `Faulty`).
    pub ports: SessionPorts,
    /// The plan of the faulty port; off until a flow injects.
    pub plan: FaultPlan,
    pub clock: InMemoryClock,
    pub store: Arc<InMemorySessionStore>,
    pub sandboxes: Arc<InMemorySandboxProvider>,
    pub ledger: Arc<InMemoryRunLedger>,
    pub bus: Arc<InMemoryEventBus>,
    pub audit: Arc<InMemoryAuditLog>,
    pub principal: Principal,
    pub session: SessionId,
    sandbox: Option<PlayedSandbox>,
    client: Option<Client>,
    /// Clients that went away, kept so their streams are checked too.
    past_clients: Vec<Client>,
    runs_minted: u64,
}

/// `Arc<dyn Port>` of `inner`, behind a `Faulty` wrapper on `plan` when `port` is the one under test.
macro_rules! maybe_faulty {
    ($under_test:expr, $port:expr, $inner:expr, $plan:expr, $trait:path) => {{
        let inner: Arc<dyn $trait> = $inner;
        if $under_test == $port {
            Arc::new(Faulty::new(inner, $plan.clone())) as Arc<dyn $trait>
        } else {
            inner
        }
    }};
}

impl Lifecycle {
    /// A fresh org and session id over fresh fakes, with `faulty`'s port behind a `Faulty` wrapper
    /// whose plan injects nothing yet.
    pub async fn new(faulty: PortId) -> Result<Lifecycle, String> {
        let n = NEXT_ORG.fetch_add(1, Ordering::Relaxed);
        let org = OrgId::parse(format!("org-life-{n}")).map_err(|e| e.to_string())?;
        let user = UserId::parse(format!("user-life-{n}")).map_err(|e| e.to_string())?;
        let principal =
            Principal::from_verified_credential(org, user, None, Scope::MEMBER.to_vec());
        let session = SessionId::parse(format!("s-life-{n}")).map_err(|e| e.to_string())?;

        let plan = FaultPlan::off();
        let clock = InMemoryClock::new();
        let store = Arc::new(InMemorySessionStore::new());
        let sandboxes = Arc::new(InMemorySandboxProvider::new());
        let ledger = Arc::new(InMemoryRunLedger::new());
        let bus = Arc::new(InMemoryEventBus::new());
        let audit = Arc::new(InMemoryAuditLog::new());
        let vault = Arc::new(InMemorySecretVault::new(Arc::new(clock.clone())));
        let provider = model()?.provider().to_string();
        vault
            .put(
                &principal.tenant(),
                &provider,
                &SecretString::new(PROVIDER_KEY),
            )
            .await
            .map_err(|e| format!("storing the BYOK key: {e}"))?;
        let prices = InMemoryPriceBook::new().with_price(model()?, PRICE);

        let ports = SessionPorts {
            store: maybe_faulty!(
                faulty,
                PortId::SessionStore,
                store.clone(),
                plan,
                SessionStore
            ),
            sandboxes: maybe_faulty!(
                faulty,
                PortId::SandboxProvider,
                sandboxes.clone(),
                plan,
                SandboxProvider
            ),
            gateway: maybe_faulty!(
                faulty,
                PortId::ModelGateway,
                Arc::new(InMemoryModelGateway::new(vault)),
                plan,
                ModelGateway
            ),
            prices: maybe_faulty!(faulty, PortId::PriceBook, Arc::new(prices), plan, PriceBook),
            ledger: maybe_faulty!(faulty, PortId::RunLedger, ledger.clone(), plan, RunLedger),
            bus: maybe_faulty!(faulty, PortId::EventBus, bus.clone(), plan, EventBus),
            audit: maybe_faulty!(faulty, PortId::AuditLog, audit.clone(), plan, AuditLog),
            clock: maybe_faulty!(faulty, PortId::Clock, Arc::new(clock.clone()), plan, Clock),
            minter: Arc::new(InMemoryMinter::new()),
            callback_base: "ws://127.0.0.1:8080".into(),
            config: SessionConfig::default(),
        };
        let runtime_host = InMemorySessionHost::new(ports.clone());
        let host = maybe_faulty!(
            faulty,
            PortId::SessionHost,
            Arc::new(runtime_host.clone()),
            plan,
            SessionHost
        );
        Ok(Lifecycle {
            host,
            runtime_host,
            ports,
            plan,
            clock,
            store,
            sandboxes,
            ledger,
            bus,
            audit,
            principal,
            session,
            sandbox: None,
            client: None,
            past_clients: Vec::new(),
            runs_minted: 0,
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.ports.config
    }

    pub fn tenant(&self) -> TenantContext {
        self.principal.tenant()
    }

    pub fn key(&self) -> SessionKey {
        self.tenant().session(self.session.clone())
    }

    // ----- faults --------------------------------------------------------------------------

    /// From now on every call of `op` on the faulty port gets `fault`.
    pub fn inject(&self, op: &str, fault: Fault) {
        self.plan.set(FaultPlan::always(op, fault));
    }

    /// The next `times` calls of `op` get `fault`, then the port heals.
    pub fn inject_times(&self, op: &str, fault: Fault, times: u32) {
        self.plan.set(FaultPlan::times(op, fault, times));
    }

    pub fn heal(&self) {
        self.plan.heal();
    }

    /// How many faults were injected into `op` so far.
    pub fn injected(&self, op: &str) -> usize {
        self.plan.injected().iter().filter(|(o, _)| o == op).count()
    }

    // ----- the HTTP caller -----------------------------------------------------------------

    /// `POST /v1/sessions`.
    pub async fn start(&self) -> Result<SessionInfo, SessionHostError> {
        let request = CreateSession {
            session_id: self.session.clone(),
            model: model().map_err(SessionHostError::Invalid)?,
            agent: "opencode".into(),
            repo: None,
            permissions: None,
        };
        self.host.create(&self.principal, request).await
    }

    /// A prompt with a fresh run id and no `client_msg_id`.
    pub async fn prompt(&mut self, text: &str) -> Result<Queued, SessionHostError> {
        let run_id = self.mint_run_id();
        self.prompt_as(run_id, text, None).await
    }

    pub fn mint_run_id(&mut self) -> RunId {
        self.runs_minted += 1;
        RunId::parse(format!("r-{}", self.runs_minted)).expect("r-N is a valid run id")
    }

    pub async fn prompt_as(
        &self,
        run_id: RunId,
        text: &str,
        client_msg_id: Option<&str>,
    ) -> Result<Queued, SessionHostError> {
        let client_msg_id =
            client_msg_id.map(|id| ClientMsgId::parse(id).expect("a valid client message id"));
        self.host
            .prompt(
                &self.principal,
                &self.session,
                PromptRequest {
                    run_id,
                    text: text.into(),
                    client_msg_id,
                },
            )
            .await
    }

    pub async fn info(&self) -> Result<SessionInfo, SessionHostError> {
        self.host.info(&self.tenant(), &self.session).await
    }

    pub async fn close(&self) -> Result<(), SessionHostError> {
        self.host.close(&self.tenant(), &self.session).await
    }

    // ----- time ----------------------------------------------------------------------------

    /// Moves time by `d` the way a host's timer does (sleeping through the `Clock` port, which
    /// may be faulty), then fires every deadline that has come. Fails if the timer woke early.
    pub async fn advance(&self, d: Duration) -> Result<(), String> {
        let target = self.clock.now().add(d);
        let timer = async {
            self.ports.clock.sleep_until(target).await;
            self.clock.now()
        };
        let mover = async {
            tokio::task::yield_now().await;
            self.clock.advance_to(target);
        };
        let (woke_at, ()) = futures::join!(timer, mover);
        ensure!(
            woke_at >= target,
            "a timer set for {target} woke early, at {woke_at}"
        );
        self.runtime_host.fire_due().await;
        Ok(())
    }

    /// Advances in `step`s until the session's runtime is dropped (it hibernated).
    pub async fn until_hibernated(&mut self, step: Duration) -> Result<(), String> {
        self.detach_client().await;
        for _ in 0..200 {
            if !self.runtime_host.is_live(&self.key()) {
                return Ok(());
            }
            self.advance(step).await?;
        }
        Err("the session never hibernated".into())
    }

    // ----- the sandbox ---------------------------------------------------------------------

    /// Every sandbox spawned so far, in order.
    pub fn spawned(&self) -> Vec<(SandboxId, SpawnSpec)> {
        self.sandboxes.spawned()
    }

    /// Dials back as the latest spawned sandbox would, and says hello.
    pub async fn dial_back(&mut self) -> Result<(), String> {
        let (id, spec) = self.spawned().pop().ok_or("no sandbox was spawned")?;
        self.dial_as(&id, &spec).await
    }

    /// Dials back with `spec`'s token and says hello as sandbox `id`.
    pub async fn dial_as(&mut self, id: &SandboxId, spec: &SpawnSpec) -> Result<(), String> {
        let link = self
            .attach_sandbox(spec)
            .await
            .map_err(|e| format!("dialling back as {id} failed: {e}"))?;
        self.sandbox = Some(PlayedSandbox {
            link,
            spec: spec.clone(),
            n: 0,
            frames: Vec::new(),
            pending: VecDeque::new(),
            sent: Vec::new(),
            closed: false,
        });
        let hello = SandboxMessage::Hello {
            sandbox_id: id.clone(),
            agent: "opencode".into(),
            agent_version: "lifecycle".into(),
        };
        self.sandbox_says(hello).await
    }

    /// `attach_sandbox` on the route named by `spec` with its token, as the bridge does.
    pub async fn attach_sandbox(&self, spec: &SpawnSpec) -> Result<SandboxLink, SessionHostError> {
        self.attach_sandbox_with(spec, &SecretString::new(spec.token.clone()))
            .await
    }

    /// `attach_sandbox` on the route named by `spec`, presenting `token`.
    pub async fn attach_sandbox_with(
        &self,
        spec: &SpawnSpec,
        token: &SecretString,
    ) -> Result<SandboxLink, SessionHostError> {
        let key = dial_back_key(spec).map_err(SessionHostError::Invalid)?;
        self.host.attach_sandbox(&key, token).await
    }

    /// The sandbox socket drops; the played sandbox keeps its token and numbering for a re-dial.
    pub async fn drop_sandbox_socket(&mut self) -> Result<(), String> {
        let sandbox = self.sandbox.as_mut().ok_or("no sandbox is connected")?;
        sandbox.link.handle.detach().await;
        Ok(())
    }

    /// The played sandbox dials back again with its token, keeping its message numbering.
    pub async fn redial(&mut self) -> Result<(), SessionHostError> {
        let spec = self
            .sandbox
            .as_ref()
            .map(|s| s.spec.clone())
            .ok_or_else(|| SessionHostError::Invalid("no sandbox to re-dial".into()))?;
        let link = self.attach_sandbox(&spec).await?;
        let sandbox = self.sandbox.as_mut().expect("checked above");
        sandbox.link = link;
        sandbox.closed = false;
        Ok(())
    }

    /// Every frame the session sent the played sandbox so far.
    pub fn sandbox_frames(&mut self) -> Vec<ServerToSandbox> {
        let Some(sandbox) = self.sandbox.as_mut() else {
            return Vec::new();
        };
        loop {
            match sandbox.link.frames.try_recv() {
                Ok(frame) => {
                    if let ServerToSandbox::Run {
                        run_id,
                        text,
                        gateway,
                        ..
                    } = &frame
                    {
                        sandbox.pending.push_back(SentRun {
                            run_id: run_id.clone(),
                            text: text.clone(),
                            gateway: gateway.clone(),
                        });
                    }
                    sandbox.frames.push(frame);
                }
                Err(e) => {
                    sandbox.closed |= e.is_closed();
                    break;
                }
            }
        }
        sandbox.frames.clone()
    }

    /// Every `run` frame the played sandbox received so far.
    pub fn runs_sent(&mut self) -> Vec<RunId> {
        self.sandbox_frames()
            .into_iter()
            .filter_map(|f| match f {
                ServerToSandbox::Run { run_id, .. } => Some(run_id),
                _ => None,
            })
            .collect()
    }

    /// Whether the session closed the played sandbox's socket.
    pub fn sandbox_closed(&mut self) -> bool {
        self.sandbox_frames();
        self.sandbox.as_ref().is_some_and(|s| s.closed)
    }

    /// The next `run` frame the sandbox has not played yet.
    pub fn take_run(&mut self) -> Result<SentRun, String> {
        let frames = self.sandbox_frames();
        let sandbox = self.sandbox.as_mut().ok_or("no sandbox is connected")?;
        sandbox
            .pending
            .pop_front()
            .ok_or_else(|| format!("no run frame reached the sandbox; it got {frames:?}"))
    }

    /// A message from the played sandbox; numbered ones get the next `n`.
    pub async fn sandbox_says(&mut self, message: SandboxMessage) -> Result<(), String> {
        let shown = format!("{message:?}");
        self.sandbox_send(message)
            .await
            .map_err(|e| format!("the sandbox could not send {shown}: {e}"))
    }

    /// Like [`Lifecycle::sandbox_says`], with the host's error as it is.
    pub async fn sandbox_send(
        &mut self,
        mut message: SandboxMessage,
    ) -> Result<(), SessionHostError> {
        let sandbox = self
            .sandbox
            .as_mut()
            .ok_or_else(|| SessionHostError::Invalid("no sandbox is connected".into()))?;
        if let Some(n) = numbered(&mut message) {
            sandbox.n += 1;
            *n = sandbox.n;
            sandbox.sent.push(message.clone());
        }
        sandbox.link.handle.send(message).await
    }

    /// The `n`s the session ACKed to the played sandbox so far, in order.
    pub fn acked(&mut self) -> Vec<u64> {
        self.sandbox_frames()
            .into_iter()
            .filter_map(|f| match f {
                ServerToSandbox::Ack { n } => Some(n),
                _ => None,
            })
            .collect()
    }

    /// After a re-dial, the sandbox re-sends every numbered message the session did not ACK, as
    /// the bridge does.
    pub async fn resend_unacked(&mut self) -> Result<(), String> {
        let acked = self.acked();
        let sandbox = self.sandbox.as_mut().ok_or("no sandbox is connected")?;
        let unacked: Vec<SandboxMessage> = sandbox
            .sent
            .iter()
            .filter(|m| m.n().is_some_and(|n| !acked.contains(&n)))
            .cloned()
            .collect();
        for message in unacked {
            let shown = format!("{message:?}");
            sandbox
                .link
                .handle
                .send(message)
                .await
                .map_err(|e| format!("re-sending {shown} failed: {e}"))?;
        }
        Ok(())
    }

    /// The agent streams a reply with a tool call for `run`.
    pub async fn agent_works(&mut self, run_id: &RunId) -> Result<(), String> {
        for event in agent_events(run_id)? {
            self.sandbox_says(SandboxMessage::Event {
                run_id: run_id.clone(),
                n: 0,
                event,
            })
            .await?;
        }
        Ok(())
    }

    /// The agent finishes `run` with [`USAGE`].
    pub async fn agent_finishes(&mut self, run_id: &RunId) -> Result<(), String> {
        let finished = SandboxMessage::RunFinished {
            run_id: run_id.clone(),
            n: 0,
            status: TerminalStatus::Completed,
            stop_reason: Some("end_turn".into()),
            usage: USAGE,
            error: None,
        };
        self.sandbox_says(finished).await
    }

    /// Plays the next run the sandbox received: a streamed reply with a tool call, then
    /// `run_finished` (completed).
    pub async fn play_run(&mut self) -> Result<SentRun, String> {
        let run = self.take_run()?;
        self.agent_works(&run.run_id).await?;
        self.agent_finishes(&run.run_id).await?;
        Ok(run)
    }

    // ----- the WebSocket client ------------------------------------------------------------

    /// Attaches a client that has every event up to `after`; the previous client (if any) goes.
    pub async fn attach_client(&mut self, after: u64) -> Result<(), SessionHostError> {
        self.detach_client().await;
        let link = self
            .host
            .attach_client(&self.principal, &self.session, Some(after))
            .await?;
        self.client = Some(Client {
            link,
            after,
            events: Vec::new(),
            controls: Vec::new(),
            closed: false,
        });
        self.client_events();
        Ok(())
    }

    /// The client goes away (it is kept for the log check).
    pub async fn detach_client(&mut self) {
        if let Some(mut client) = self.client.take() {
            drain(&mut client);
            client.link.handle.detach().await;
            self.past_clients.push(client);
        }
    }

    /// Every event the current client received so far, in arrival order.
    pub fn client_events(&mut self) -> Vec<EventEnvelope> {
        match self.client.as_mut() {
            Some(client) => {
                drain(client);
                client.events.clone()
            }
            None => Vec::new(),
        }
    }

    /// Every control frame the current client received so far.
    pub fn client_controls(&mut self) -> Vec<ControlFrame> {
        match self.client.as_mut() {
            Some(client) => {
                drain(client);
                client.controls.clone()
            }
            None => Vec::new(),
        }
    }

    /// Whether the session ended the current client's stream.
    pub fn client_closed(&mut self) -> bool {
        self.client_events();
        self.client.as_ref().is_some_and(|c| c.closed)
    }

    // ----- state, read without faults ------------------------------------------------------

    /// The session's log as stored (through the inner store).
    pub async fn stored_events(&self) -> Result<Vec<EventEnvelope>, String> {
        self.store
            .events(&self.key(), 0, usize::MAX)
            .await
            .map_err(|e| format!("reading the stored log: {e}"))
    }

    /// Run ids in the session's ledger outbox (through the inner store).
    pub async fn outbox(&self) -> Result<Vec<RunId>, String> {
        match self.store.load(&self.key()).await {
            Ok(Some(persisted)) => Ok(persisted.outbox.into_iter().map(|r| r.run_id).collect()),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(format!("loading the stored session: {e}")),
        }
    }

    /// The run as the inner ledger holds it.
    pub async fn recorded(&self, run_id: &RunId) -> Result<RunRecord, String> {
        self.ledger
            .get(&self.tenant(), run_id)
            .await
            .map_err(|e| format!("run {run_id} is not in the ledger: {e}"))
    }

    /// How run `run_id` ended, from its `execution_complete` in the stored log.
    pub async fn outcome(
        &self,
        run_id: &RunId,
    ) -> Result<(TerminalStatus, Option<ErrorBody>, u64), String> {
        let ends: Vec<_> = self
            .stored_events()
            .await?
            .into_iter()
            .filter(|e| e.run_id.as_ref() == Some(run_id))
            .filter_map(|e| match e.event {
                Event::ExecutionComplete {
                    status,
                    error,
                    cost_micros,
                    ..
                } => Some((status, error, cost_micros)),
                _ => None,
            })
            .collect();
        match <[_; 1]>::try_from(ends) {
            Ok([end]) => Ok(end),
            Err(ends) => Err(format!(
                "run {run_id} must end exactly once in the log; it ends {} times",
                ends.len()
            )),
        }
    }

    /// The statuses of the `session.status` events in the stored log, in order.
    pub async fn stored_statuses(&self) -> Result<Vec<SessionStatus>, String> {
        Ok(self
            .stored_events()
            .await?
            .into_iter()
            .filter_map(|e| match e.event {
                Event::SessionStatus { status } => Some(status),
                _ => None,
            })
            .collect())
    }

    /// Nothing half-applied: the stored log runs 1, 2, 3… without a gap, and every client got
    /// exactly the stored events after its `after`, in order, each once (a re-sent critical event
    /// aside), with nothing that is not in the store.
    pub async fn check_log(&mut self) -> Result<Vec<EventEnvelope>, String> {
        let stored = self.stored_events().await?;
        for (i, event) in stored.iter().enumerate() {
            ensure_eq!(
                event.seq,
                i as u64 + 1,
                "the stored log has a gap or a repeat at position {i}"
            );
        }
        if let Some(client) = self.client.as_mut() {
            drain(client);
        }
        for client in self.past_clients.iter().chain(self.client.as_ref()) {
            let mut next = client.after + 1;
            for event in &client.events {
                let Some(durable) = stored.get(event.seq.wrapping_sub(1) as usize) else {
                    return Err(format!(
                        "a client got seq {}, which is not in the store (last stored seq {})",
                        event.seq,
                        stored.len()
                    ));
                };
                ensure_eq!(
                    event,
                    durable,
                    "a client got an event that differs from the stored one"
                );
                if event.seq == next {
                    next += 1;
                } else if !(event.seq < next && event.critical) {
                    return Err(format!(
                        "a client attached after {} got seq {} when seq {next} was due",
                        client.after, event.seq
                    ));
                }
            }
        }
        Ok(stored)
    }
}

/// What the played agent does in a run: a reply streamed around one tool call.
fn agent_events(run_id: &RunId) -> Result<Vec<Event>, String> {
    let call_id = CallId::parse(format!("call-{run_id}")).map_err(|e| e.to_string())?;
    Ok(vec![
        Event::MessageDelta {
            text: "Reading the repository. ".into(),
        },
        Event::ToolCall {
            call_id: call_id.clone(),
            name: "read_file".into(),
            input: serde_json::json!({ "path": "README.md" }),
        },
        Event::ToolResult {
            call_id,
            status: ToolStatus::Ok,
            output: serde_json::json!({ "bytes": 42 }),
        },
        Event::MessageDelta {
            text: "Done.".into(),
        },
    ])
}

fn model() -> Result<ModelRef, String> {
    ModelRef::parse(MODEL).map_err(|e| e.to_string())
}

/// The key a dial-back route names: the spec's `org:session`.
fn dial_back_key(spec: &SpawnSpec) -> Result<SessionKey, String> {
    let (org, session) = spec
        .session_key
        .split_once(':')
        .ok_or_else(|| format!("session key {:?} is not org:session", spec.session_key))?;
    Ok(SessionKey::for_sandbox_dial_back(
        OrgId::parse(org).map_err(|e| e.to_string())?,
        SessionId::parse(session).map_err(|e| e.to_string())?,
    ))
}

/// The `n` of a numbered sandbox message.
fn numbered(message: &mut SandboxMessage) -> Option<&mut u64> {
    match message {
        SandboxMessage::Event { n, .. }
        | SandboxMessage::RunFinished { n, .. }
        | SandboxMessage::PermissionRequest { n, .. }
        | SandboxMessage::Workspace { n, .. } => Some(n),
        SandboxMessage::Hello { .. } | SandboxMessage::Heartbeat => None,
    }
}

/// Takes what is waiting on a client's stream.
fn drain(client: &mut Client) {
    loop {
        match client.link.frames.try_recv() {
            Ok(ServerFrame::Event(event)) => client.events.push(event),
            Ok(ServerFrame::Control(control)) => client.controls.push(control),
            Err(e) => {
                client.closed |= e.is_closed();
                break;
            }
        }
    }
}

/// Everything a subscription has delivered so far.
fn received(stream: &mut futures::stream::BoxStream<'static, OrgEvent>) -> Vec<OrgEvent> {
    let mut out = Vec::new();
    while let Some(Some(event)) = stream.next().now_or_never() {
        out.push(event);
    }
    out
}

/// The error class a catalogued fault shows its caller.
fn class_of(entry: &CatalogEntry) -> Result<ErrorClass, String> {
    entry
        .fault
        .class()
        .ok_or_else(|| format!("{} is a slow success, not an error", entry.name()))
}

/// A session with a connected sandbox and one completed run; returns that run.
async fn completed_run(lc: &mut Lifecycle) -> Result<SentRun, String> {
    ok!(lc.start().await);
    lc.dial_back().await?;
    let queued = ok!(lc.prompt("Add a README").await);
    let run = lc.play_run().await?;
    ensure_eq!(
        run.run_id,
        queued.run_id,
        "the sandbox must run the prompted run"
    );
    Ok(run)
}

/// A completed run reads back from the ledger exactly once, with its stored events and the cost of
/// [`USAGE`] at [`PRICE`].
async fn recorded_once(lc: &Lifecycle, run_id: &RunId) -> Result<RunRecord, String> {
    let record = lc.recorded(run_id).await?;
    ensure_eq!(
        record.status,
        TerminalStatus::Completed,
        "the recorded status of {run_id}"
    );
    ensure_eq!(record.usage, USAGE, "the recorded usage of {run_id}");
    ensure_eq!(
        record.cost_micros,
        PRICE.cost_micros(USAGE),
        "the recorded cost of {run_id}"
    );
    let stored: Vec<EventEnvelope> = lc
        .stored_events()
        .await?
        .into_iter()
        .filter(|e| e.run_id.as_ref() == Some(run_id))
        .collect();
    ensure_eq!(
        record.events,
        stored,
        "the recorded events of {run_id} must be its stored events"
    );
    ensure_eq!(
        record.event_count,
        stored.len() as u64,
        "the recorded event count of {run_id}"
    );
    Ok(record)
}

/// The session is usable: a new prompt is dispatched with the tenant's key, played, completed and
/// recorded once.
async fn a_new_prompt_completes(lc: &mut Lifecycle) -> Result<RunId, String> {
    let queued = ok!(lc.prompt("One more thing").await);
    let run = lc.play_run().await?;
    ensure_eq!(
        run.run_id,
        queued.run_id,
        "the sandbox must run the new prompt"
    );
    ensure_eq!(
        run.gateway.api_key.as_deref(),
        Some(PROVIDER_KEY),
        "the run frame must carry the tenant's key"
    );
    recorded_once(lc, &queued.run_id).await?;
    Ok(queued.run_id)
}

/// Closing ends the session and leaves no sandbox running.
async fn closes_without_leaks(lc: &mut Lifecycle) -> CaseResult {
    ok!(lc.close().await);
    ensure_eq!(ok!(lc.info().await).status, SessionStatus::Closed);
    ensure!(
        lc.sandboxes.live().is_empty(),
        "sandboxes still running after close: {:?}",
        lc.sandboxes.live()
    );
    Ok(())
}

/// A sandbox the session lost track of ends on its own: the provider was asked for bounded
/// idle and maximum lifetimes.
fn bounded_by_lifetimes(lc: &Lifecycle, id: &SandboxId) -> CaseResult {
    let spec = lc
        .sandboxes
        .spec(id)
        .ok_or_else(|| format!("the provider does not know {id}"))?;
    ensure_eq!(
        spec.timeouts.idle_s,
        lc.config().sandbox_idle_s,
        "the idle lifetime {id} was spawned with"
    );
    ensure_eq!(
        spec.timeouts.max_s,
        lc.config().sandbox_max_s,
        "the maximum lifetime {id} was spawned with"
    );
    ensure!(
        spec.timeouts.idle_s > 0 && spec.timeouts.max_s > 0,
        "{id} was spawned without lifetimes: {:?}",
        spec.timeouts
    );
    Ok(())
}

// ----- session_store ---------------------------------------------------------------------------

/// The store stays down under a prompt: the prompt fails with the store's class, nothing of it is
/// stored, shown or dispatched, and the actor is evicted (clients told, sandbox socket closed);
/// while the store is down nothing is acknowledged, and once it heals the session comes back from
/// its last durable state: the sandbox re-dials, the client resumes, a prompt runs.
async fn store_outage_evicts_the_session(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::SessionStore).await?;
    ok!(lc.start().await);
    lc.dial_back().await?;
    ok!(lc.attach_client(0).await);
    lc.inject(entry.op, entry.fault);
    evicted_and_rebuilt(&mut lc, &entry, |lc| {
        Box::pin(async move { lc.prompt("Refactor the parser").await.map(|_| ()) })
    })
    .await?;
    a_new_prompt_completes(&mut lc).await?;
    ensure_eq!(lc.ledger.len(), 1, "only the run after heal is recorded");
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// A commit that times out is retried and delivered once a retry lands; a store that keeps timing
/// out under a run in flight evicts the session without acknowledging the agent's message, which
/// the sandbox re-sends after heal, so the run completes with every event stored once.
async fn timed_out_commit_is_retried_then_evicts(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::SessionStore).await?;
    ok!(lc.start().await);
    lc.dial_back().await?;
    ok!(lc.attach_client(0).await);

    lc.inject_times(entry.op, entry.fault, PERSIST_ATTEMPTS - 1);
    let queued = ok!(lc.prompt("Fix the flaky test").await);
    ensure_eq!(
        lc.injected(entry.op),
        (PERSIST_ATTEMPTS - 1) as usize,
        "every try but the last timed out"
    );
    let stored = lc.check_log().await?;
    ensure_eq!(
        stored
            .iter()
            .filter(|e| matches!(e.event, Event::RunQueued { .. }))
            .count(),
        1,
        "the prompt is stored once"
    );
    ensure!(
        lc.client_events()
            .iter()
            .any(|e| e.run_id.as_ref() == Some(&queued.run_id)),
        "the landed commit's events reach the client"
    );

    let run = lc.take_run()?;
    ensure_eq!(run.run_id, queued.run_id);
    lc.inject(entry.op, entry.fault);
    let mut events = agent_events(&run.run_id)?.into_iter();
    let first = SandboxMessage::Event {
        run_id: run.run_id.clone(),
        n: 0,
        event: events.next().ok_or("the agent does nothing")?,
    };
    evicted_and_rebuilt(&mut lc, &entry, move |lc| Box::pin(lc.sandbox_send(first))).await?;
    lc.resend_unacked().await?;
    for event in events {
        lc.sandbox_says(SandboxMessage::Event {
            run_id: run.run_id.clone(),
            n: 0,
            event,
        })
        .await?;
    }
    lc.agent_finishes(&run.run_id).await?;
    let (status, _, _) = lc.outcome(&run.run_id).await?;
    ensure_eq!(
        status,
        TerminalStatus::Completed,
        "the run survives the store outage"
    );
    let agent_events = lc
        .stored_events()
        .await?
        .iter()
        .filter(|e| e.run_id.as_ref() == Some(&run.run_id))
        .filter(|e| {
            matches!(
                e.event,
                Event::MessageDelta { .. } | Event::ToolCall { .. } | Event::ToolResult { .. }
            )
        })
        .count();
    ensure_eq!(agent_events, 4, "every agent event is stored exactly once");
    recorded_once(&lc, &run.run_id).await?;
    ensure_eq!(lc.ledger.len(), 1);
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// With every commit failing, `act` (a prompt, or the agent's messages) fails with the store's
/// class: nothing of it is stored, shown to a client, acknowledged to the sandbox or dispatched;
/// clients get a `store_unavailable` error frame and their stream ends, the sandbox socket closes,
/// nothing reaches the ledger. While the store is down the rebuilt session still acknowledges
/// nothing. After heal it is back at its last durable state, the sandbox re-dials with its token
/// and the client resumes from its last seq.
async fn evicted_and_rebuilt(
    lc: &mut Lifecycle,
    entry: &CatalogEntry,
    act: impl for<'a> FnOnce(&'a mut Lifecycle) -> BoxFut<'a, Result<(), SessionHostError>>,
) -> CaseResult {
    let class = class_of(entry)?;
    let before = lc.stored_events().await?;
    let runs_before = lc.runs_sent();
    let acked_before = lc.acked();
    let recorded_before = lc.ledger.len();

    expect_class!(act(lc).await, class);
    ensure_eq!(
        lc.stored_events().await?,
        before,
        "a failed commit left events in the store"
    );
    ensure!(
        lc.client_controls()
            .iter()
            .any(|c| matches!(c, ControlFrame::Error { code, .. } if code == "store_unavailable")),
        "the client must be told the store is unavailable: {:?}",
        lc.client_controls()
    );
    ensure!(
        lc.client_closed(),
        "the client stream must end (it resumes from what is stored)"
    );
    lc.check_log().await?;
    ensure_eq!(
        lc.runs_sent(),
        runs_before,
        "work the store refused was dispatched to the sandbox"
    );
    ensure_eq!(
        lc.acked(),
        acked_before,
        "the sandbox got an ACK for a message that is not durable"
    );
    ensure!(
        lc.sandbox_closed(),
        "the sandbox socket must close so that it re-dials"
    );
    ensure_eq!(
        lc.ledger.len(),
        recorded_before,
        "an outcome the store never saw reached the ledger"
    );

    // Still down: the session rebuilt from the store cannot write, so nothing is acknowledged.
    let retry = lc.prompt("Is the store back?").await;
    ensure!(
        retry
            .as_ref()
            .is_err_and(|e| [class, ErrorClass::Unavailable]
                .contains(&switchboard_ports::Classify::class(e))),
        "a prompt while the store is down must fail {class:?} or Unavailable; got {retry:?}"
    );
    ensure_eq!(
        lc.stored_events().await?,
        before,
        "a prompt while the store is down left events"
    );

    lc.heal();
    let info = ok!(lc.info().await);
    ensure_eq!(
        (info.last_seq, info.queue_length),
        (before.len() as u64, 0),
        "the session is back at its last durable state"
    );
    ensure!(
        !info.status.is_terminal(),
        "the rebuilt session takes work: {:?}",
        info.status
    );
    ok!(lc.redial().await);
    let last_seen = lc.client_events().last().map_or(0, |e| e.seq);
    ok!(lc.attach_client(last_seen).await);
    lc.check_log().await?;
    Ok(())
}

/// The first try of a commit lands but its answer is lost: the retry is recognised as landed, so
/// the prompt succeeds and nothing is stored or delivered twice.
async fn lost_commit_answer_lands_once(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::SessionStore).await?;
    ok!(lc.start().await);
    lc.dial_back().await?;
    ok!(lc.attach_client(0).await);

    lc.inject_times(entry.op, entry.fault, 1);
    let queued = ok!(lc.prompt("Bump the version").await);
    ensure_eq!(lc.injected(entry.op), 1);
    let stored = lc.check_log().await?;
    let queued_events = stored
        .iter()
        .filter(|e| matches!(e.event, Event::RunQueued { .. }))
        .count();
    ensure_eq!(queued_events, 1, "the prompt must be stored once");
    let seen = lc
        .client_events()
        .iter()
        .filter(|e| matches!(e.event, Event::RunQueued { .. }))
        .count();
    ensure_eq!(seen, 1, "the prompt must be delivered once");

    lc.play_run().await?;
    recorded_once(&lc, &queued.run_id).await?;
    a_new_prompt_completes(&mut lc).await?;
    lc.check_log().await?;
    ensure_eq!(lc.ledger.len(), 2);
    Ok(())
}

/// Every commit is slow: the whole lifecycle still delivers each stored event once, in seq order.
async fn slow_commit_delivers_in_seq_order(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::SessionStore).await?;
    lc.inject(entry.op, entry.fault);
    ok!(lc.start().await);
    ok!(lc.attach_client(0).await);
    lc.dial_back().await?;
    let first = ok!(lc.prompt("Write the changelog").await);
    lc.play_run().await?;
    let second = a_new_prompt_completes(&mut lc).await?;
    recorded_once(&lc, &first.run_id).await?;

    let stored = lc.check_log().await?;
    let seqs: Vec<u64> = lc.client_events().iter().map(|e| e.seq).collect();
    ensure_eq!(
        seqs,
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        "the client gets every stored event once, in seq order"
    );
    ensure!(lc.injected(entry.op) > 0, "no commit was slowed");
    ensure_eq!(
        lc.ledger.len(),
        2,
        "both runs ({}, {second}) are recorded once",
        first.run_id
    );
    closes_without_leaks(&mut lc).await
}

/// The store cannot load a hibernated session: every activation fails with the fault's class and
/// writes nothing (not even a new session over the stored one); once the store heals the session
/// comes back with its state intact and takes prompts.
async fn failed_activation_overwrites_nothing(entry: CatalogEntry) -> CaseResult {
    let class = class_of(&entry)?;
    let mut lc = Lifecycle::new(PortId::SessionStore).await?;
    let first = completed_run(&mut lc).await?;
    let info = ok!(lc.info().await);
    lc.until_hibernated(Duration::from_secs(30)).await?;
    let stored = lc.check_log().await?;
    let snapshot = lc.store.load(&lc.key()).await.map_err(|e| e.to_string())?;

    lc.inject(entry.op, entry.fault);
    expect_class!(lc.info().await, class);
    expect_class!(lc.prompt("Wake up").await, class);
    expect_class!(lc.start().await, class);
    expect_class!(lc.attach_client(0).await, class);
    ensure_eq!(
        lc.stored_events().await?,
        stored,
        "a failed activation wrote events"
    );
    ensure_eq!(
        lc.store.load(&lc.key()).await.map_err(|e| e.to_string())?,
        snapshot,
        "a failed activation replaced the stored session"
    );
    ensure_eq!(
        lc.runs_sent(),
        vec![first.run_id.clone()],
        "nothing was dispatched"
    );

    lc.heal();
    let back = ok!(lc.info().await);
    ensure_eq!(
        (back.last_seq, back.queue_length, back.created_at),
        (stored.len() as u64, 0, info.created_at),
        "the session comes back intact"
    );
    expect_class!(lc.start().await, ErrorClass::Conflict);
    let queued = ok!(lc.prompt("Back to work").await);
    lc.dial_back().await?;
    let run = lc.play_run().await?;
    ensure_eq!(run.run_id, queued.run_id);
    recorded_once(&lc, &first.run_id).await?;
    recorded_once(&lc, &run.run_id).await?;
    ensure_eq!(lc.ledger.len(), 2);
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// Reading the log fails: the HTTP page fails with the class, a client's replay breaks off
/// without a partial or wrong event; with the same `after` both read every event once after heal.
async fn failed_replay_resumes_from_the_same_seq(entry: CatalogEntry) -> CaseResult {
    let class = class_of(&entry)?;
    let mut lc = Lifecycle::new(PortId::SessionStore).await?;
    completed_run(&mut lc).await?;
    let stored = lc.check_log().await?;
    let after = 2;

    lc.inject(entry.op, entry.fault);
    expect_class!(
        lc.host.events(&lc.tenant(), &lc.session, after, 1000).await,
        class
    );
    ok!(lc.attach_client(after).await);
    ensure!(
        lc.client_events().is_empty(),
        "a failed replay delivered events: {:?}",
        lc.client_events()
    );
    ensure!(
        lc.client_closed(),
        "a client whose replay failed must be dropped so it resumes"
    );
    ensure!(
        matches!(
            lc.client_controls().first(),
            Some(ControlFrame::Hello { .. })
        ),
        "the client got its hello first"
    );

    lc.heal();
    let page = ok!(lc.host.events(&lc.tenant(), &lc.session, after, 1000).await);
    ensure_eq!(
        page.events,
        stored[after as usize..].to_vec(),
        "the page after heal"
    );
    ensure_eq!(page.last_seq, stored.len() as u64);
    ok!(lc.attach_client(after).await);
    let replayed: Vec<u64> = lc.client_events().iter().map(|e| e.seq).collect();
    ensure_eq!(
        replayed,
        (after + 1..=stored.len() as u64).collect::<Vec<_>>(),
        "the resumed replay"
    );
    lc.check_log().await?;
    a_new_prompt_completes(&mut lc).await?;
    lc.check_log().await?;
    Ok(())
}

// ----- clock -----------------------------------------------------------------------------------

/// Every timer goes through the faulty clock: the spawn timeouts still fire, at their deadline and
/// never before, in order (the retry, then the failure of the waiting run).
async fn late_timers_still_fire_in_deadline_order(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::Clock).await?;
    lc.inject(entry.op, entry.fault);
    let timeout = lc.config().spawn_timeout;
    let just_before = timeout - Duration::from_millis(1);
    ok!(lc.start().await);
    ok!(lc.attach_client(0).await);
    let queued = ok!(lc.prompt("Nobody dials back").await);

    lc.advance(just_before).await?;
    ensure_eq!(
        lc.spawned().len(),
        1,
        "the spawn timeout fired before its deadline"
    );
    lc.advance(Duration::from_millis(1)).await?;
    ensure_eq!(
        lc.spawned().len(),
        2,
        "the spawn timeout did not fire at its deadline: no retry"
    );
    ensure!(
        lc.outcome(&queued.run_id).await.is_err(),
        "the run failed before its second attempt timed out"
    );

    lc.advance(just_before).await?;
    ensure!(
        lc.outcome(&queued.run_id).await.is_err(),
        "the second spawn timeout fired before its deadline"
    );
    lc.advance(Duration::from_millis(1)).await?;
    let (status, error, _) = lc.outcome(&queued.run_id).await?;
    ensure_eq!(status, TerminalStatus::Failed);
    ensure_eq!(
        error.map(|e| e.code),
        Some("sandbox_spawn_timeout".to_string())
    );
    ensure_eq!(
        lc.recorded(&queued.run_id).await?.status,
        TerminalStatus::Failed
    );
    ensure!(
        lc.sandboxes.live().is_empty(),
        "timed-out sandboxes still run: {:?}",
        lc.sandboxes.live()
    );
    ensure_eq!(
        lc.injected(entry.op),
        4,
        "every timer went through the faulty clock"
    );
    lc.check_log().await?;

    lc.heal();
    ok!(lc.prompt("Now dial back").await);
    lc.dial_back().await?;
    lc.play_run().await?;
    ensure_eq!(lc.ledger.len(), 2);
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

// ----- sandbox_provider ------------------------------------------------------------------------

/// The provider refuses every spawn: each cycle tries `spawn_attempts` times, then the waiting run
/// fails `sandbox_spawn_failed` (recorded once) instead of waiting; after heal a prompt runs.
async fn failed_spawns_fail_the_waiting_run(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::SandboxProvider).await?;
    let attempts = lc.config().spawn_attempts as usize;
    lc.inject(entry.op, entry.fault);
    ok!(lc.start().await);
    ensure_eq!(
        lc.injected(entry.op),
        attempts,
        "the first spawn cycle tries spawn_attempts times"
    );
    ok!(lc.attach_client(0).await);

    let queued = ok!(lc.prompt("Needs a sandbox").await);
    ensure_eq!(
        lc.injected(entry.op),
        2 * attempts,
        "a waiting run starts a new cycle of spawn_attempts tries"
    );
    let (status, error, _) = lc.outcome(&queued.run_id).await?;
    ensure_eq!(
        status,
        TerminalStatus::Failed,
        "the waiting run fails instead of waiting forever"
    );
    ensure_eq!(
        error.map(|e| e.code),
        Some("sandbox_spawn_failed".to_string())
    );
    ensure_eq!(
        lc.recorded(&queued.run_id).await?.status,
        TerminalStatus::Failed
    );
    ensure_eq!(lc.ledger.len(), 1);
    ensure!(lc.spawned().is_empty(), "a refused spawn created a sandbox");
    ensure_eq!(
        ok!(lc.info().await).status,
        SessionStatus::Ready,
        "the session stays usable"
    );
    lc.check_log().await?;

    lc.heal();
    let queued = ok!(lc.prompt("Try again").await);
    lc.dial_back().await?;
    let run = lc.play_run().await?;
    ensure_eq!(run.run_id, queued.run_id);
    recorded_once(&lc, &run.run_id).await?;
    ensure_eq!(lc.ledger.len(), 2);
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// The first spawn creates a sandbox whose id never arrives: the retry mints a new token, the
/// orphan's dial-back is refused (and audited), and the orphan carries bounded lifetimes.
async fn orphaned_sandbox_cannot_dial_back(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::SandboxProvider).await?;
    lc.inject_times(entry.op, entry.fault, 1);
    ok!(lc.start().await);
    let spawned = lc.spawned();
    let [(orphan, orphan_spec), (current, current_spec)] = <[_; 2]>::try_from(spawned)
        .map_err(|s| format!("expected the lost spawn and its retry, got {s:?}"))?;
    ensure!(
        orphan_spec.token != current_spec.token,
        "the retry must mint a new token"
    );

    match lc.attach_sandbox(&orphan_spec).await {
        Err(e) => ensure_eq!(
            switchboard_ports::Classify::class(&e),
            ErrorClass::Unauthorized,
            "the orphan's dial-back"
        ),
        Ok(_) => return Err("the orphan dialled back with its stale token".into()),
    }
    let denied = lc.audit.all();
    ensure!(
        denied
            .iter()
            .any(|e| e.action == AuditAction::SandboxTokenRejected
                && e.outcome == AuditOutcome::Denied),
        "the refused dial-back is audited: {denied:?}"
    );

    lc.dial_as(&current, &current_spec).await?;
    let queued = ok!(lc.prompt("Use the right box").await);
    let run = lc.play_run().await?;
    ensure_eq!(run.run_id, queued.run_id);
    recorded_once(&lc, &run.run_id).await?;
    lc.check_log().await?;

    ok!(lc.close().await);
    ensure_eq!(
        lc.sandboxes.live(),
        vec![orphan.clone()],
        "only the orphan outlives the session"
    );
    bounded_by_lifetimes(&lc, &orphan)
}

/// Every spawn is slow: it still connects, and runs queued meanwhile go out in order.
async fn slow_spawn_connects_and_runs_in_order(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::SandboxProvider).await?;
    lc.inject(entry.op, entry.fault);
    ok!(lc.start().await);
    ok!(lc.attach_client(0).await);
    let first = ok!(lc.prompt("First").await);
    let second = ok!(lc.prompt("Second").await);
    ensure_eq!((first.position, second.position), (0, 1));
    ensure_eq!(lc.injected(entry.op), 1, "one slow spawn");
    lc.dial_back().await?;
    ensure_eq!(
        lc.play_run().await?.run_id,
        first.run_id,
        "the first queued run goes out first"
    );
    ensure_eq!(
        lc.play_run().await?.run_id,
        second.run_id,
        "then the second"
    );
    recorded_once(&lc, &first.run_id).await?;
    recorded_once(&lc, &second.run_id).await?;
    ensure_eq!(
        lc.spawned().len(),
        1,
        "a slow spawn within the timeout is not retried"
    );
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// `terminate` keeps failing: the session still closes, the sandbox is told to shut down, its
/// token is refused from then on, and it carries bounded lifetimes; the session stays closed.
async fn session_closes_when_terminate_fails(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::SandboxProvider).await?;
    let run = completed_run(&mut lc).await?;
    let (sandbox, spec) = lc.spawned().pop().ok_or("no sandbox was spawned")?;

    lc.inject(entry.op, entry.fault);
    ok!(lc.close().await);
    ensure_eq!(ok!(lc.info().await).status, SessionStatus::Closed);
    ensure_eq!(
        lc.injected(entry.op),
        TERMINATE_ATTEMPTS as usize,
        "terminate is tried a few times"
    );
    ensure!(
        lc.sandbox_frames().contains(&ServerToSandbox::Shutdown),
        "the sandbox is told to shut down"
    );
    match lc.attach_sandbox(&spec).await {
        Err(e) => ensure_eq!(
            switchboard_ports::Classify::class(&e),
            ErrorClass::Unauthorized,
            "the closed session's token"
        ),
        Ok(_) => return Err("a closed session accepted its sandbox's token".into()),
    }
    ensure_eq!(
        lc.sandboxes.live(),
        vec![sandbox.clone()],
        "the provider never heard the terminate"
    );
    bounded_by_lifetimes(&lc, &sandbox)?;

    lc.heal();
    lc.advance(Duration::from_secs(3600)).await?;
    ensure_eq!(
        ok!(lc.info().await).status,
        SessionStatus::Closed,
        "the session stays closed"
    );
    expect_class!(lc.prompt("Too late").await, ErrorClass::Conflict);
    recorded_once(&lc, &run.run_id).await?;
    ensure_eq!(lc.ledger.len(), 1);
    lc.check_log().await?;
    Ok(())
}

// ----- model_gateway and price_book ------------------------------------------------------------

/// Resolving the run's gateway or price fails: the run ends `dispatch_failed` (recorded once, at
/// no cost), no `run` frame or key reaches the sandbox, and the next run resolves again.
async fn failed_dispatch_sends_nothing(entry: CatalogEntry) -> CaseResult {
    let port = if entry.op == "price" {
        PortId::PriceBook
    } else {
        PortId::ModelGateway
    };
    let mut lc = Lifecycle::new(port).await?;
    ok!(lc.start().await);
    lc.dial_back().await?;
    ok!(lc.attach_client(0).await);

    lc.inject(entry.op, entry.fault);
    let queued = ok!(lc.prompt("Needs the model").await);
    ensure!(lc.injected(entry.op) >= 1, "the fault was never injected");
    ensure!(
        lc.runs_sent().is_empty(),
        "a run whose dispatch failed reached the sandbox: {:?}",
        lc.sandbox_frames()
    );
    let (status, error, cost) = lc.outcome(&queued.run_id).await?;
    ensure_eq!(status, TerminalStatus::Failed);
    ensure_eq!(error.map(|e| e.code), Some("dispatch_failed".to_string()));
    ensure_eq!(cost, 0, "no cost is invented");
    let record = lc.recorded(&queued.run_id).await?;
    ensure_eq!(
        (record.status, record.cost_micros),
        (TerminalStatus::Failed, 0),
        "the failed run's record"
    );
    ensure!(
        lc.client_events()
            .iter()
            .any(|e| e.run_id.as_ref() == Some(&queued.run_id) && e.critical),
        "the client learns how the run ended"
    );
    ensure_eq!(
        ok!(lc.info().await).status,
        SessionStatus::Ready,
        "the session stays usable"
    );
    lc.check_log().await?;

    lc.heal();
    a_new_prompt_completes(&mut lc).await?;
    ensure_eq!(lc.ledger.len(), 2);
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// Resolving is slow: the run starts once it answers, with the tenant's key, and its record
/// carries the listed price.
async fn slow_dispatch_starts_the_run(entry: CatalogEntry) -> CaseResult {
    let port = if entry.op == "price" {
        PortId::PriceBook
    } else {
        PortId::ModelGateway
    };
    let mut lc = Lifecycle::new(port).await?;
    lc.inject(entry.op, entry.fault);
    ok!(lc.start().await);
    lc.dial_back().await?;
    ok!(lc.attach_client(0).await);
    a_new_prompt_completes(&mut lc).await?;
    ensure_eq!(lc.injected(entry.op), 1);
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

// ----- run_ledger ------------------------------------------------------------------------------

/// The ledger refuses records: finished runs wait in the stored outbox, retried with growing
/// delays while the session goes on; once it heals each is recorded exactly once and the outbox
/// empties.
async fn outbox_retries_until_recorded_once(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::RunLedger).await?;
    ok!(lc.start().await);
    lc.dial_back().await?;
    ok!(lc.attach_client(0).await);

    lc.inject(entry.op, entry.fault);
    let first = ok!(lc.prompt("Ledger is down").await);
    lc.play_run().await?;
    ensure!(
        lc.client_events()
            .iter()
            .any(|e| e.run_id.as_ref() == Some(&first.run_id)
                && matches!(e.event, Event::ExecutionComplete { .. })),
        "the stream is not held up by the ledger"
    );
    ensure_eq!(lc.ledger.len(), 0);
    ensure_eq!(
        lc.outbox().await?,
        vec![first.run_id.clone()],
        "the run waits in the stored outbox"
    );
    ensure_eq!(lc.injected(entry.op), 1);

    // Retries back off: 1 s, then 2 s, then 4 s after each failure.
    let mut attempts = Vec::new();
    for _ in 0..7 {
        lc.advance(Duration::from_secs(1)).await?;
        attempts.push(lc.injected(entry.op));
    }
    ensure_eq!(
        attempts,
        vec![2, 2, 3, 3, 3, 3, 4],
        "record attempts after each second"
    );

    let second = ok!(lc.prompt("Still down").await);
    lc.play_run().await?;
    ensure_eq!(
        lc.outbox().await?,
        vec![first.run_id.clone(), second.run_id.clone()]
    );
    ensure_eq!(lc.ledger.len(), 0);

    lc.heal();
    lc.advance(lc.config().ledger_retry_max).await?;
    recorded_once(&lc, &first.run_id).await?;
    recorded_once(&lc, &second.run_id).await?;
    ensure_eq!(lc.ledger.len(), 2);
    ensure_eq!(
        lc.outbox().await?,
        Vec::<RunId>::new(),
        "recorded runs leave the outbox"
    );
    let calls = lc.plan.calls();
    lc.advance(lc.config().ledger_retry_max * 5).await?;
    ensure_eq!(
        lc.plan.calls(),
        calls,
        "a recorded run is not sent to the ledger again"
    );
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// The first record lands but its answer is lost: the run stays in the outbox, the retry finds it
/// already recorded, and the outbox empties with one record.
async fn lost_record_answer_is_recorded_once(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::RunLedger).await?;
    ok!(lc.start().await);
    lc.dial_back().await?;
    lc.inject_times(entry.op, entry.fault, 1);
    let queued = ok!(lc.prompt("Record me once").await);
    lc.play_run().await?;
    ensure_eq!(lc.ledger.len(), 1, "the lost answer's write landed");
    ensure_eq!(
        lc.outbox().await?,
        vec![queued.run_id.clone()],
        "the run stays in the outbox until an answer arrives"
    );

    lc.advance(lc.config().ledger_retry_initial).await?;
    ensure_eq!(lc.plan.calls(), 2, "one retry");
    ensure_eq!(
        lc.outbox().await?,
        Vec::<RunId>::new(),
        "AlreadyRecorded clears the outbox"
    );
    ensure_eq!(lc.ledger.len(), 1);
    recorded_once(&lc, &queued.run_id).await?;
    lc.advance(lc.config().ledger_retry_max * 5).await?;
    ensure_eq!(lc.plan.calls(), 2, "nothing more is sent to the ledger");
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// Every record is slow: the stream carries the run's end, and each run is recorded once.
async fn slow_record_does_not_hold_the_stream(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::RunLedger).await?;
    lc.inject(entry.op, entry.fault);
    ok!(lc.start().await);
    lc.dial_back().await?;
    ok!(lc.attach_client(0).await);
    let first = ok!(lc.prompt("Slow ledger").await);
    lc.play_run().await?;
    ensure!(
        lc.client_events()
            .iter()
            .any(|e| e.run_id.as_ref() == Some(&first.run_id)
                && matches!(e.event, Event::ExecutionComplete { .. })),
        "the client sees the run end"
    );
    recorded_once(&lc, &first.run_id).await?;
    a_new_prompt_completes(&mut lc).await?;
    ensure_eq!(lc.ledger.len(), 2);
    ensure_eq!(lc.outbox().await?, Vec::<RunId>::new());
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// After a completed run, reading the history (`get` or `list`) fails with the fault's class and
/// changes nothing; after heal it reads the run exactly as recorded.
async fn run_history_read_fails_then_reads(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::RunLedger).await?;
    let run = completed_run(&mut lc).await?;
    let record = recorded_once(&lc, &run.run_id).await?;
    let (tenant, ledger) = (lc.tenant(), lc.ports.ledger.clone());
    let query = RunQuery {
        session_id: Some(lc.session.clone()),
        limit: 10,
        ..RunQuery::default()
    };
    let read = || async {
        match entry.op {
            "get" => ledger.get(&tenant, &run.run_id).await.map(|r| vec![r]),
            _ => ledger.list(&tenant, &query).await,
        }
    };
    let expected = if entry.op == "get" {
        vec![record.clone()]
    } else {
        vec![record.summary()]
    };

    lc.inject(entry.op, entry.fault);
    match entry.fault.class() {
        Some(class) => expect_class!(read().await, class),
        None => ensure_eq!(ok!(read().await), expected, "a slow read"),
    }
    ensure_eq!(lc.ledger.len(), 1, "a failed read changed the ledger");
    ensure_eq!(
        lc.recorded(&run.run_id).await?,
        record,
        "a failed read changed the run"
    );

    lc.heal();
    ensure_eq!(ok!(read().await), expected, "the read after heal");
    Ok(())
}

// ----- event_bus -------------------------------------------------------------------------------

/// Publishing fails: the dashboard misses the status changes, the session and its own stream go
/// on; once the bus heals the next change reaches the dashboard.
async fn dashboard_misses_only_the_status_change(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::EventBus).await?;
    let mut dashboard = ok!(lc.bus.subscribe(&lc.tenant()).await);
    lc.inject(entry.op, entry.fault);
    ok!(lc.start().await);
    ok!(lc.attach_client(0).await);
    completed_run_on(&mut lc).await?;
    ensure!(lc.injected(entry.op) > 0, "nothing was published");
    ensure!(
        received(&mut dashboard).is_empty(),
        "a failed publish reached the dashboard"
    );
    let statuses = lc.stored_statuses().await?;
    ensure_eq!(
        statuses,
        vec![
            SessionStatus::Provisioning,
            SessionStatus::Ready,
            SessionStatus::Running,
            SessionStatus::Ready
        ],
        "the session's own stream"
    );

    lc.heal();
    ok!(lc.attach_client(0).await);
    a_new_prompt_completes(&mut lc).await?;
    let seen: Vec<SessionStatus> = received(&mut dashboard).iter().map(|e| e.status).collect();
    ensure_eq!(
        seen,
        vec![SessionStatus::Running, SessionStatus::Ready],
        "the dashboard after heal"
    );
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// Publishing is slow: the stream goes on and the dashboard still gets every status change.
async fn slow_publish_still_reaches_the_dashboard(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::EventBus).await?;
    let mut dashboard = ok!(lc.bus.subscribe(&lc.tenant()).await);
    lc.inject(entry.op, entry.fault);
    completed_run(&mut lc).await?;
    ok!(lc.attach_client(0).await);
    a_new_prompt_completes(&mut lc).await?;
    ensure!(lc.injected(entry.op) > 0, "nothing was published");
    let mut seen: Vec<SessionStatus> = received(&mut dashboard).iter().map(|e| e.status).collect();
    seen.dedup();
    ensure_eq!(
        seen,
        lc.stored_statuses().await?,
        "the dashboard gets every status change, in order"
    );
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// Subscribing fails: no stream (not even a partial one) is opened; after heal a subscription
/// gets the next status changes.
async fn failed_subscribe_opens_no_stream(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::EventBus).await?;
    completed_run(&mut lc).await?;
    let bus = lc.ports.bus.clone();
    lc.inject(entry.op, entry.fault);
    match entry.fault.class() {
        Some(class) => expect_class!(bus.subscribe(&lc.tenant()).await.map(|_| ()), class),
        None => return Err(format!("{} is not an error fault", entry.name())),
    }
    ensure_eq!(
        lc.bus.subscriber_count(lc.tenant().org()),
        0,
        "a failed subscribe left a subscription open"
    );

    lc.heal();
    let mut dashboard = ok!(bus.subscribe(&lc.tenant()).await);
    a_new_prompt_completes(&mut lc).await?;
    let seen: Vec<SessionStatus> = received(&mut dashboard).iter().map(|e| e.status).collect();
    ensure_eq!(seen, vec![SessionStatus::Running, SessionStatus::Ready]);
    Ok(())
}

// ----- audit_log -------------------------------------------------------------------------------

/// Appending fails while a sandbox presents a wrong token: the dial-back is still refused, nothing
/// is written, the session goes on; once the log heals the next refusal is audited.
async fn lost_audit_entry_keeps_the_denial(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::AuditLog).await?;
    ok!(lc.start().await);
    let (_, spec) = lc.spawned().pop().ok_or("no sandbox was spawned")?;
    let wrong = SecretString::new(format!("{}-forged", spec.token));
    let before = (ok!(lc.info().await), lc.stored_events().await?);

    lc.inject(entry.op, entry.fault);
    match lc.attach_sandbox_with(&spec, &wrong).await {
        Err(e) => ensure_eq!(
            switchboard_ports::Classify::class(&e),
            ErrorClass::Unauthorized,
            "a forged token while the audit log is down"
        ),
        Ok(_) => {
            return Err("a forged sandbox token was accepted while the audit log was down".into())
        }
    }
    ensure!(lc.injected(entry.op) >= 1, "the refusal was never audited");
    ensure!(lc.audit.all().is_empty(), "a failed append wrote an entry");
    ensure_eq!(
        (ok!(lc.info().await), lc.stored_events().await?),
        before,
        "a refused dial-back changed the session"
    );

    lc.dial_back().await?;
    a_new_prompt_completes(&mut lc).await?;
    lc.heal();
    match lc.attach_sandbox_with(&spec, &wrong).await {
        Err(e) => ensure_eq!(
            switchboard_ports::Classify::class(&e),
            ErrorClass::Unauthorized,
            "a forged token after heal"
        ),
        Ok(_) => return Err("a forged sandbox token was accepted".into()),
    }
    let entries = lc.audit.all();
    ensure_eq!(
        entries.len(),
        1,
        "one refusal audited after heal: {entries:?}"
    );
    ensure_eq!(
        (entries[0].action, entries[0].outcome),
        (AuditAction::SandboxTokenRejected, AuditOutcome::Denied)
    );
    ensure_eq!(entries[0].org.as_ref(), Some(lc.principal.org()));
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// After a refused dial-back was audited, listing the log fails with the fault's class and changes
/// nothing; after heal it lists the entry.
async fn audit_listing_fails_then_lists(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::AuditLog).await?;
    ok!(lc.start().await);
    let (_, spec) = lc.spawned().pop().ok_or("no sandbox was spawned")?;
    match lc
        .attach_sandbox_with(&spec, &SecretString::new("sbx_forged"))
        .await
    {
        Err(e) => ensure_eq!(
            switchboard_ports::Classify::class(&e),
            ErrorClass::Unauthorized
        ),
        Ok(_) => return Err("a forged sandbox token was accepted".into()),
    }
    completed_run_on(&mut lc).await?;
    let (tenant, audit) = (lc.tenant(), lc.ports.audit.clone());
    let expected = ok!(lc.audit.list(&tenant, 10).await);
    ensure_eq!(expected.len(), 1, "the refused dial-back is audited");

    lc.inject(entry.op, entry.fault);
    match entry.fault.class() {
        Some(class) => expect_class!(audit.list(&tenant, 10).await, class),
        None => ensure_eq!(
            ok!(audit.list(&tenant, 10).await),
            expected,
            "a slow listing"
        ),
    }
    ensure_eq!(lc.audit.all(), expected, "a failed listing changed the log");
    lc.heal();
    ensure_eq!(
        ok!(audit.list(&tenant, 10).await),
        expected,
        "the listing after heal"
    );
    Ok(())
}

/// On a started session: dial back and complete a run.
async fn completed_run_on(lc: &mut Lifecycle) -> Result<RunId, String> {
    lc.dial_back().await?;
    a_new_prompt_completes(lc).await
}

// ----- session_host ----------------------------------------------------------------------------

/// `create` is refused: no session exists (nothing stored, nothing spawned); creating again with
/// the same id succeeds and runs.
async fn refused_create_leaves_no_session(entry: CatalogEntry) -> CaseResult {
    let class = class_of(&entry)?;
    let mut lc = Lifecycle::new(PortId::SessionHost).await?;
    lc.inject(entry.op, entry.fault);
    expect_class!(lc.start().await, class);
    expect_class!(lc.info().await, ErrorClass::NotFound);
    ensure!(
        lc.stored_events().await?.is_empty(),
        "a refused create stored events"
    );
    ensure!(
        lc.spawned().is_empty(),
        "a refused create spawned a sandbox"
    );

    lc.heal();
    ensure_eq!(ok!(lc.start().await).status, SessionStatus::Provisioning);
    completed_run_on(&mut lc).await?;
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// `create` lands but its answer is lost: the session exists once; creating again is `Conflict`.
async fn lost_create_answer_session_exists_once(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::SessionHost).await?;
    lc.inject_times(entry.op, entry.fault, 1);
    expect_class!(lc.start().await, ErrorClass::Timeout);
    expect_class!(lc.start().await, ErrorClass::Conflict);
    ensure_eq!(
        ok!(lc.info().await).status,
        SessionStatus::Provisioning,
        "info shows the session"
    );
    ensure_eq!(lc.spawned().len(), 1, "the session was started once");
    completed_run_on(&mut lc).await?;
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// `prompt` is refused before reaching the session: nothing is queued; the retry with the same
/// `client_msg_id` queues it once, and a repeat of the retry answers the same run.
async fn refused_prompt_retried_queues_once(entry: CatalogEntry) -> CaseResult {
    let class = class_of(&entry)?;
    let mut lc = Lifecycle::new(PortId::SessionHost).await?;
    ok!(lc.start().await);
    lc.dial_back().await?;
    let before = lc.stored_events().await?;

    lc.inject(entry.op, entry.fault);
    let first_try = lc.mint_run_id();
    expect_class!(
        lc.prompt_as(first_try, "Queue me once", Some("msg-once"))
            .await,
        class
    );
    ensure_eq!(ok!(lc.info().await).queue_length, 0, "nothing is queued");
    ensure_eq!(
        lc.stored_events().await?,
        before,
        "a refused prompt changed the log"
    );
    ensure!(
        lc.runs_sent().is_empty(),
        "a refused prompt reached the sandbox"
    );

    lc.heal();
    let retry = lc.mint_run_id();
    let queued = ok!(lc
        .prompt_as(retry.clone(), "Queue me once", Some("msg-once"))
        .await);
    ensure_eq!(queued.run_id, retry, "the retry is the run");
    let again = lc.mint_run_id();
    ensure_eq!(
        ok!(lc.prompt_as(again, "Queue me once", Some("msg-once")).await).run_id,
        retry,
        "a repeat answers the same run"
    );
    ensure_eq!(lc.play_run().await?.run_id, retry);
    recorded_once(&lc, &retry).await?;
    ensure_eq!(lc.ledger.len(), 1, "the prompt ran once");
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// `prompt` is queued but its answer is lost: the retry with the same `client_msg_id` answers the
/// original run, which runs once.
async fn lost_prompt_answer_queues_once(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::SessionHost).await?;
    ok!(lc.start().await);
    lc.dial_back().await?;
    lc.inject_times(entry.op, entry.fault, 1);
    let original = lc.mint_run_id();
    expect_class!(
        lc.prompt_as(original.clone(), "Queue me once", Some("msg-lost"))
            .await,
        ErrorClass::Timeout
    );
    let retry = lc.mint_run_id();
    ensure_eq!(
        ok!(lc.prompt_as(retry, "Queue me once", Some("msg-lost")).await).run_id,
        original,
        "the retry answers the original run"
    );
    let queued_events = lc
        .stored_events()
        .await?
        .iter()
        .filter(|e| matches!(e.event, Event::RunQueued { .. }))
        .count();
    ensure_eq!(queued_events, 1, "the prompt is queued once");
    ensure_eq!(lc.play_run().await?.run_id, original);
    ensure!(lc.take_run().is_err(), "the prompt was dispatched twice");
    recorded_once(&lc, &original).await?;
    ensure_eq!(lc.ledger.len(), 1);
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// `attach_client` fails while the session moves on: no connection is made; the client
/// reconnects with its last seq and gets every later event once.
async fn client_reconnects_and_misses_nothing(entry: CatalogEntry) -> CaseResult {
    let class = class_of(&entry)?;
    let mut lc = Lifecycle::new(PortId::SessionHost).await?;
    ok!(lc.start().await);
    lc.dial_back().await?;
    ok!(lc.attach_client(0).await);
    let last_seen = lc
        .client_events()
        .last()
        .map(|e| e.seq)
        .ok_or("the client got no events")?;
    lc.detach_client().await;
    let queued = ok!(lc.prompt("While you were away").await);
    lc.play_run().await?;

    lc.inject(entry.op, entry.fault);
    expect_class!(lc.attach_client(last_seen).await, class);
    lc.heal();
    ok!(lc.attach_client(last_seen).await);
    let stored = lc.check_log().await?;
    let got: Vec<u64> = lc.client_events().iter().map(|e| e.seq).collect();
    ensure_eq!(
        got,
        (last_seen + 1..=stored.len() as u64).collect::<Vec<_>>(),
        "the reconnected client gets every later event once"
    );
    ensure!(
        lc.client_events()
            .iter()
            .any(|e| e.run_id.as_ref() == Some(&queued.run_id) && e.critical),
        "including the run's end"
    );
    closes_without_leaks(&mut lc).await
}

/// A dropped sandbox's re-dial fails: nothing changes; it re-dials with the same token within the
/// reconnect grace and the run in flight completes.
async fn sandbox_redials_within_the_grace(entry: CatalogEntry) -> CaseResult {
    let class = class_of(&entry)?;
    let mut lc = Lifecycle::new(PortId::SessionHost).await?;
    ok!(lc.start().await);
    lc.dial_back().await?;
    ok!(lc.attach_client(0).await);
    let queued = ok!(lc.prompt("Survive a reconnect").await);
    let run = lc.take_run()?;
    lc.agent_works(&run.run_id).await?;
    lc.drop_sandbox_socket().await?;
    let before = (ok!(lc.info().await), lc.stored_events().await?);

    lc.inject(entry.op, entry.fault);
    expect_class!(lc.redial().await.map(|_| ()), class);
    ensure_eq!(
        (ok!(lc.info().await), lc.stored_events().await?),
        before,
        "a failed dial-back changed the session"
    );

    lc.heal();
    lc.advance(lc.config().sandbox_reconnect_grace / 2).await?;
    ok!(lc.redial().await);
    lc.agent_finishes(&run.run_id).await?;
    let (status, _, _) = lc.outcome(&queued.run_id).await?;
    ensure_eq!(
        status,
        TerminalStatus::Completed,
        "the run survives the reconnect"
    );
    recorded_once(&lc, &queued.run_id).await?;
    lc.check_log().await?;
    closes_without_leaks(&mut lc).await
}

/// An events page times out: no page is returned; the retry with the same `after` gets every
/// later event once.
async fn events_page_retried_gets_every_event_once(entry: CatalogEntry) -> CaseResult {
    let class = class_of(&entry)?;
    let mut lc = Lifecycle::new(PortId::SessionHost).await?;
    completed_run(&mut lc).await?;
    let stored = lc.check_log().await?;
    let after = 3;
    lc.inject(entry.op, entry.fault);
    expect_class!(
        lc.host.events(&lc.tenant(), &lc.session, after, 1000).await,
        class
    );
    lc.heal();
    let page = ok!(lc.host.events(&lc.tenant(), &lc.session, after, 1000).await);
    ensure_eq!(page.events, stored[after as usize..].to_vec());
    ensure_eq!(page.last_seq, stored.len() as u64);
    Ok(())
}

/// `info` is slow: its answer is still the session's current state.
async fn info_is_current(entry: CatalogEntry) -> CaseResult {
    let mut lc = Lifecycle::new(PortId::SessionHost).await?;
    lc.inject(entry.op, entry.fault);
    let created = ok!(lc.start().await);
    let provisioning = ok!(lc.info().await);
    ensure_eq!(provisioning.status, SessionStatus::Provisioning);
    ensure_eq!(provisioning.created_at, created.created_at);
    completed_run_on(&mut lc).await?;
    let info = ok!(lc.info().await);
    let stored = lc.check_log().await?;
    ensure_eq!(
        (info.status, info.sandbox.status, info.queue_length),
        (SessionStatus::Ready, SandboxStatus::Connected, 0)
    );
    ensure_eq!(
        info.last_seq,
        stored.len() as u64,
        "info names the last stored seq"
    );
    ensure!(lc.injected(entry.op) >= 2, "info was not slowed");
    closes_without_leaks(&mut lc).await
}
