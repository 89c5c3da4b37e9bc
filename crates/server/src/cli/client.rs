//! `switchboard session new|prompt|tail|list`: a terminal client of a running server's HTTP API
//! (reqwest) and client WebSocket ([`super::tail`]). The server is `--server` (`SWITCHBOARD_URL`,
//! default `http://127.0.0.1:8080`), the credential `--api-key` (`SWITCHBOARD_API_KEY`).
//!
//! Every failure prints as `error: <code>: <message>` — the API's own `{"error": {"code",
//! "message"}}` when the server answered one — and exits 1.

use super::tail::{self, TailEnd, Until};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::time::Duration;

/// `switchboard session …`: the options shared by every session command.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "SWITCHBOARD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// An API key (`sk_…`), e.g. from `switchboard admin create-org`.
    #[arg(
        long,
        env = "SWITCHBOARD_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub api_key: Option<String>,
    #[command(subcommand)]
    pub command: SessionCommand,
}

/// The session commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SessionCommand {
    /// Create a session and print its id. With --prompt, also queue a prompt and stream the
    /// session until that run completes.
    New {
        /// The model as `provider/model` (required: there is no default model).
        #[arg(long)]
        model: String,
        /// The agent to run in the sandbox (the server's default when left out).
        #[arg(long)]
        agent: Option<String>,
        /// A first prompt to queue; the command then streams until its run completes.
        #[arg(long)]
        prompt: Option<String>,
    },
    /// Queue a prompt on a session; prints the run id and its queue position.
    Prompt {
        /// The session id.
        id: String,
        /// The prompt text.
        text: String,
    },
    /// Stream a session's events as readable lines until it closes (or Ctrl-C).
    Tail {
        /// The session id.
        id: String,
        /// Only events after this sequence number (default: all of them).
        #[arg(long)]
        after: Option<u64>,
    },
    /// List this org's sessions: id, status, model, creation time.
    List,
}

/// A failure as the user sees it: `error: <code>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub code: String,
    pub message: String,
}

impl CliError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        CliError {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// From an API answer that is not a success: its `{"error": {"code", "message"}}` body, or
    /// the status and whatever the body held when it is not that shape.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        match (
            error.and_then(|e| e.get("code")).and_then(Value::as_str),
            error.and_then(|e| e.get("message")).and_then(Value::as_str),
        ) {
            (Some(code), Some(message)) => CliError::new(code, message),
            _ => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    format!("the server answered HTTP {status}")
                } else {
                    format!(
                        "the server answered HTTP {status}: {}",
                        super::render::clip(text, 300)
                    )
                };
                CliError::new(&format!("http_{status}"), message)
            }
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for CliError {}

/// A connection to a server: its base URL, the API key, an HTTP client.
#[derive(Clone)]
pub struct Connection {
    base: String,
    api_key: String,
    http: reqwest::Client,
}

impl Connection {
    /// Checks the options and builds the HTTP client.
    pub fn new(server: &str, api_key: Option<&str>) -> Result<Self, CliError> {
        let base = server.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::new(
                "invalid",
                format!("--server must be an http:// or https:// URL, got {server:?}"),
            ));
        }
        let api_key = api_key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| CliError::new("unauthorized", "no API key: pass --api-key or set SWITCHBOARD_API_KEY (`switchboard admin create-org` makes one)"))?
            .to_string();
        crate::serve::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| {
                CliError::new("unavailable", format!("cannot build an HTTP client: {e}"))
            })?;
        Ok(Connection {
            base,
            api_key,
            http,
        })
    }

    /// The server's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The API key.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The WebSocket URL of `path` (`http` → `ws`, `https` → `wss`).
    pub fn ws_url(&self, path: &str) -> String {
        let rest = self
            .base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| {
                self.base
                    .strip_prefix("http://")
                    .map(|r| format!("ws://{r}"))
            });
        format!("{}{path}", rest.unwrap_or_else(|| self.base.clone()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.api_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            CliError::new(
                "unavailable",
                format!("cannot reach {}: {}", self.base, error_chain(&e)),
            )
        })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| {
            CliError::new(
                "unavailable",
                format!(
                    "the answer from {} broke off: {}",
                    self.base,
                    error_chain(&e)
                ),
            )
        })?;
        if !(200..300).contains(&status) {
            return Err(CliError::from_answer(status, &bytes));
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| {
            CliError::new(
                "bad_response",
                format!("the server's answer to {path} is not what this client expects: {e}"),
            )
        })
    }

    /// `POST /v1/sessions`.
    pub async fn create_session(
        &self,
        model: &str,
        agent: Option<&str>,
    ) -> Result<Value, CliError> {
        let mut body = json!({ "model": model });
        if let Some(agent) = agent {
            body["agent"] = json!(agent);
        }
        self.call(reqwest::Method::POST, "/v1/sessions", Some(body))
            .await
    }

    /// `POST /v1/sessions/{id}/prompts` → `{"run_id", "position"}`.
    pub async fn prompt(&self, id: &str, text: &str) -> Result<Value, CliError> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/sessions/{}/prompts", path_segment(id)?),
            Some(json!({ "text": text })),
        )
        .await
    }

    /// `DELETE /v1/sessions/{id}`: closes the session (its sandbox is terminated).
    pub async fn close_session(&self, id: &str) -> Result<(), CliError> {
        let _: Value = self
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/sessions/{}", path_segment(id)?),
                None,
            )
            .await?;
        Ok(())
    }

    /// `PUT /v1/credentials/{provider}` `{"api_key"}`: stores the org's key for a provider.
    pub async fn put_credential(&self, provider: &str, api_key: &str) -> Result<(), CliError> {
        let _: Value = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/credentials/{}", path_segment(provider)?),
                Some(json!({ "api_key": api_key })),
            )
            .await?;
        Ok(())
    }

    /// `GET /v1/runs/{run_id}` → the run's record from the ledger, with its events.
    pub async fn run(&self, run_id: &str) -> Result<Value, CliError> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/runs/{}", path_segment(run_id)?),
            None,
        )
        .await
    }

    /// `GET /v1/sessions` → the sessions.
    pub async fn sessions(&self) -> Result<Vec<Value>, CliError> {
        let answer: Value = self
            .call(reqwest::Method::GET, "/v1/sessions", None)
            .await?;
        match answer.get("sessions") {
            Some(Value::Array(sessions)) => Ok(sessions.clone()),
            _ => Err(CliError::new(
                "bad_response",
                "the server's session list has no \"sessions\" array",
            )),
        }
    }
}

/// A session id as a URL path segment: ids are plain tokens, anything else is refused here.
pub fn path_segment(id: &str) -> Result<&str, CliError> {
    if !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Ok(id)
    } else {
        Err(CliError::new(
            "not_found",
            format!("{id:?} is not a session id"),
        ))
    }
}

/// An error with its causes, for transport failures ("error sending request: … connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

fn string_field<'a>(value: &'a Value, field: &str) -> Result<&'a str, CliError> {
    value.get(field).and_then(Value::as_str).ok_or_else(|| {
        CliError::new(
            "bad_response",
            format!("the server's answer has no \"{field}\""),
        )
    })
}

/// Runs a session command against the server; returns the process exit code.
pub async fn run(args: SessionArgs) -> Result<i32, CliError> {
    let conn = Connection::new(&args.server, args.api_key.as_deref())?;
    match args.command {
        SessionCommand::New {
            model,
            agent,
            prompt,
        } => {
            let session = conn.create_session(&model, agent.as_deref()).await?;
            let id = string_field(&session, "id")?.to_string();
            println!("{id}");
            let Some(text) = prompt else { return Ok(0) };
            let queued = conn.prompt(&id, &text).await?;
            let run_id = string_field(&queued, "run_id")?.to_string();
            let end = tail::tail(&conn, &id, None, Until::RunFinished(run_id)).await?;
            Ok(end.exit_code())
        }
        SessionCommand::Prompt { id, text } => {
            let queued = conn.prompt(&id, &text).await?;
            let run_id = string_field(&queued, "run_id")?;
            let position = queued.get("position").and_then(Value::as_u64).unwrap_or(0);
            let when = if position == 0 {
                "runs now".to_string()
            } else {
                format!("waits behind {position}")
            };
            println!("{run_id} position {position} ({when})");
            Ok(0)
        }
        SessionCommand::Tail { id, after } => {
            let end = tail::tail(&conn, &id, after, Until::Closed).await?;
            Ok(end.exit_code())
        }
        SessionCommand::List => {
            let sessions = conn.sessions().await?;
            if sessions.is_empty() {
                eprintln!("no sessions");
            }
            for s in &sessions {
                println!("{}", super::render::session_line(s));
            }
            Ok(0)
        }
    }
}

/// `switchboard session …` from `main`: runs it and prints any error; returns the exit code.
pub fn main(args: SessionArgs) -> i32 {
    match super::block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

impl TailEnd {
    /// 0 for a session that closed or a run that completed; 130 after Ctrl-C; 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            TailEnd::Closed => 0,
            TailEnd::RunFinished { status } if status == "completed" => 0,
            TailEnd::Interrupted => 130,
            TailEnd::Failed | TailEnd::RunFinished { .. } => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_their_code_and_message() {
        let e = CliError::from_answer(
            422,
            br#"{"error":{"code":"invalid_model","message":"no provider"}}"#,
        );
        assert_eq!(e.to_string(), "invalid_model: no provider");
        let e = CliError::from_answer(502, b"Bad Gateway");
        assert_eq!(e.code, "http_502");
        assert!(e.message.contains("Bad Gateway"), "{}", e.message);
        let e = CliError::from_answer(500, b"");
        assert_eq!(e.message, "the server answered HTTP 500");
    }

    #[test]
    fn a_connection_needs_an_http_url_and_a_key() {
        assert_eq!(
            Connection::new("ftp://x", Some("sk_1")).err().unwrap().code,
            "invalid"
        );
        assert_eq!(
            Connection::new("http://x", None).err().unwrap().code,
            "unauthorized"
        );
        assert_eq!(
            Connection::new("http://x", Some("  ")).err().unwrap().code,
            "unauthorized"
        );
        let c = Connection::new("https://sb.example/", Some("sk_1")).unwrap();
        assert_eq!(c.base(), "https://sb.example");
        assert_eq!(
            c.ws_url("/v1/sessions/s/ws"),
            "wss://sb.example/v1/sessions/s/ws"
        );
        assert_eq!(
            Connection::new("http://127.0.0.1:1", Some("k"))
                .unwrap()
                .ws_url("/x"),
            "ws://127.0.0.1:1/x"
        );
    }

    #[test]
    fn session_ids_are_path_safe() {
        assert!(path_segment("ses_0192-abc").is_ok());
        assert_eq!(path_segment("../admin").unwrap_err().code, "not_found");
        assert_eq!(path_segment("a/b").unwrap_err().code, "not_found");
        assert!(path_segment("").is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(TailEnd::Closed.exit_code(), 0);
        assert_eq!(
            TailEnd::RunFinished {
                status: "completed".into()
            }
            .exit_code(),
            0
        );
        assert_eq!(
            TailEnd::RunFinished {
                status: "timed_out".into()
            }
            .exit_code(),
            1
        );
        assert_eq!(TailEnd::Failed.exit_code(), 1);
        assert_eq!(TailEnd::Interrupted.exit_code(), 130);
    }
}
