//! `InMemoryAgentDriver`: a scripted coding agent that keeps each agent session's conversation and
//! answers prompts by a tiny, deterministic script language (no model, no process, no IO).
//!
//! # The script language
//!
//! A prompt is matched against these rules, first match wins:
//!
//! 1. **`hang`** (a whitespace-separated word): the agent emits one `thought.delta`
//!    ("waiting until cancelled") and then waits until [`AgentDriver::cancel`] (or `stop`) ends the
//!    turn `Cancelled` with stop reason `"cancelled"`.
//! 2. **`permission:<tool>`** (a word): the agent raises [`AgentUpdate::Permission`] with request id
//!    `perm-<n>`, tool `<tool>` and input `{"tool": "<tool>"}`, and waits for
//!    [`AgentDriver::decide`] (or `cancel`). Allowed: it emits `tool_call {name: <tool>}` and an `ok`
//!    `tool_result`, then replies `permission granted for <tool>`. Denied: it replies
//!    `permission denied for <tool>`.
//! 3. **`tool:<cmd>`** (`<cmd>` is the rest of the prompt after the marker): the agent emits
//!    `tool_call {name: "bash", input: {"command": <cmd>}}` and an `ok` `tool_result` whose output is
//!    `{"stdout": "fake output of `<cmd>`", "exit_code": 0}`; nothing is executed. It then replies
//!    `ran <cmd>`.
//! 4. **`what did I say first`** (anywhere, any case): the agent replies `you first said: <text>`,
//!    quoting the first user turn of the conversation (restored turns included), or
//!    `you have not said anything before`.
//! 5. **anything else**: the agent replies `echo: <prompt>`.
//!
//! A reply is streamed as up to three `message.delta` chunks whose concatenation is the reply. A
//! turn that is not cancelled ends `Completed` with stop reason `"end_turn"` and usage
//! `{input_tokens: words in the conversation including this prompt, output_tokens: words in the
//! reply}`. The prompt becomes a user turn of the conversation as soon as the turn starts; the reply
//! becomes an assistant turn when the turn completes.
//!
//! Honest to the contract: one turn at a time per agent session (a second concurrent `prompt` is
//! `Conflict`); `cancel` with no turn in progress does nothing; `decide` on a request the turn is not
//! waiting for is `NotFound`; `restore` replaces the conversation (so retrying it does not duplicate
//! turns) and answers [`RestoreMode::Injected`]; after `stop`, every call naming the session is
//! `NotFound` and a waiting turn ends `Cancelled`.

use async_trait::async_trait;
use futures::channel::mpsc;
use futures::future::{select, Either};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use switchboard_core::protocol::{
    Event, PermissionDecision, TerminalStatus, ToolStatus, Turn, TurnRole, Usage,
};
use switchboard_core::{CallId, RequestId, RunId};
use switchboard_ports::agent::{AgentSessionId, AgentStart, AgentUpdate, RestoreMode, TurnOutcome};
use switchboard_ports::{AgentDriver, AgentDriverError};
use tokio::sync::oneshot;

/// Builders of prompts in the script language (see the module docs), for tests.
pub use switchboard_ports::agent_script as script;
use switchboard_ports::agent_script::{chunks, parse, words, Step};

/// What the turn is waiting for, if anything.
struct ActiveTurn {
    id: u64,
    cancel: Option<oneshot::Sender<()>>,
    permissions: HashMap<RequestId, oneshot::Sender<PermissionDecision>>,
}

struct AgentSession {
    start: AgentStart,
    turns: Vec<Turn>,
    turn: Option<ActiveTurn>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    sessions: HashMap<AgentSessionId, AgentSession>,
}

impl Inner {
    fn next(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn session(&mut self, id: &AgentSessionId) -> Result<&mut AgentSession, AgentDriverError> {
        self.sessions
            .get_mut(id)
            .ok_or_else(|| AgentDriverError::NotFound(format!("no agent session {:?}", id.0)))
    }
}

/// A scripted agent: see the module docs for its script language.
#[derive(Default)]
pub struct InMemoryAgentDriver {
    inner: Mutex<Inner>,
}

/// Clears the session's active turn when the prompt ends, however it ends (even if its future is
/// dropped mid-turn), so a session is never stuck "in a turn".
struct TurnGuard<'a> {
    inner: &'a Mutex<Inner>,
    session: AgentSessionId,
    turn: u64,
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(s) = inner.sessions.get_mut(&self.session) {
            if s.turn.as_ref().is_some_and(|t| t.id == self.turn) {
                s.turn = None;
            }
        }
    }
}

fn send(updates: &mpsc::UnboundedSender<AgentUpdate>, event: Event) {
    // A caller that stopped listening does not stop the agent.
    let _ = updates.unbounded_send(AgentUpdate::Event(event));
}

impl InMemoryAgentDriver {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many agent sessions are live (started and not stopped).
    pub fn session_count(&self) -> usize {
        self.inner.lock().unwrap().sessions.len()
    }

    /// The conversation of an agent session, `None` when it is unknown.
    pub fn conversation(&self, session: &AgentSessionId) -> Option<Vec<Turn>> {
        self.inner
            .lock()
            .unwrap()
            .sessions
            .get(session)
            .map(|s| s.turns.clone())
    }

    /// How the agent session was started (its workspace, model and gateway), `None` when unknown.
    pub fn started_with(&self, session: &AgentSessionId) -> Option<AgentStart> {
        self.inner
            .lock()
            .unwrap()
            .sessions
            .get(session)
            .map(|s| s.start.clone())
    }

    /// Whether a turn is in progress in the session.
    pub fn in_turn(&self, session: &AgentSessionId) -> bool {
        self.inner
            .lock()
            .unwrap()
            .sessions
            .get(session)
            .is_some_and(|s| s.turn.is_some())
    }

    fn cancelled(input_tokens: u64) -> TurnOutcome {
        TurnOutcome {
            status: TerminalStatus::Cancelled,
            stop_reason: Some("cancelled".to_string()),
            usage: Usage {
                input_tokens,
                output_tokens: 0,
            },
            error: None,
        }
    }
}

#[async_trait]
impl AgentDriver for InMemoryAgentDriver {
    async fn start(&self, start: &AgentStart) -> Result<AgentSessionId, AgentDriverError> {
        if !start.workspace.starts_with('/') {
            return Err(AgentDriverError::Invalid(format!(
                "workspace {:?} is not an absolute path",
                start.workspace
            )));
        }
        let mut inner = self.inner.lock().unwrap();
        let id = AgentSessionId(format!("agent-session-{}", inner.next()));
        inner.sessions.insert(
            id.clone(),
            AgentSession {
                start: start.clone(),
                turns: Vec::new(),
                turn: None,
            },
        );
        Ok(id)
    }

    async fn prompt(
        &self,
        session: &AgentSessionId,
        _run_id: &RunId,
        text: &str,
        updates: mpsc::UnboundedSender<AgentUpdate>,
    ) -> Result<TurnOutcome, AgentDriverError> {
        let step = parse(text);
        let (turn_id, cancel_rx, input_tokens, first_said) = {
            let mut inner = self.inner.lock().unwrap();
            let turn_id = inner.next();
            let s = inner.session(session)?;
            if s.turn.is_some() {
                return Err(AgentDriverError::Conflict(format!(
                    "agent session {:?} is already in a turn",
                    session.0
                )));
            }
            let (cancel_tx, cancel_rx) = oneshot::channel();
            s.turn = Some(ActiveTurn {
                id: turn_id,
                cancel: Some(cancel_tx),
                permissions: HashMap::new(),
            });
            let first_said = s
                .turns
                .iter()
                .find(|t| t.role == TurnRole::User)
                .map(|t| t.text.clone());
            s.turns.push(Turn {
                role: TurnRole::User,
                text: text.to_string(),
            });
            let input_tokens = s.turns.iter().map(|t| words(&t.text)).sum::<u64>();
            (turn_id, cancel_rx, input_tokens, first_said)
        };
        let _guard = TurnGuard {
            inner: &self.inner,
            session: session.clone(),
            turn: turn_id,
        };

        let reply = match step {
            Step::Hang => {
                send(
                    &updates,
                    Event::ThoughtDelta {
                        text: "waiting until cancelled".to_string(),
                    },
                );
                // Sent or dropped (the session was stopped): either way the turn is over.
                let _ = cancel_rx.await;
                return Ok(Self::cancelled(input_tokens));
            }
            Step::Permission(tool) => {
                let (request_id, decision_rx) = {
                    let mut inner = self.inner.lock().unwrap();
                    let request_id = RequestId::parse(format!("perm-{}", inner.next()))
                        .expect("perm-<n> is a valid request id");
                    let (tx, rx) = oneshot::channel();
                    match inner
                        .sessions
                        .get_mut(session)
                        .and_then(|s| s.turn.as_mut())
                        .filter(|t| t.id == turn_id)
                    {
                        Some(turn) => turn.permissions.insert(request_id.clone(), tx),
                        None => return Ok(Self::cancelled(input_tokens)),
                    };
                    (request_id, rx)
                };
                let input = json!({ "tool": tool });
                let _ = updates.unbounded_send(AgentUpdate::Permission {
                    request_id,
                    tool: tool.clone(),
                    input: input.clone(),
                });
                match select(cancel_rx, decision_rx).await {
                    Either::Left(_) | Either::Right((Err(_), _)) => {
                        return Ok(Self::cancelled(input_tokens))
                    }
                    Either::Right((Ok(PermissionDecision::Deny), _)) => {
                        format!("permission denied for {tool}")
                    }
                    Either::Right((
                        Ok(PermissionDecision::AllowOnce | PermissionDecision::AllowAlways),
                        _,
                    )) => {
                        let call_id =
                            CallId::parse(format!("call-{}", self.inner.lock().unwrap().next()))
                                .expect("call-<n> is a valid call id");
                        send(
                            &updates,
                            Event::ToolCall {
                                call_id: call_id.clone(),
                                name: tool.clone(),
                                input,
                            },
                        );
                        send(
                            &updates,
                            Event::ToolResult {
                                call_id,
                                status: ToolStatus::Ok,
                                output: json!({ "stdout": format!("fake output of {tool}") }),
                            },
                        );
                        format!("permission granted for {tool}")
                    }
                }
            }
            Step::Tool(cmd) => {
                let call_id = CallId::parse(format!("call-{}", self.inner.lock().unwrap().next()))
                    .expect("call-<n> is a valid call id");
                send(
                    &updates,
                    Event::ToolCall {
                        call_id: call_id.clone(),
                        name: "bash".to_string(),
                        input: json!({ "command": cmd }),
                    },
                );
                send(
                    &updates,
                    Event::ToolResult {
                        call_id,
                        status: ToolStatus::Ok,
                        output: json!({ "stdout": format!("fake output of `{cmd}`"), "exit_code": 0 }),
                    },
                );
                format!("ran {cmd}")
            }
            Step::Recall => match first_said {
                Some(first) => format!("you first said: {first}"),
                None => "you have not said anything before".to_string(),
            },
            Step::Echo => format!("echo: {text}"),
        };

        for chunk in chunks(&reply) {
            send(&updates, Event::MessageDelta { text: chunk });
        }
        {
            let mut inner = self.inner.lock().unwrap();
            if let Some(s) = inner.sessions.get_mut(session) {
                s.turns.push(Turn {
                    role: TurnRole::Assistant,
                    text: reply.clone(),
                });
            }
        }
        Ok(TurnOutcome {
            status: TerminalStatus::Completed,
            stop_reason: Some("end_turn".to_string()),
            usage: Usage {
                input_tokens,
                output_tokens: words(&reply),
            },
            error: None,
        })
    }

    async fn cancel(&self, session: &AgentSessionId) -> Result<(), AgentDriverError> {
        let mut inner = self.inner.lock().unwrap();
        let s = inner.session(session)?;
        if let Some(tx) = s.turn.as_mut().and_then(|t| t.cancel.take()) {
            let _ = tx.send(());
        }
        Ok(())
    }

    async fn decide(
        &self,
        session: &AgentSessionId,
        request_id: &RequestId,
        decision: PermissionDecision,
    ) -> Result<(), AgentDriverError> {
        let mut inner = self.inner.lock().unwrap();
        let s = inner.session(session)?;
        let tx = s
            .turn
            .as_mut()
            .and_then(|t| t.permissions.remove(request_id))
            .ok_or_else(|| {
                AgentDriverError::NotFound(format!(
                    "agent session {:?} is not waiting for permission request {request_id}",
                    session.0
                ))
            })?;
        // The turn may have been cancelled meanwhile; the decision then has nobody to answer.
        let _ = tx.send(decision);
        Ok(())
    }

    async fn restore(
        &self,
        session: &AgentSessionId,
        turns: &[Turn],
    ) -> Result<RestoreMode, AgentDriverError> {
        let mut inner = self.inner.lock().unwrap();
        let s = inner.session(session)?;
        if s.turn.is_some() {
            return Err(AgentDriverError::Conflict(format!(
                "agent session {:?} is in a turn; restore before prompting",
                session.0
            )));
        }
        s.turns = turns.to_vec();
        Ok(RestoreMode::Injected)
    }

    async fn stop(&self, session: &AgentSessionId) -> Result<(), AgentDriverError> {
        let mut inner = self.inner.lock().unwrap();
        // Dropping the session drops its turn's senders, which ends a waiting turn `Cancelled`.
        inner
            .sessions
            .remove(session)
            .map(|_| ())
            .ok_or_else(|| AgentDriverError::NotFound(format!("no agent session {:?}", session.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::Arc;
    use switchboard_core::protocol::GatewayConfig;
    use switchboard_core::ModelRef;
    use switchboard_ports::error::ErrorClass;
    use switchboard_ports::Classify;

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

    fn start() -> AgentStart {
        AgentStart {
            workspace: "/workspace".to_string(),
            model: ModelRef::parse("anthropic/claude-sonnet-4-5").unwrap(),
            gateway: GatewayConfig {
                base_url: "https://api.anthropic.com/v1".into(),
                api_key: Some("sk-test".into()),
                headers: Default::default(),
            },
        }
    }

    fn run() -> &'static RunId {
        static RUN: std::sync::OnceLock<RunId> = std::sync::OnceLock::new();
        RUN.get_or_init(|| RunId::parse("run-1").unwrap())
    }

    /// Runs a prompt to its end and returns its outcome and every update.
    async fn prompt_all(
        d: &InMemoryAgentDriver,
        s: &AgentSessionId,
        text: &str,
    ) -> (TurnOutcome, Vec<AgentUpdate>) {
        let (tx, rx) = mpsc::unbounded();
        let outcome = d.prompt(s, run(), text, tx).await.unwrap();
        (outcome, rx.collect().await)
    }

    fn reply_of(updates: &[AgentUpdate]) -> String {
        updates
            .iter()
            .filter_map(|u| match u {
                AgentUpdate::Event(Event::MessageDelta { text }) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn echo_streams_in_chunks_then_completes_with_word_usage() {
        let d = InMemoryAgentDriver::new();
        block_on(async {
            let s = d.start(&start()).await.unwrap();
            let (outcome, updates) = prompt_all(&d, &s, "hello there").await;
            assert_eq!(updates.len(), 3, "three chunks: {updates:?}");
            assert_eq!(reply_of(&updates), "echo: hello there");
            assert_eq!(outcome.status, TerminalStatus::Completed);
            assert_eq!(outcome.stop_reason.as_deref(), Some("end_turn"));
            assert_eq!(
                outcome.usage,
                Usage {
                    input_tokens: 2,
                    output_tokens: 3
                }
            );
        });
    }

    #[test]
    fn second_prompt_sees_the_first_and_sessions_are_separate() {
        let d = InMemoryAgentDriver::new();
        block_on(async {
            let s = d.start(&start()).await.unwrap();
            prompt_all(&d, &s, "my name is Ada").await;
            let (outcome, updates) = prompt_all(&d, &s, script::RECALL).await;
            assert_eq!(reply_of(&updates), "you first said: my name is Ada");
            // "my name is Ada" (4) + "echo: my name is Ada" (5) + "what did I say first?" (5).
            assert_eq!(outcome.usage.input_tokens, 14);
            let other = d.start(&start()).await.unwrap();
            let (_, updates) = prompt_all(&d, &other, script::RECALL).await;
            assert_eq!(reply_of(&updates), "you have not said anything before");
            assert_eq!(d.conversation(&s).unwrap().len(), 4);
        });
    }

    #[test]
    fn tool_prompt_emits_call_then_result_without_running_anything() {
        let d = InMemoryAgentDriver::new();
        block_on(async {
            let s = d.start(&start()).await.unwrap();
            let (outcome, updates) = prompt_all(&d, &s, "please tool:ls -la").await;
            let (call, result) = match (&updates[0], &updates[1]) {
                (
                    AgentUpdate::Event(Event::ToolCall {
                        call_id,
                        name,
                        input,
                    }),
                    AgentUpdate::Event(Event::ToolResult {
                        call_id: r,
                        status,
                        output,
                    }),
                ) => {
                    assert_eq!(name, "bash");
                    assert_eq!(input, &json!({"command": "ls -la"}));
                    assert_eq!(*status, ToolStatus::Ok);
                    assert_eq!(output["stdout"], "fake output of `ls -la`");
                    (call_id.clone(), r.clone())
                }
                other => panic!("expected tool_call then tool_result, got {other:?}"),
            };
            assert_eq!(call, result);
            assert_eq!(reply_of(&updates), "ran ls -la");
            assert_eq!(outcome.status, TerminalStatus::Completed);
        });
    }

    #[test]
    fn hang_waits_for_cancel_and_refuses_a_concurrent_prompt() {
        let d = InMemoryAgentDriver::new();
        block_on(async {
            let s = d.start(&start()).await.unwrap();
            let (tx, mut rx) = mpsc::unbounded();
            let turn = d.prompt(&s, run(), "please hang", tx);
            let control = async {
                let first = rx.next().await;
                assert!(
                    matches!(first, Some(AgentUpdate::Event(Event::ThoughtDelta { .. }))),
                    "{first:?}"
                );
                assert!(d.in_turn(&s));
                let (tx2, _rx2) = mpsc::unbounded();
                let busy = d.prompt(&s, run(), "hello", tx2).await.unwrap_err();
                assert_eq!(busy.class(), ErrorClass::Conflict);
                d.cancel(&s).await.unwrap();
            };
            let (outcome, ()) = futures::join!(turn, control);
            let outcome = outcome.unwrap();
            assert_eq!(outcome.status, TerminalStatus::Cancelled);
            assert_eq!(outcome.stop_reason.as_deref(), Some("cancelled"));
            assert!(!d.in_turn(&s));
            let (after, _) = prompt_all(&d, &s, "still there?").await;
            assert_eq!(after.status, TerminalStatus::Completed);
            d.cancel(&s).await.unwrap();
        });
    }

    #[test]
    fn permission_waits_for_the_decision() {
        let d = InMemoryAgentDriver::new();
        block_on(async {
            let s = d.start(&start()).await.unwrap();
            for (decision, reply) in [
                (PermissionDecision::AllowOnce, "permission granted for edit"),
                (PermissionDecision::Deny, "permission denied for edit"),
            ] {
                let (tx, mut rx) = mpsc::unbounded();
                let text = script::permission("edit");
                let turn = d.prompt(&s, run(), &text, tx);
                let control = async {
                    let Some(AgentUpdate::Permission {
                        request_id, tool, ..
                    }) = rx.next().await
                    else {
                        panic!("expected a permission update first");
                    };
                    assert_eq!(tool, "edit");
                    assert!(d.in_turn(&s), "the turn waits");
                    let perm_none = RequestId::parse("perm-none").unwrap();
                    let unknown = d.decide(&s, &perm_none, decision).await.unwrap_err();
                    assert_eq!(unknown.class(), ErrorClass::NotFound);
                    d.decide(&s, &request_id, decision).await.unwrap();
                    let again = d.decide(&s, &request_id, decision).await.unwrap_err();
                    assert_eq!(
                        again.class(),
                        ErrorClass::NotFound,
                        "a request is answered once"
                    );
                    rx
                };
                let (outcome, rx) = futures::join!(turn, control);
                assert_eq!(outcome.unwrap().status, TerminalStatus::Completed);
                let rest: Vec<AgentUpdate> = rx.collect().await;
                assert_eq!(reply_of(&rest), reply);
                let ran_tool = rest
                    .iter()
                    .any(|u| matches!(u, AgentUpdate::Event(Event::ToolCall { .. })));
                assert_eq!(ran_tool, decision != PermissionDecision::Deny);
            }
        });
    }

    #[test]
    fn stop_ends_a_waiting_turn_and_forgets_the_session() {
        let d = InMemoryAgentDriver::new();
        block_on(async {
            let s = d.start(&start()).await.unwrap();
            let (tx, mut rx) = mpsc::unbounded();
            let text = script::permission("bash");
            let turn = d.prompt(&s, run(), &text, tx);
            let control = async {
                assert!(rx.next().await.is_some());
                d.stop(&s).await.unwrap();
            };
            let (outcome, ()) = futures::join!(turn, control);
            assert_eq!(outcome.unwrap().status, TerminalStatus::Cancelled);
            assert_eq!(d.session_count(), 0);
            let (tx, _rx) = mpsc::unbounded();
            assert_eq!(
                d.prompt(&s, run(), "hi", tx).await.unwrap_err().class(),
                ErrorClass::NotFound
            );
            assert_eq!(
                d.cancel(&s).await.unwrap_err().class(),
                ErrorClass::NotFound
            );
            assert_eq!(
                d.restore(&s, &[]).await.unwrap_err().class(),
                ErrorClass::NotFound
            );
            assert_eq!(d.stop(&s).await.unwrap_err().class(), ErrorClass::NotFound);
            let req = RequestId::parse("perm-1").unwrap();
            assert_eq!(
                d.decide(&s, &req, PermissionDecision::Deny)
                    .await
                    .unwrap_err()
                    .class(),
                ErrorClass::NotFound
            );
        });
    }

    #[test]
    fn restore_injects_and_replaces_the_conversation() {
        let d = InMemoryAgentDriver::new();
        block_on(async {
            let s = d.start(&start()).await.unwrap();
            let turns = vec![
                Turn {
                    role: TurnRole::User,
                    text: "the code word is marmalade".into(),
                },
                Turn {
                    role: TurnRole::Assistant,
                    text: "noted".into(),
                },
            ];
            assert_eq!(d.restore(&s, &turns).await.unwrap(), RestoreMode::Injected);
            assert_eq!(d.restore(&s, &turns).await.unwrap(), RestoreMode::Injected);
            assert_eq!(
                d.conversation(&s).unwrap(),
                turns,
                "a retried restore does not duplicate"
            );
            let (_, updates) = prompt_all(&d, &s, script::RECALL).await;
            assert_eq!(
                reply_of(&updates),
                "you first said: the code word is marmalade"
            );
        });
    }

    #[test]
    fn a_dropped_prompt_leaves_no_turn_behind_and_bad_starts_are_invalid() {
        let d = InMemoryAgentDriver::new();
        block_on(async {
            let s = d.start(&start()).await.unwrap();
            assert_eq!(d.started_with(&s), Some(start()));
            {
                let (tx, _rx) = mpsc::unbounded();
                let mut turn = Box::pin(d.prompt(&s, run(), script::HANG, tx));
                let polled = futures::poll!(turn.as_mut());
                assert!(polled.is_pending());
                assert!(d.in_turn(&s));
            }
            assert!(!d.in_turn(&s));
            let relative = AgentStart {
                workspace: "work".into(),
                ..start()
            };
            assert_eq!(
                d.start(&relative).await.unwrap_err().class(),
                ErrorClass::Invalid
            );
        });
    }
}
