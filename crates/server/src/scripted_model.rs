//! `ScriptedModelServer`: an OpenAI-compatible model server that follows a deterministic script,
//! for tests and `switchboard demo`. It records every `POST /v1/chat/completions` it receives (its
//! `Authorization` header, model, `stream` flag and JSON body) so that a test can prove which key an
//! agent used.
//!
//! # Routes
//!
//! - `POST /v1/chat/completions`: with `"stream": true`, server-sent events (`data: <chunk>` lines,
//!   then `data: [DONE]`), plus a final usage chunk (`"choices": []`, `"usage"`) when
//!   `stream_options.include_usage` is true (OpenCode asks for it); otherwise one
//!   `chat.completion` JSON answer, which always carries `usage`. A body that is not JSON, or has no
//!   `messages` array, is 400 with an OpenAI-style error body (and is still recorded).
//! - `GET /v1/models`: the models requested so far, after a fixed `scripted-1`.
//! - Anything else: 404 (405 for a known path with another method), OpenAI-style error bodies.
//!
//! # The script
//!
//! The answer is decided from the request's `messages` (a message's content is a string or an
//! array of `{type: "text", text}` parts), mirroring the language of `scripted-acp-agent`, first
//! match wins:
//!
//! 1. the last message has role `tool` → the text `the command printed: <its content, trimmed>`;
//! 2. the last user text holds `tool:<cmd>` (`cmd` = the rest of that line) → one call of the tool
//!    `bash` with arguments `{"command": cmd, "description": "run <cmd>"}`, `finish_reason`
//!    `tool_calls`;
//! 3. it holds `what did I say first` (any case) → `you first said: <first user turn>`, or
//!    `you have not said anything before` when there is no earlier user turn;
//! 4. otherwise → `echo: <last user text>`.
//!
//! A user message's *text* is its text parts joined by newlines, without the `<system-reminder>`
//! blocks agents add and without an injected-history block
//! ([`switchboard_adapters::acp_driver::history_block`], which `AcpAgentDriver` sends as the first
//! block of the first prompt to a replacement sandbox; it may arrive as its own part or at the
//! head of the text). The *first user turn* is the first user message's text, except that when
//! that message carries an injected history, the history's first user turn is used.
//!
//! Text replies stream as up to three chunks. Usage is deterministic: `prompt_tokens` counts the
//! words of every message's text, `completion_tokens` the words of the reply (of the arguments, for
//! a tool call).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_adapters::acp_driver::{parse_history_block, HISTORY_HEADER};
use switchboard_core::protocol::{Turn, TurnRole};
use tokio::sync::oneshot;

/// How long [`ScriptedModelServer::stop`] lets open connections finish before dropping them.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The model `GET /v1/models` always lists.
pub const FIXED_MODEL: &str = "scripted-1";

/// One recorded `POST /v1/chat/completions`.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// The `Authorization` header as received (e.g. `Bearer sk-…`), `None` when absent.
    pub authorization: Option<String>,
    /// The body's `model` (`""` when absent).
    pub model: String,
    /// The body's `stream`.
    pub stream: bool,
    /// The whole body (a JSON string of the raw text when it was not JSON).
    pub body: Value,
}

/// A running scripted model server on a loopback port.
pub struct ScriptedModelServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<ModelRequest>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for ScriptedModelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedModelServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ScriptedModelServer {
    /// Starts on `127.0.0.1:0` (a free port).
    pub async fn start() -> std::io::Result<ScriptedModelServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<ScriptedModelServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/models", get(models))
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .with_state(requests.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(ScriptedModelServer {
            addr,
            requests,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:<port>/v1`: the base URL an OpenAI-compatible client is given.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every chat completion request so far, in the order received.
    pub fn requests(&self) -> Vec<ModelRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops accepting and waits (at most a few seconds) for open connections to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Drop for ScriptedModelServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// ----- errors -----------------------------------------------------------------------------------

fn openai_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {
        "message": message.into(),
        "type": "invalid_request_error",
        "param": null,
        "code": code,
    }});
    (status, Json(body)).into_response()
}

async fn no_route(uri: axum::http::Uri) -> Response {
    openai_error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("the scripted model server has no route {}", uri.path()),
    )
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    openai_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not answer {method}", uri.path()),
    )
}

// ----- routes -----------------------------------------------------------------------------------

type Recorded = Arc<Mutex<Vec<ModelRequest>>>;

async fn models(State(requests): State<Recorded>) -> Response {
    let mut names = vec![FIXED_MODEL.to_string()];
    for r in requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        if !r.model.is_empty() && !names.contains(&r.model) {
            names.push(r.model.clone());
        }
    }
    let data: Vec<Value> = names
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "switchboard"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn chat_completions(
    State(requests): State<Recorded>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    let index = {
        let mut requests = requests.lock().unwrap_or_else(|p| p.into_inner());
        let body = match &parsed {
            Ok(v) => v.clone(),
            Err(_) => Value::String(String::from_utf8_lossy(&body).into_owned()),
        };
        requests.push(ModelRequest {
            authorization,
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            body,
        });
        requests.len()
    };
    let body = match parsed {
        Ok(body) => body,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the request body is not JSON: {e}"),
            )
        }
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request has no \"messages\" array",
        );
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(FIXED_MODEL)
        .to_string();
    let reply = script(messages);
    let usage = Usage {
        prompt: messages.iter().map(|m| words(&message_words(m))).sum(),
        completion: words(&reply.words()),
    };
    let id = format!("chatcmpl-scripted-{index}");
    let call_id = format!("call_scripted_{index}");
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        let events = stream_chunks(
            &id,
            &model,
            &call_id,
            &reply,
            include_usage.then_some(usage),
        );
        let lines: Vec<Result<Bytes, std::convert::Infallible>> = events
            .into_iter()
            .map(|e| Ok(Bytes::from(format!("data: {e}\n\n"))))
            .chain(std::iter::once(Ok(Bytes::from_static(b"data: [DONE]\n\n"))))
            .collect();
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(futures::stream::iter(lines)))
            .expect("a valid response")
    } else {
        Json(completion(&id, &model, &call_id, &reply, usage)).into_response()
    }
}

// ----- the script -------------------------------------------------------------------------------

/// What the script answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A text reply.
    Text(String),
    /// One call of the `bash` tool running `command`.
    Bash { command: String },
}

impl Reply {
    /// The arguments of a `bash` call (OpenCode's bash tool requires `command` and `description`).
    fn arguments(command: &str) -> String {
        json!({"command": command, "description": format!("run {command}")}).to_string()
    }

    fn words(&self) -> String {
        match self {
            Reply::Text(text) => text.clone(),
            Reply::Bash { command } => Reply::arguments(command),
        }
    }
}

/// The text of a message's content: a string, or its text parts joined by newlines.
fn raw_text(message: &Value) -> Vec<String> {
    match message.get("content") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.clone()),
                p if p.get("type").and_then(Value::as_str) == Some("text") => {
                    p.get("text").and_then(Value::as_str).map(str::to_string)
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Every word a message carries (its text, and its tool calls' arguments), for usage.
fn message_words(message: &Value) -> String {
    let mut text = raw_text(message).join("\n");
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str) {
                text.push('\n');
                text.push_str(args);
            }
        }
    }
    text
}

/// `text` without its `<system-reminder>…</system-reminder>` blocks.
fn strip_reminders(text: &str) -> String {
    const OPEN: &str = "<system-reminder>";
    const CLOSE: &str = "</system-reminder>";
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        match rest[start..].find(CLOSE) {
            Some(end) => rest = &rest[start + end + CLOSE.len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Splits an injected-history block off the head of `text`: its turns and the text after it.
fn split_history(text: &str) -> (Option<Vec<Turn>>, String) {
    let trimmed = text.trim_start();
    if !trimmed.starts_with(HISTORY_HEADER) {
        return (None, text.to_string());
    }
    // The block is three lines: the header, one line of explanation, the turns as one JSON line.
    let lines: Vec<&str> = trimmed.splitn(4, '\n').collect();
    if lines.len() >= 3 {
        if let Some(turns) = parse_history_block(&lines[..3].join("\n")) {
            return (Some(turns), lines.get(3).copied().unwrap_or("").to_string());
        }
    }
    (None, text.to_string())
}

/// A user message's text (reminders and injected history removed) and the injected history it
/// carries, if any.
fn user_text(message: &Value) -> (String, Option<Vec<Turn>>) {
    let mut history = None;
    let mut parts = Vec::new();
    for part in raw_text(message) {
        let part = strip_reminders(&part);
        let (turns, rest) = split_history(&part);
        if history.is_none() {
            history = turns;
        }
        let rest = rest.trim();
        if !rest.is_empty() {
            parts.push(rest.to_string());
        }
    }
    (parts.join("\n"), history)
}

fn role(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("")
}

/// The script's answer to `messages` (see the module docs).
pub fn script(messages: &[Value]) -> Reply {
    if let Some(last) = messages.last().filter(|m| role(m) == "tool") {
        let output = raw_text(last).join("\n");
        return Reply::Text(format!("the command printed: {}", output.trim()));
    }
    let users: Vec<&Value> = messages.iter().filter(|m| role(m) == "user").collect();
    let last = users.last().map(|m| user_text(m).0).unwrap_or_default();
    if let Some((_, rest)) = last.split_once("tool:") {
        let command = rest.lines().next().unwrap_or("").trim();
        if !command.is_empty() {
            return Reply::Bash {
                command: command.to_string(),
            };
        }
    }
    if last.to_lowercase().contains("what did i say first") {
        let first = users.first().map(|m| user_text(m));
        let said = match first {
            Some((_, Some(turns))) => turns
                .into_iter()
                .find(|t| t.role == TurnRole::User)
                .map(|t| t.text),
            Some((text, None)) if users.len() > 1 => Some(text),
            _ => None,
        };
        return Reply::Text(match said {
            Some(text) => format!("you first said: {text}"),
            None => "you have not said anything before".to_string(),
        });
    }
    Reply::Text(format!("echo: {last}"))
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Splits `text` into at most three non-empty pieces, on character boundaries.
fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let size = chars.len().div_ceil(3).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    prompt: u64,
    completion: u64,
}

impl Usage {
    fn json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        })
    }
}

fn created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn tool_call(call_id: &str, command: &str) -> Value {
    json!({
        "id": call_id,
        "type": "function",
        "function": {"name": "bash", "arguments": Reply::arguments(command)},
    })
}

/// The `chat.completion.chunk`s of a streamed answer (without the `[DONE]` line).
fn stream_chunks(
    id: &str,
    model: &str,
    call_id: &str,
    reply: &Reply,
    usage: Option<Usage>,
) -> Vec<Value> {
    let created = created();
    let chunk = |choices: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices,
        })
    };
    let mut out = Vec::new();
    let finish = match reply {
        Reply::Text(text) => {
            for (i, piece) in pieces(text).into_iter().enumerate() {
                let delta = if i == 0 {
                    json!({"role": "assistant", "content": piece})
                } else {
                    json!({"content": piece})
                };
                out.push(chunk(
                    json!([{"index": 0, "delta": delta, "finish_reason": null}]),
                ));
            }
            "stop"
        }
        Reply::Bash { command } => {
            let mut call = tool_call(call_id, command);
            call["index"] = json!(0);
            out.push(chunk(json!([{
                "index": 0,
                "delta": {"role": "assistant", "content": null, "tool_calls": [call]},
                "finish_reason": null,
            }])));
            "tool_calls"
        }
    };
    out.push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
    ));
    if let Some(usage) = usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage.json();
        out.push(last);
    }
    out
}

/// The one-piece `chat.completion` answer.
fn completion(id: &str, model: &str, call_id: &str, reply: &Reply, usage: Usage) -> Value {
    let (message, finish) = match reply {
        Reply::Text(text) => (json!({"role": "assistant", "content": text}), "stop"),
        Reply::Bash { command } => (
            json!({"role": "assistant", "content": null, "tool_calls": [tool_call(call_id, command)]}),
            "tool_calls",
        ),
    };
    json!({
        "id": id, "object": "chat.completion", "created": created(), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage.json(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_adapters::acp_driver::history_block;

    fn user(content: Value) -> Value {
        json!({"role": "user", "content": content})
    }

    fn text(reply: Reply) -> String {
        match reply {
            Reply::Text(t) => t,
            other => panic!("expected a text reply, got {other:?}"),
        }
    }

    #[test]
    fn a_tool_message_last_is_summarised() {
        let messages = [
            json!({"role": "system", "content": "be brief"}),
            user(json!("tool:echo 42")),
            json!({"role": "assistant", "content": null, "tool_calls": [tool_call("c1", "echo 42")]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "42\n"}),
        ];
        assert_eq!(text(script(&messages)), "the command printed: 42");
        let parts = [
            user(json!("tool:ls")),
            json!({"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": " a\nb "}]}),
        ];
        assert_eq!(text(script(&parts)), "the command printed: a\nb");
    }

    #[test]
    fn tool_prefix_calls_bash_with_the_rest_of_the_line() {
        let reply = script(&[user(json!([
            {"type": "text", "text": "please tool:cat src/index.js | wc -l\nthanks"}
        ]))]);
        assert_eq!(
            reply,
            Reply::Bash {
                command: "cat src/index.js | wc -l".into()
            }
        );
        // `tool:` with nothing after it is not a call.
        assert_eq!(text(script(&[user(json!("tool:  "))])), "echo: tool:");
    }

    #[test]
    fn recall_quotes_the_first_user_turn_and_skips_reminders() {
        let first_only = [user(json!("What did I say first?"))];
        assert_eq!(
            text(script(&first_only)),
            "you have not said anything before"
        );
        let two = [
            json!({"role": "system", "content": "sys"}),
            user(json!([
                {"type": "text", "text": "remember the tangerine"},
                {"type": "text", "text": "<system-reminder>plan mode</system-reminder>"}
            ])),
            json!({"role": "assistant", "content": "echo: remember the tangerine"}),
            user(json!(
                "<system-reminder>x</system-reminder>WHAT DID I SAY FIRST"
            )),
        ];
        assert_eq!(text(script(&two)), "you first said: remember the tangerine");
    }

    #[test]
    fn recall_uses_an_injected_history_as_a_part_or_at_the_head() {
        let turns = vec![
            Turn {
                role: TurnRole::User,
                text: "my first words".into(),
            },
            Turn {
                role: TurnRole::Assistant,
                text: "echo: my first words".into(),
            },
        ];
        let block = history_block(&turns);
        let as_part = [user(json!([
            {"type": "text", "text": block},
            {"type": "text", "text": "what did I say first"}
        ]))];
        assert_eq!(text(script(&as_part)), "you first said: my first words");
        let at_head = [user(json!(format!("{block}\nwhat did I say first")))];
        assert_eq!(text(script(&at_head)), "you first said: my first words");
        // The injected history is not the user's new text: a `tool:` in it is no call.
        let old_tool = history_block(&[Turn {
            role: TurnRole::User,
            text: "tool:rm -rf /".into(),
        }]);
        let echo = [user(json!([
            {"type": "text", "text": old_tool},
            {"type": "text", "text": "hi"}
        ]))];
        assert_eq!(text(script(&echo)), "echo: hi");
    }

    #[test]
    fn anything_else_is_echoed() {
        assert_eq!(
            text(script(&[user(json!("hello there"))])),
            "echo: hello there"
        );
        assert_eq!(text(script(&[])), "echo: ");
    }

    #[test]
    fn streamed_chunks_carry_the_reply_the_finish_and_the_usage() {
        let usage = Usage {
            prompt: 5,
            completion: 3,
        };
        let reply = Reply::Text("echo: one two".into());
        let chunks = stream_chunks("id1", "m", "c", &reply, Some(usage));
        let content: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(content, "echo: one two");
        assert!(chunks.len() >= 4, "a few chunks, a finish and the usage");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 8);
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "id1"));

        let call = stream_chunks(
            "id2",
            "m",
            "call_1",
            &Reply::Bash {
                command: "ls".into(),
            },
            None,
        );
        assert_eq!(call.len(), 2, "the call and the finish, no usage");
        let tc = &call[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(tc["id"], "call_1");
        assert_eq!(tc["index"], 0);
        assert_eq!(tc["function"]["name"], "bash");
        let args: Value =
            serde_json::from_str(tc["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"command": "ls", "description": "run ls"}));
        assert_eq!(call[1]["choices"][0]["finish_reason"], "tool_calls");
    }

    async fn post(server: &ScriptedModelServer, auth: Option<&str>, body: &str) -> (u16, String) {
        crate::serve::install_crypto_provider();
        let mut request = reqwest::Client::new()
            .post(format!("{}/chat/completions", server.base_url()))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("an answer");
        let status = response.status().as_u16();
        (status, response.text().await.expect("a body"))
    }

    #[tokio::test]
    async fn requests_are_recorded_and_answered_over_http() {
        let server = ScriptedModelServer::start().await.expect("starts");
        assert!(server.base_url().starts_with("http://127.0.0.1:"));
        assert!(server.base_url().ends_with("/v1"));

        let streamed = json!({
            "model": "gpt-4.1-mini", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hello"}]
        });
        let (status, body) = post(&server, Some("Bearer sk-one"), &streamed.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let lines: Vec<&str> = body.lines().filter(|l| !l.is_empty()).collect();
        assert!(lines.iter().all(|l| l.starts_with("data: ")), "{body}");
        assert_eq!(lines.last(), Some(&"data: [DONE]"));
        let chunks: Vec<Value> = lines[..lines.len() - 1]
            .iter()
            .map(|l| serde_json::from_str(&l["data: ".len()..]).expect("JSON chunks"))
            .collect();
        let reply: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(reply, "echo: hello");
        assert_eq!(chunks.last().unwrap()["usage"]["prompt_tokens"], 1);
        assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 2);

        let plain =
            json!({"model": "other", "messages": [{"role": "user", "content": "tool:pwd"}]});
        let (status, body) = post(&server, None, &plain.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "bash"
        );
        assert!(answer["usage"]["total_tokens"].as_u64().unwrap() > 0);

        let (status, body) = post(&server, Some("Bearer sk-two"), "{not json").await;
        assert_eq!(status, 400);
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "invalid_json");
        assert!(error["error"]["message"].as_str().unwrap().contains("JSON"));
        let (status, _) = post(&server, None, "{\"model\": \"m\"}").await;
        assert_eq!(status, 400, "no messages");

        let recorded = server.requests();
        assert_eq!(recorded.len(), 4);
        assert_eq!(recorded[0].authorization.as_deref(), Some("Bearer sk-one"));
        assert_eq!(recorded[0].model, "gpt-4.1-mini");
        assert!(recorded[0].stream);
        assert_eq!(recorded[0].body, streamed);
        assert_eq!(recorded[1].authorization, None);
        assert_eq!(recorded[1].model, "other");
        assert!(!recorded[1].stream);
        assert_eq!(recorded[2].authorization.as_deref(), Some("Bearer sk-two"));
        assert_eq!(recorded[2].body, json!("{not json"));

        let http = reqwest::Client::new();
        let models: Value = http
            .get(format!("{}/models", server.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["id"].as_str())
            .collect();
        assert_eq!(ids, [FIXED_MODEL, "gpt-4.1-mini", "other", "m"]);
        let missing = http
            .get(format!("{}/nothing", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status().as_u16(), 404);
        let error: Value = missing.json().await.unwrap();
        assert_eq!(error["error"]["code"], "not_found");
        let wrong = http
            .get(format!("{}/chat/completions", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 405);

        let url = server.base_url();
        server.stop().await;
        assert!(
            http.get(format!("{url}/models")).send().await.is_err(),
            "stopped"
        );
    }
}
