//! Contract cases, fault catalog, `Faulty` wrapper and disruption cases for `AgentDriver`.
//!
//! The cases drive the agent with the script language of `switchboard_fakes::agent_driver` (`hang`,
//! `permission:<tool>`, `tool:<cmd>`, "what did I say first?"): a real driver is checked against a
//! scripted agent that speaks the same language, since a live model can be asked to hang or to
//! request a permission but not relied on to.

use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, FaultPlan, Faulty};
use crate::harness::{self, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use futures::channel::mpsc;
use futures::StreamExt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_adapters::acp_driver::{AcpAgentDriver, AcpConfig};
use switchboard_core::protocol::{
    Event, GatewayConfig, PermissionDecision, TerminalStatus, Turn, TurnRole,
};
use switchboard_core::{ModelRef, RequestId, RunId};
use switchboard_fakes::agent_driver::{script, InMemoryAgentDriver};
use switchboard_ports::agent::{AgentSessionId, AgentStart, AgentUpdate, RestoreMode, TurnOutcome};
use switchboard_ports::error::ErrorClass;
use switchboard_ports::{AgentDriver, AgentDriverError, PortId};

/// What every `AgentDriver` case gets.
pub struct Fixture {
    pub driver: Arc<dyn AgentDriver>,
    /// How to start an agent session (an absolute workspace, a model and its gateway).
    pub start: AgentStart,
}

/// How long a case waits for an update or an outcome before calling the driver stuck.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Every contract case of `AgentDriver`, one per `# Contract` bullet.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "prompt_streams_then_completes",
            run: |f| Box::pin(prompt_streams_then_completes(f)),
        },
        Case {
            name: "turns_keep_context",
            run: |f| Box::pin(turns_keep_context(f)),
        },
        Case {
            name: "cancel_ends_turn",
            run: |f| Box::pin(cancel_ends_turn(f)),
        },
        Case {
            name: "permission_waits_for_decision",
            run: |f| Box::pin(permission_waits_for_decision(f)),
        },
        Case {
            name: "restore_gives_history",
            run: |f| Box::pin(restore_gives_history(f)),
        },
        Case {
            name: "unknown_session_not_found",
            run: |f| Box::pin(unknown_session_not_found(f)),
        },
    ]
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A word no other case uses, to tell conversations apart.
fn unique_word() -> String {
    format!("zephyr{}", UNIQUE.fetch_add(1, Ordering::Relaxed))
}

fn run_id() -> RunId {
    RunId::parse(format!(
        "conf-run-{}",
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ))
    .expect("conf-run-<n> is a valid run id")
}

/// Gives other futures on this task a chance to run.
async fn yield_many(times: usize) {
    for _ in 0..times {
        tokio::task::yield_now().await;
    }
}

/// Every update already sent, without waiting for more.
fn drain(rx: &mut mpsc::UnboundedReceiver<AgentUpdate>) -> Vec<AgentUpdate> {
    let mut out = Vec::new();
    while let Ok(u) = rx.try_recv() {
        out.push(u);
    }
    out
}

/// The reply text: every `message.delta` concatenated.
fn reply_of(updates: &[AgentUpdate]) -> String {
    updates
        .iter()
        .filter_map(|u| match u {
            AgentUpdate::Event(Event::MessageDelta { text }) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// Runs one prompt to its end (within [`PATIENCE`]) and returns its outcome and every update it
/// sent before returning.
async fn prompt_all(
    d: &dyn AgentDriver,
    s: &AgentSessionId,
    text: &str,
) -> Result<(TurnOutcome, Vec<AgentUpdate>), String> {
    let (tx, mut rx) = mpsc::unbounded();
    let outcome = match tokio::time::timeout(PATIENCE, d.prompt(s, &run_id(), text, tx)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => return Err(format!("prompt {text:?} failed: {e}")),
        Err(_) => return Err(format!("prompt {text:?} did not end within {PATIENCE:?}")),
    };
    Ok((outcome, drain(&mut rx)))
}

/// The next update (within [`PATIENCE`]).
async fn next_update(rx: &mut mpsc::UnboundedReceiver<AgentUpdate>) -> Option<AgentUpdate> {
    tokio::time::timeout(PATIENCE, rx.next())
        .await
        .ok()
        .flatten()
}

async fn prompt_streams_then_completes(f: Fixture) -> CaseResult {
    let s = ok!(f.driver.start(&f.start).await);
    let (outcome, updates) = prompt_all(&*f.driver, &s, "hello conformance").await?;
    ensure_eq!(
        outcome.status,
        TerminalStatus::Completed,
        "outcome of a plain prompt ({outcome:?})"
    );
    ensure!(
        !updates.is_empty(),
        "a plain prompt streamed no update before completing"
    );
    ensure!(
        !reply_of(&updates).is_empty(),
        "a plain prompt streamed no message text: {updates:?}"
    );
    ensure!(
        updates.iter().all(|u| matches!(u, AgentUpdate::Event(_))),
        "a plain prompt asked for permission: {updates:?}"
    );
    ensure!(
        outcome.usage.input_tokens > 0 && outcome.usage.output_tokens > 0,
        "a completed turn reported usage {:?}",
        outcome.usage
    );
    ensure!(
        outcome.error.is_none(),
        "a completed turn carried an error: {:?}",
        outcome.error
    );

    // A tool call comes before its result, both before the outcome.
    let (outcome, updates) = prompt_all(&*f.driver, &s, &script::tool("echo conformance")).await?;
    ensure_eq!(
        outcome.status,
        TerminalStatus::Completed,
        "outcome of a tool prompt ({outcome:?})"
    );
    let call = updates
        .iter()
        .position(|u| matches!(u, AgentUpdate::Event(Event::ToolCall { .. })));
    let result = updates
        .iter()
        .position(|u| matches!(u, AgentUpdate::Event(Event::ToolResult { .. })));
    let (Some(call), Some(result)) = (call, result) else {
        return Err(format!(
            "a tool prompt streamed no tool_call and tool_result: {updates:?}"
        ));
    };
    ensure!(
        call < result,
        "the tool_result came before its tool_call: {updates:?}"
    );
    if let (
        AgentUpdate::Event(Event::ToolCall { call_id: a, .. }),
        AgentUpdate::Event(Event::ToolResult { call_id: b, .. }),
    ) = (&updates[call], &updates[result])
    {
        ensure_eq!(a, b, "the tool_result answers another call");
    }
    Ok(())
}

async fn turns_keep_context(f: Fixture) -> CaseResult {
    let word = unique_word();
    let s = ok!(f.driver.start(&f.start).await);
    let (first, _) = prompt_all(&*f.driver, &s, &format!("remember the word {word}")).await?;
    ensure_eq!(first.status, TerminalStatus::Completed, "first turn");
    let (second, updates) = prompt_all(&*f.driver, &s, script::RECALL).await?;
    ensure_eq!(second.status, TerminalStatus::Completed, "second turn");
    let reply = reply_of(&updates);
    ensure!(
        reply.contains(&word),
        "the second turn did not see the first: asked what was said first, replied {reply:?}"
    );
    // Another agent session has its own conversation.
    let other = ok!(f.driver.start(&f.start).await);
    let (_, updates) = prompt_all(&*f.driver, &other, script::RECALL).await?;
    let reply = reply_of(&updates);
    ensure!(
        !reply.contains(&word),
        "a fresh agent session knew another session's turn: {reply:?}"
    );
    Ok(())
}

async fn cancel_ends_turn(f: Fixture) -> CaseResult {
    let s = ok!(f.driver.start(&f.start).await);
    let (tx, mut rx) = mpsc::unbounded();
    let run = run_id();
    let turn = f.driver.prompt(&s, &run, script::HANG, tx);
    let control = async {
        // The first update shows the turn is under way; then cancel it.
        let first = next_update(&mut rx).await;
        let cancelled = f.driver.cancel(&s).await;
        (first, cancelled)
    };
    let Ok((outcome, (first, cancelled))) =
        tokio::time::timeout(PATIENCE, async { tokio::join!(turn, control) }).await
    else {
        return Err(format!("a cancelled turn did not end within {PATIENCE:?}"));
    };
    ensure!(
        first.is_some(),
        "a hanging turn sent no update to show it started"
    );
    ok!(cancelled);
    let outcome = ok!(outcome);
    ensure_eq!(
        outcome.status,
        TerminalStatus::Cancelled,
        "outcome of a cancelled turn ({outcome:?})"
    );
    // The agent session is still usable.
    let (after, _) = prompt_all(&*f.driver, &s, "are you still there").await?;
    ensure_eq!(
        after.status,
        TerminalStatus::Completed,
        "the turn after a cancel"
    );
    Ok(())
}

async fn permission_waits_for_decision(f: Fixture) -> CaseResult {
    let s = ok!(f.driver.start(&f.start).await);
    let tool = "conformance-tool";
    let (tx, mut rx) = mpsc::unbounded();
    let run = run_id();
    let text = script::permission(tool);
    let ended = AtomicBool::new(false);
    let turn = async {
        let outcome = f.driver.prompt(&s, &run, &text, tx).await;
        ended.store(true, Ordering::SeqCst);
        outcome
    };
    let control = async {
        let mut seen = Vec::new();
        let request = loop {
            match next_update(&mut rx).await {
                Some(AgentUpdate::Permission {
                    request_id, tool, ..
                }) => break Some((request_id, tool)),
                Some(other) => seen.push(other),
                None => break None,
            }
        };
        let Some((request_id, asked_for)) = request else {
            // Release a turn that never asked, so the case ends with a clear failure.
            let _ = f.driver.cancel(&s).await;
            return Err(format!("no permission update; saw {seen:?}"));
        };
        yield_many(200).await;
        let ended_early = ended.load(Ordering::SeqCst);
        let decided = f
            .driver
            .decide(&s, &request_id, PermissionDecision::AllowOnce)
            .await;
        Ok((asked_for, ended_early, decided))
    };
    let Ok((outcome, observed)) =
        tokio::time::timeout(PATIENCE, async { tokio::join!(turn, control) }).await
    else {
        return Err(format!(
            "a turn did not end within {PATIENCE:?} of its permission decision"
        ));
    };
    let (asked_for, ended_early, decided) = observed?;
    ensure_eq!(asked_for, tool, "the permission names another tool");
    ensure!(
        !ended_early,
        "the turn ended before its permission request was decided"
    );
    ok!(decided);
    let outcome = ok!(outcome);
    ensure_eq!(
        outcome.status,
        TerminalStatus::Completed,
        "outcome after the permission was granted ({outcome:?})"
    );
    Ok(())
}

async fn restore_gives_history(f: Fixture) -> CaseResult {
    let word = unique_word();
    let s = ok!(f.driver.start(&f.start).await);
    let turns = vec![
        Turn {
            role: TurnRole::User,
            text: format!("the code word is {word}"),
        },
        Turn {
            role: TurnRole::Assistant,
            text: "noted".to_string(),
        },
    ];
    let mode = ok!(f.driver.restore(&s, &turns).await);
    ensure!(
        matches!(mode, RestoreMode::Loaded | RestoreMode::Injected),
        "restore answered {mode:?}"
    );
    let (outcome, updates) = prompt_all(&*f.driver, &s, script::RECALL).await?;
    ensure_eq!(
        outcome.status,
        TerminalStatus::Completed,
        "the first turn after a restore"
    );
    let reply = reply_of(&updates);
    ensure!(
        reply.contains(&word),
        "after restore, asked what was said first, the agent replied {reply:?}"
    );
    Ok(())
}

async fn unknown_session_not_found(f: Fixture) -> CaseResult {
    let unknown = AgentSessionId("conformance-no-such-agent-session".to_string());
    let request = RequestId::parse("conformance-request").map_err(|e| e.to_string())?;
    let (tx, _rx) = mpsc::unbounded();
    expect_class!(
        f.driver.prompt(&unknown, &run_id(), "hello", tx).await,
        ErrorClass::NotFound
    );
    expect_class!(f.driver.cancel(&unknown).await, ErrorClass::NotFound);
    expect_class!(
        f.driver
            .decide(&unknown, &request, PermissionDecision::Deny)
            .await,
        ErrorClass::NotFound
    );
    expect_class!(f.driver.restore(&unknown, &[]).await, ErrorClass::NotFound);
    expect_class!(f.driver.stop(&unknown).await, ErrorClass::NotFound);
    // A stopped session is unknown from then on.
    let s = ok!(f.driver.start(&f.start).await);
    ok!(f.driver.stop(&s).await);
    let (tx, _rx) = mpsc::unbounded();
    expect_class!(
        f.driver.prompt(&s, &run_id(), "hello", tx).await,
        ErrorClass::NotFound
    );
    expect_class!(f.driver.stop(&s).await, ErrorClass::NotFound);
    Ok(())
}

/// How the cases start agent sessions.
pub fn default_start() -> AgentStart {
    AgentStart {
        workspace: "/workspace".to_string(),
        model: ModelRef::parse("anthropic/claude-sonnet-4-5").expect("a valid model ref"),
        gateway: GatewayConfig {
            base_url: "http://127.0.0.1:9/v1".to_string(),
            api_key: Some("sk-conformance".to_string()),
            headers: Default::default(),
        },
    }
}

/// Where cargo puts the `scripted-acp-agent` binary: `target/<profile>/`, the parent of the test
/// executable's `deps` directory. `cargo test --workspace` builds it (the adapters crate's own
/// integration tests need it); `None` when it is not there.
pub fn scripted_acp_agent() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("scripted-acp-agent");
    path.is_file().then_some(path)
}

const NO_SCRIPTED_ACP_AGENT: &str = "the scripted-acp-agent binary is not built next to this \
    test executable (`cargo test --workspace` or `cargo build -p switchboard-adapters --bin \
    scripted-acp-agent` builds it)";

fn scripted_acp_agent_gate() -> Result<(), String> {
    scripted_acp_agent()
        .map(|_| ())
        .ok_or_else(|| NO_SCRIPTED_ACP_AGENT.to_string())
}

/// The fake, and `AcpAgentDriver` driving the scripted ACP agent (a real process over ACP stdio
/// that speaks the fake's script language), working in the temp dir.
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(Fixture {
                driver: Arc::new(InMemoryAgentDriver::new()),
                start: default_start(),
            })
        }),
        Implementation::new("acp_scripted", ImplKind::Adapter, || async {
            let program = scripted_acp_agent().ok_or_else(|| NO_SCRIPTED_ACP_AGENT.to_string())?;
            Ok(Fixture {
                driver: Arc::new(AcpAgentDriver::new(AcpConfig {
                    program: program.to_string_lossy().into_owned(),
                    args: Vec::new(),
                    env: Vec::new(),
                })),
                start: AgentStart {
                    workspace: std::env::temp_dir().to_string_lossy().into_owned(),
                    ..default_start()
                },
            })
        })
        .gated(scripted_acp_agent_gate),
    ]
}

/// What the bridge sees when the agent misbehaves, and what the run does about it.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "start",
        outcome: "no agent session is created; the bridge reports the failure (the run fails, never hangs) and a start after the agent recovers succeeds",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "start",
        outcome: "as for unavailable: no agent session is left half-started, and a later start succeeds",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "prompt",
        outcome: "the prompt fails Unavailable with no update streamed and no turn recorded; the agent session keeps its conversation and answers the next prompt",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "prompt",
        outcome: "the prompt fails Timeout with no update streamed and no turn recorded; the next prompt in the same agent session completes and sees the earlier turns",
    },
    CatalogEntry {
        fault: Fault::Slow,
        op: "prompt",
        outcome: "a slow agent still streams its updates in order and completes the turn with its usage",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "cancel",
        outcome: "the cancel fails Unavailable and the turn keeps running (nothing is half-cancelled); a cancel retried after recovery ends it Cancelled",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "decide",
        outcome: "the decision is not delivered and the turn keeps waiting (the session's permission deadline still bounds it); a decide retried after recovery releases it",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "restore",
        outcome: "the replacement agent is left with no partial history; a restore retried after recovery gives it every turn",
    },
    CatalogEntry {
        fault: Fault::LostAnswer,
        op: "restore",
        outcome: "the turns were restored but the caller saw Timeout; the retried restore leaves each turn in the conversation exactly once",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "stop",
        outcome: "the stop fails Unavailable and the agent session stays live and usable; a stop retried after recovery ends it",
    },
];

/// Every call goes through the plan (op names are the trait's method names).
#[async_trait]
impl AgentDriver for Faulty<dyn AgentDriver> {
    async fn start(&self, start: &AgentStart) -> Result<AgentSessionId, AgentDriverError> {
        self.call("start", || self.inner.start(start)).await
    }

    async fn prompt(
        &self,
        session: &AgentSessionId,
        run_id: &RunId,
        text: &str,
        updates: mpsc::UnboundedSender<AgentUpdate>,
    ) -> Result<TurnOutcome, AgentDriverError> {
        self.call("prompt", || {
            self.inner.prompt(session, run_id, text, updates)
        })
        .await
    }

    async fn cancel(&self, session: &AgentSessionId) -> Result<(), AgentDriverError> {
        self.call("cancel", || self.inner.cancel(session)).await
    }

    async fn decide(
        &self,
        session: &AgentSessionId,
        request_id: &RequestId,
        decision: PermissionDecision,
    ) -> Result<(), AgentDriverError> {
        self.call("decide", || {
            self.inner.decide(session, request_id, decision)
        })
        .await
    }

    async fn restore(
        &self,
        session: &AgentSessionId,
        turns: &[Turn],
    ) -> Result<RestoreMode, AgentDriverError> {
        self.call("restore", || self.inner.restore(session, turns))
            .await
    }

    async fn stop(&self, session: &AgentSessionId) -> Result<(), AgentDriverError> {
        self.call("stop", || self.inner.stop(session)).await
    }
}

/// The suite of `AgentDriver`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::AgentDriver, cases(), implementations(), CATALOG)
}

/// Runs every `AgentDriver` case against an adapter's fixtures.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    harness::check(PortId::AgentDriver, name, make, &cases())
}

// ----- disruptions ----------------------------------------------------------------------------

/// The fake behind a `Faulty` wrapper: `faulty` is what the caller uses, `fake` is read un-faulted.
struct Rig {
    fake: Arc<InMemoryAgentDriver>,
    faulty: Faulty<dyn AgentDriver>,
    plan: FaultPlan,
}

impl Rig {
    fn new() -> Self {
        let fake = Arc::new(InMemoryAgentDriver::new());
        let plan = FaultPlan::off();
        let faulty = Faulty::new(fake.clone() as Arc<dyn AgentDriver>, plan.clone());
        Rig { fake, faulty, plan }
    }

    /// Starts injecting `fault` into every call of `op`.
    fn fail(&self, op: &str, fault: Fault) {
        self.plan.set(FaultPlan::always(op, fault));
    }
}

/// The class a fault makes the caller see (`Slow` is a success).
fn class_of(fault: Fault) -> ErrorClass {
    fault.class().unwrap_or(ErrorClass::Timeout)
}

/// `start` fails: no session exists; after healing, start works.
async fn disrupt_start(fault: Fault) -> CaseResult {
    let rig = Rig::new();
    rig.fail("start", fault);
    expect_class!(rig.faulty.start(&default_start()).await, class_of(fault));
    ensure_eq!(
        rig.fake.session_count(),
        0,
        "agent sessions after a failed start"
    );
    rig.plan.heal();
    let s = ok!(rig.faulty.start(&default_start()).await);
    ensure_eq!(
        rig.fake.session_count(),
        1,
        "agent sessions after the healed start"
    );
    let (outcome, _) = prompt_all(&rig.faulty, &s, "hello after recovery").await?;
    ensure_eq!(
        outcome.status,
        TerminalStatus::Completed,
        "the first turn after recovery"
    );
    Ok(())
}

/// `prompt` fails: no update, no turn recorded; after healing, the conversation continues intact.
async fn disrupt_prompt(fault: Fault) -> CaseResult {
    let rig = Rig::new();
    let word = unique_word();
    let s = ok!(rig.faulty.start(&default_start()).await);
    prompt_all(&rig.faulty, &s, &format!("remember the word {word}")).await?;
    let before = rig.fake.conversation(&s);
    rig.fail("prompt", fault);
    let (tx, mut rx) = mpsc::unbounded();
    expect_class!(
        rig.faulty.prompt(&s, &run_id(), "lost words", tx).await,
        class_of(fault)
    );
    ensure_eq!(
        drain(&mut rx),
        Vec::<AgentUpdate>::new(),
        "updates of a failed prompt"
    );
    ensure_eq!(
        rig.fake.conversation(&s),
        before,
        "the conversation after a failed prompt"
    );
    ensure!(
        !rig.fake.in_turn(&s),
        "a failed prompt left a turn in progress"
    );
    rig.plan.heal();
    let (outcome, updates) = prompt_all(&rig.faulty, &s, script::RECALL).await?;
    ensure_eq!(
        outcome.status,
        TerminalStatus::Completed,
        "the turn after recovery"
    );
    let reply = reply_of(&updates);
    ensure!(
        reply.contains(&word) && !reply.contains("lost words"),
        "after recovery the agent replied {reply:?}"
    );
    Ok(())
}

/// A slow prompt still streams in order and completes.
async fn disrupt_slow_prompt() -> CaseResult {
    let rig = Rig::new();
    let s = ok!(rig.faulty.start(&default_start()).await);
    rig.fail("prompt", Fault::Slow);
    let (outcome, updates) = prompt_all(&rig.faulty, &s, &script::tool("ls")).await?;
    ensure_eq!(outcome.status, TerminalStatus::Completed, "a slow turn");
    ensure!(
        outcome.usage.output_tokens > 0,
        "a slow turn lost its usage: {:?}",
        outcome.usage
    );
    let kinds: Vec<&str> = updates
        .iter()
        .map(|u| match u {
            AgentUpdate::Event(e) => e.type_name(),
            AgentUpdate::Permission { .. } => "permission",
        })
        .collect();
    ensure!(
        kinds.len() >= 3 && kinds[0] == "tool_call" && kinds[1] == "tool_result",
        "a slow turn streamed {kinds:?}"
    );
    ensure!(
        kinds[2..].iter().all(|k| *k == "message.delta"),
        "a slow turn streamed {kinds:?}"
    );
    ensure_eq!(rig.plan.injected().len(), 1, "faults injected");
    Ok(())
}

/// `cancel` fails: the turn keeps running; a retried cancel after healing ends it.
async fn disrupt_cancel(fault: Fault) -> CaseResult {
    let rig = Rig::new();
    let s = ok!(rig.faulty.start(&default_start()).await);
    rig.fail("cancel", fault);
    let (tx, mut rx) = mpsc::unbounded();
    let run = run_id();
    let turn = rig.faulty.prompt(&s, &run, script::HANG, tx);
    let control = async {
        let started = next_update(&mut rx).await.is_some();
        let failed = rig.faulty.cancel(&s).await;
        yield_many(50).await;
        let still_running = rig.fake.in_turn(&s);
        rig.plan.heal();
        let retried = rig.faulty.cancel(&s).await;
        (started, failed, still_running, retried)
    };
    let Ok((outcome, (started, failed, still_running, retried))) =
        tokio::time::timeout(PATIENCE, async { tokio::join!(turn, control) }).await
    else {
        return Err("the turn did not end after the healed cancel".into());
    };
    ensure!(started, "the hanging turn sent no update");
    expect_class!(failed, class_of(fault));
    ensure!(still_running, "a failed cancel ended the turn anyway");
    ok!(retried);
    ensure_eq!(
        ok!(outcome).status,
        TerminalStatus::Cancelled,
        "the turn after the retried cancel"
    );
    Ok(())
}

/// `decide` fails: the turn keeps waiting; a retried decide after healing releases it.
async fn disrupt_decide(fault: Fault) -> CaseResult {
    let rig = Rig::new();
    let s = ok!(rig.faulty.start(&default_start()).await);
    rig.fail("decide", fault);
    let (tx, mut rx) = mpsc::unbounded();
    let run = run_id();
    let text = script::permission("bash");
    let turn = rig.faulty.prompt(&s, &run, &text, tx);
    let control = async {
        let Some(AgentUpdate::Permission { request_id, .. }) = next_update(&mut rx).await else {
            let _ = rig.fake.cancel(&s).await;
            return Err("no permission update".to_string());
        };
        let failed = rig
            .faulty
            .decide(&s, &request_id, PermissionDecision::AllowOnce)
            .await;
        yield_many(50).await;
        let still_waiting = rig.fake.in_turn(&s);
        rig.plan.heal();
        let retried = rig
            .faulty
            .decide(&s, &request_id, PermissionDecision::AllowOnce)
            .await;
        Ok((failed, still_waiting, retried))
    };
    let Ok((outcome, observed)) =
        tokio::time::timeout(PATIENCE, async { tokio::join!(turn, control) }).await
    else {
        return Err("the turn did not end after the healed decide".into());
    };
    let (failed, still_waiting, retried) = observed?;
    expect_class!(failed, class_of(fault));
    ensure!(still_waiting, "a failed decide released the turn anyway");
    ok!(retried);
    ensure_eq!(
        ok!(outcome).status,
        TerminalStatus::Completed,
        "the turn after the retried decide"
    );
    Ok(())
}

fn restored_turns(word: &str) -> Vec<Turn> {
    vec![
        Turn {
            role: TurnRole::User,
            text: format!("the code word is {word}"),
        },
        Turn {
            role: TurnRole::Assistant,
            text: "noted".to_string(),
        },
    ]
}

/// `restore` fails (or its answer is lost): no partial or duplicated history; a retry restores once.
async fn disrupt_restore(fault: Fault) -> CaseResult {
    let rig = Rig::new();
    let word = unique_word();
    let turns = restored_turns(&word);
    let s = ok!(rig.faulty.start(&default_start()).await);
    rig.fail("restore", fault);
    expect_class!(rig.faulty.restore(&s, &turns).await, class_of(fault));
    let after_fault = rig.fake.conversation(&s).unwrap_or_default();
    if fault == Fault::LostAnswer {
        ensure_eq!(
            after_fault,
            turns,
            "a restore whose answer was lost still took effect once"
        );
    } else {
        ensure_eq!(
            after_fault,
            Vec::<Turn>::new(),
            "the conversation after a failed restore"
        );
    }
    rig.plan.heal();
    ok!(rig.faulty.restore(&s, &turns).await);
    ensure_eq!(
        rig.fake.conversation(&s).unwrap_or_default(),
        turns,
        "the conversation after the retried restore"
    );
    let (_, updates) = prompt_all(&rig.faulty, &s, script::RECALL).await?;
    ensure!(
        reply_of(&updates).contains(&word),
        "the restored agent does not know the code word"
    );
    Ok(())
}

/// `stop` fails: the session stays live; a retried stop ends it.
async fn disrupt_stop(fault: Fault) -> CaseResult {
    let rig = Rig::new();
    let s = ok!(rig.faulty.start(&default_start()).await);
    rig.fail("stop", fault);
    expect_class!(rig.faulty.stop(&s).await, class_of(fault));
    ensure_eq!(
        rig.fake.session_count(),
        1,
        "agent sessions after a failed stop"
    );
    let (outcome, _) = prompt_all(&rig.faulty, &s, "still here").await?;
    ensure_eq!(
        outcome.status,
        TerminalStatus::Completed,
        "a turn after a failed stop"
    );
    rig.plan.heal();
    ok!(rig.faulty.stop(&s).await);
    ensure_eq!(
        rig.fake.session_count(),
        0,
        "agent sessions after the retried stop"
    );
    Ok(())
}

/// The flow that exercises one catalog entry.
async fn disrupt(entry: CatalogEntry) -> CaseResult {
    match (entry.op, entry.fault) {
        ("start", f) => disrupt_start(f).await,
        ("prompt", Fault::Slow) => disrupt_slow_prompt().await,
        ("prompt", f) => disrupt_prompt(f).await,
        ("cancel", f) => disrupt_cancel(f).await,
        ("decide", f) => disrupt_decide(f).await,
        ("restore", f) => disrupt_restore(f).await,
        ("stop", f) => disrupt_stop(f).await,
        (op, f) => Err(format!("no disruption flow for {}@{op}", f.name())),
    }
}

/// One disruption case per catalog entry, each through `Faulty` around the fake.
pub fn disruptions() -> Vec<DisruptionCase> {
    crate::disruption::per_entry(PortId::AgentDriver, CATALOG, |entry| {
        Box::pin(disrupt(entry))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_an_agent_that_forgets() {
        /// Forgets everything: every prompt goes to a brand-new agent session (cancel and decide
        /// follow it there, so only the context cases can fail).
        struct Forgetful(
            InMemoryAgentDriver,
            std::sync::Mutex<Option<AgentSessionId>>,
        );
        impl Forgetful {
            fn current(&self, s: &AgentSessionId) -> AgentSessionId {
                self.1.lock().unwrap().clone().unwrap_or_else(|| s.clone())
            }
        }
        #[async_trait]
        impl AgentDriver for Forgetful {
            async fn start(&self, start: &AgentStart) -> Result<AgentSessionId, AgentDriverError> {
                self.0.start(start).await
            }
            async fn prompt(
                &self,
                _: &AgentSessionId,
                run: &RunId,
                text: &str,
                updates: mpsc::UnboundedSender<AgentUpdate>,
            ) -> Result<TurnOutcome, AgentDriverError> {
                let fresh = self.0.start(&default_start()).await?;
                *self.1.lock().unwrap() = Some(fresh.clone());
                self.0.prompt(&fresh, run, text, updates).await
            }
            async fn cancel(&self, s: &AgentSessionId) -> Result<(), AgentDriverError> {
                self.0.cancel(&self.current(s)).await
            }
            async fn decide(
                &self,
                s: &AgentSessionId,
                r: &RequestId,
                d: PermissionDecision,
            ) -> Result<(), AgentDriverError> {
                self.0.decide(&self.current(s), r, d).await
            }
            async fn restore(
                &self,
                s: &AgentSessionId,
                t: &[Turn],
            ) -> Result<RestoreMode, AgentDriverError> {
                self.0.restore(s, t).await
            }
            async fn stop(&self, s: &AgentSessionId) -> Result<(), AgentDriverError> {
                self.0.stop(s).await
            }
        }
        let report = check("forgetful", || async {
            Ok(Fixture {
                driver: Arc::new(Forgetful(InMemoryAgentDriver::new(), Default::default())),
                start: default_start(),
            })
        });
        let failed: Vec<&str> = report.failures().iter().map(|(n, _)| *n).collect();
        assert!(
            failed.contains(&"agent_driver::forgetful::turns_keep_context"),
            "{failed:?}"
        );
        assert!(
            failed.contains(&"agent_driver::forgetful::restore_gives_history"),
            "{failed:?}"
        );
    }
}
