//! `scripted-acp-agent`: a small coding agent that speaks the Agent Client Protocol (v1) on its
//! stdio and answers prompts by the script language it shares with the in-memory agent fake
//! (`switchboard_ports::agent_script`, one parser for both), so that the real `AcpAgentDriver` can
//! be checked against the same contract cases. A test double kept in the repo for tests and the demo; no model.
//!
//! A prompt is matched against these rules, first match wins:
//!
//! 1. **`hang`** (a word): one `agent_thought_chunk` ("waiting until cancelled"), then nothing until
//!    `session/cancel`, answered `stopReason: cancelled`.
//! 2. **`permission:<tool>`** (a word): a `session/request_permission` for `<tool>` (input
//!    `{"tool": "<tool>"}`, options allow once / allow always / reject). Allowed: a `tool_call`
//!    for `<tool>` and its `completed` update (`ok`), then the reply `permission granted for <tool>`;
//!    rejected: `permission denied for <tool>`; cancelled: `stopReason: cancelled`.
//! 3. **`tool:<cmd>`** (the rest of the prompt): REALLY runs `<cmd>` with `sh -c` in the session's
//!    cwd, reported like OpenCode's bash tool: a `pending` `tool_call` named `bash` with
//!    `rawInput: {"command"}`, an `in_progress` update, then `completed` (exit 0) or `failed`, its
//!    text content being stdout then stderr and `rawOutput: {"output", "exit_code"}`. It then replies
//!    `ran <cmd>`. A cancel kills the command and ends the turn `cancelled`.
//! 4. **`what did I say first`** (anywhere, any case): `you first said: <text>` quoting the first
//!    user turn of the conversation (injected history included), or
//!    `you have not said anything before`.
//! 5. **anything else**: `echo: <prompt>`.
//!
//! A reply is streamed as up to three `agent_message_chunk`s. The answer carries
//! `usage: {inputTokens: words of the conversation including this prompt, outputTokens: words of
//! the reply, totalTokens}`, as OpenCode 1.18 does. Each session keeps its conversation; a prompt
//! whose first block is an injected-history block (`switchboard_adapters::acp_driver::
//! history_block`) replaces the conversation with those turns first. It does not advertise
//! `loadSession`.

use acp::v1::schema::{
    AgentCapabilities, CancelNotification, ContentBlock, ContentChunk, Implementation,
    InitializeRequest, InitializeResponse, NewSessionRequest, NewSessionResponse, PermissionOption,
    PermissionOptionKind, PromptRequest, RequestPermissionOutcome, RequestPermissionRequest,
    SessionNotification, SessionUpdate, TextContent, ToolCall, ToolCallContent, ToolCallStatus,
    ToolCallUpdate, ToolCallUpdateFields, ToolKind,
};
use acp::{Agent, ByteStreams, JsonRpcMessage, JsonRpcRequest, UntypedMessage};
use agent_client_protocol as acp;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use switchboard_adapters::acp_driver::parse_history_block;
use switchboard_core::protocol::{Turn, TurnRole};
use switchboard_ports::agent_script::{chunks, parse, words, Step};
use tokio::sync::oneshot;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// `session/prompt`, answered with raw JSON so that the answer can carry `usage` (the crate's typed
/// `PromptResponse` has no such field without an unstable feature).
#[derive(Debug, Clone)]
struct PromptCall(PromptRequest);

const PROMPT_METHOD: &str = "session/prompt";

impl JsonRpcMessage for PromptCall {
    fn matches_method(method: &str) -> bool {
        method == PROMPT_METHOD
    }

    fn method(&self) -> &str {
        PROMPT_METHOD
    }

    fn to_untyped_message(&self) -> Result<UntypedMessage, acp::Error> {
        UntypedMessage::new(PROMPT_METHOD, &self.0)
    }

    fn parse_message(_method: &str, params: &Value) -> Result<Self, acp::Error> {
        Ok(PromptCall(serde_json::from_value(params.clone())?))
    }
}

impl JsonRpcRequest for PromptCall {
    type Response = Value;
}

struct Session {
    cwd: PathBuf,
    turns: Vec<Turn>,
    /// The running turn's id and its cancel switch.
    turn: Option<(u64, oneshot::Sender<()>)>,
}

#[derive(Default)]
struct State {
    next: u64,
    sessions: HashMap<String, Session>,
}

type Shared = Arc<Mutex<State>>;
/// Sends one `session/update` (a closed connection ends the turn's task soon enough).
fn update(cx: &acp::v1::ConnectionTo<acp::Client>, session: &str, update: SessionUpdate) {
    let _ = cx.send_notification(SessionNotification::new(session.to_string(), update));
}

fn text_block(s: impl Into<String>) -> ContentBlock {
    ContentBlock::Text(TextContent::new(s))
}

fn answer(stop_reason: &str, input: u64, output: u64) -> Value {
    json!({
        "stopReason": stop_reason,
        "usage": {"inputTokens": input, "outputTokens": output, "totalTokens": input + output},
    })
}

/// Runs one turn and answers the prompt.
async fn turn(
    state: Shared,
    cx: acp::v1::ConnectionTo<acp::Client>,
    session: String,
    turn_id: u64,
    prompt: PromptRequest,
    responder: acp::v1::Responder<Value>,
    mut cancelled: oneshot::Receiver<()>,
) {
    // The prompt's text, after an injected history block if there is one.
    let mut history = None;
    let mut parts = Vec::new();
    for (i, block) in prompt.prompt.iter().enumerate() {
        if let ContentBlock::Text(t) = block {
            match parse_history_block(&t.text) {
                Some(turns) if i == 0 => history = Some(turns),
                _ => parts.push(t.text.clone()),
            }
        }
    }
    let text = parts.join("\n");
    let (cwd, first_said, input_tokens) = {
        let mut state = state.lock().unwrap();
        let s = state
            .sessions
            .get_mut(&session)
            .expect("the session exists");
        if let Some(turns) = history {
            s.turns = turns;
        }
        let first_said = s
            .turns
            .iter()
            .find(|t| t.role == TurnRole::User)
            .map(|t| t.text.clone());
        s.turns.push(Turn {
            role: TurnRole::User,
            text: text.clone(),
        });
        let input = s.turns.iter().map(|t| words(&t.text)).sum::<u64>();
        (s.cwd.clone(), first_said, input)
    };

    let reply = match parse(&text) {
        Step::Hang => {
            update(
                &cx,
                &session,
                SessionUpdate::AgentThoughtChunk(ContentChunk::new(text_block(
                    "waiting until cancelled",
                ))),
            );
            let _ = (&mut cancelled).await;
            None
        }
        Step::Permission(tool) => {
            let call_id = format!("call-{turn_id}");
            let ask = cx
                .send_request(RequestPermissionRequest::new(
                    session.clone(),
                    ToolCallUpdate::new(
                        call_id.clone(),
                        ToolCallUpdateFields::new()
                            .name(tool.clone())
                            .title(tool.clone())
                            .raw_input(json!({ "tool": tool })),
                    ),
                    vec![
                        PermissionOption::new(
                            "once",
                            "Allow once",
                            PermissionOptionKind::AllowOnce,
                        ),
                        PermissionOption::new(
                            "always",
                            "Allow always",
                            PermissionOptionKind::AllowAlways,
                        ),
                        PermissionOption::new("reject", "Reject", PermissionOptionKind::RejectOnce),
                    ],
                ))
                .block_task();
            let outcome = tokio::select! {
                r = ask => r.ok().map(|r| r.outcome),
                _ = &mut cancelled => None,
            };
            match outcome {
                Some(RequestPermissionOutcome::Selected(selected))
                    if selected.option_id.0.as_ref() != "reject" =>
                {
                    update(
                        &cx,
                        &session,
                        SessionUpdate::ToolCall(
                            ToolCall::new(call_id.clone(), tool.clone())
                                .name(tool.clone())
                                .kind(ToolKind::Other)
                                .status(ToolCallStatus::InProgress)
                                .raw_input(json!({ "tool": tool })),
                        ),
                    );
                    update(
                        &cx,
                        &session,
                        SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
                            call_id,
                            ToolCallUpdateFields::new()
                                .status(ToolCallStatus::Completed)
                                .content(vec![ToolCallContent::from(text_block("ok"))]),
                        )),
                    );
                    Some(format!("permission granted for {tool}"))
                }
                Some(RequestPermissionOutcome::Selected(_)) => {
                    Some(format!("permission denied for {tool}"))
                }
                _ => None,
            }
        }
        Step::Tool(cmd) => {
            let call_id = format!("call-{turn_id}");
            update(
                &cx,
                &session,
                SessionUpdate::ToolCall(
                    ToolCall::new(call_id.clone(), "bash")
                        .kind(ToolKind::Execute)
                        .status(ToolCallStatus::Pending)
                        .raw_input(json!({ "command": cmd })),
                ),
            );
            update(
                &cx,
                &session,
                SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
                    call_id.clone(),
                    ToolCallUpdateFields::new()
                        .status(ToolCallStatus::InProgress)
                        .title(cmd.clone()),
                )),
            );
            let run = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .current_dir(&cwd)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            let ran = tokio::select! {
                r = run => Some(r),
                _ = &mut cancelled => None,
            };
            match ran {
                None => {
                    update(
                        &cx,
                        &session,
                        SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
                            call_id,
                            ToolCallUpdateFields::new()
                                .status(ToolCallStatus::Failed)
                                .content(vec![ToolCallContent::from(text_block("cancelled"))]),
                        )),
                    );
                    None
                }
                Some(ran) => {
                    let (output, code, ok) = match ran {
                        Ok(out) => {
                            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                            text.push_str(&String::from_utf8_lossy(&out.stderr));
                            (text, out.status.code(), out.status.success())
                        }
                        Err(e) => (format!("cannot run sh: {e}"), None, false),
                    };
                    update(
                        &cx,
                        &session,
                        SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
                            call_id,
                            ToolCallUpdateFields::new()
                                .status(if ok {
                                    ToolCallStatus::Completed
                                } else {
                                    ToolCallStatus::Failed
                                })
                                .content(vec![ToolCallContent::from(text_block(output.clone()))])
                                .raw_output(json!({ "output": output, "exit_code": code })),
                        )),
                    );
                    Some(format!("ran {cmd}"))
                }
            }
        }
        Step::Recall => Some(match first_said {
            Some(first) => format!("you first said: {first}"),
            None => "you have not said anything before".to_string(),
        }),
        Step::Echo => Some(format!("echo: {text}")),
    };

    let response = match reply {
        None => answer("cancelled", input_tokens, 0),
        Some(reply) => {
            for chunk in chunks(&reply) {
                update(
                    &cx,
                    &session,
                    SessionUpdate::AgentMessageChunk(ContentChunk::new(text_block(chunk))),
                );
            }
            let output = words(&reply);
            if let Some(s) = state.lock().unwrap().sessions.get_mut(&session) {
                s.turns.push(Turn {
                    role: TurnRole::Assistant,
                    text: reply,
                });
            }
            answer("end_turn", input_tokens, output)
        }
    };
    {
        let mut state = state.lock().unwrap();
        if let Some(s) = state.sessions.get_mut(&session) {
            if s.turn.as_ref().is_some_and(|(id, _)| *id == turn_id) {
                s.turn = None;
            }
        }
    }
    if let Err(e) = responder.respond(response) {
        eprintln!("scripted-acp-agent: cannot answer the prompt: {e}");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let state: Shared = Arc::default();
    let sessions = state.clone();
    let prompts = state.clone();
    let cancels = state.clone();
    let transport = ByteStreams::new(
        tokio::io::stdout().compat_write(),
        tokio::io::stdin().compat(),
    );
    let served = Agent
        .v1()
        .name("scripted-acp-agent")
        .on_receive_request(
            async |req: InitializeRequest, responder, _cx| {
                responder.respond(
                    InitializeResponse::new(req.protocol_version)
                        .agent_capabilities(AgentCapabilities::new())
                        .agent_info(Implementation::new(
                            "scripted-acp-agent",
                            env!("CARGO_PKG_VERSION"),
                        )),
                )
            },
            acp::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: NewSessionRequest, responder, _cx| {
                let id = {
                    let mut state = sessions.lock().unwrap();
                    state.next += 1;
                    let id = format!("scripted-{}-{}", std::process::id(), state.next);
                    state.sessions.insert(
                        id.clone(),
                        Session {
                            cwd: req.cwd,
                            turns: Vec::new(),
                            turn: None,
                        },
                    );
                    id
                };
                responder.respond(NewSessionResponse::new(id))
            },
            acp::on_receive_request!(),
        )
        .on_receive_request(
            async move |req: PromptCall, responder: acp::v1::Responder<Value>, cx| {
                let session = req.0.session_id.0.to_string();
                // Register the turn's cancel switch before returning, so that a `session/cancel`
                // handled next finds it.
                let registered = {
                    let mut state = prompts.lock().unwrap();
                    state.next += 1;
                    let turn_id = state.next;
                    match state.sessions.get_mut(&session) {
                        None => Err(format!("no session {session:?}")),
                        Some(s) if s.turn.is_some() => {
                            Err(format!("session {session:?} is already in a turn"))
                        }
                        Some(s) => {
                            let (tx, rx) = oneshot::channel();
                            s.turn = Some((turn_id, tx));
                            Ok((turn_id, rx))
                        }
                    }
                };
                match registered {
                    Err(message) => responder
                        .respond_with_error(acp::Error::invalid_params().data(json!(message))),
                    Ok((turn_id, rx)) => {
                        let state = prompts.clone();
                        let conn = cx.clone();
                        cx.spawn(async move {
                            turn(state, conn, session, turn_id, req.0, responder, rx).await;
                            Ok(())
                        })
                    }
                }
            },
            acp::on_receive_request!(),
        )
        .on_receive_notification(
            async move |n: CancelNotification, _cx| {
                let mut state = cancels.lock().unwrap();
                if let Some(s) = state.sessions.get_mut(n.session_id.0.as_ref()) {
                    if let Some((_, tx)) = s.turn.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(())
            },
            acp::on_receive_notification!(),
        )
        .connect_to(transport)
        .await;
    if let Err(e) = served {
        eprintln!("scripted-acp-agent: {e}");
        std::process::exit(1);
    }
}
