//! The scripted control plane shared by the bridge's tests: a tokio-tungstenite server that
//! checks the bearer token, sends frames, ACKs like the real session (de-duplicating by the `n`
//! high-water mark) and drops connections on purpose; plus helpers to read what the bridge sent.
#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchboard_core::protocol::{
    Event, GatewayConfig, SandboxMessage, ServerToSandbox, TerminalStatus, MAX_FRAME_BYTES,
};
use switchboard_core::{ModelRef, RunId};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The bound on every await in these tests.
pub const WAIT: Duration = Duration::from_secs(10);
pub const TOKEN: &str = "sbx-token-for-tests";
pub const PATH: &str = "/sandbox/v1/sessions/org-1/session-1/ws";

// ----- the scripted control plane ---------------------------------------------------------------

pub struct Server {
    pub listener: TcpListener,
    pub url: String,
}

impl Server {
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}{PATH}", listener.local_addr().unwrap());
        Server { listener, url }
    }

    /// Accepts the bridge's next dial, answering 401 unless it carries the right bearer token.
    pub async fn accept(&self) -> Conn {
        let (tcp, _) = timeout(WAIT, self.listener.accept())
            .await
            .expect("the bridge dials within the bound")
            .unwrap();
        let ws = tokio_tungstenite::accept_hdr_async(tcp, check_token)
            .await
            .expect("the handshake succeeds");
        Conn { ws }
    }

    /// Accepts a dial and lets the handshake's token check refuse it.
    pub async fn refuse(&self) {
        let (tcp, _) = timeout(WAIT, self.listener.accept())
            .await
            .expect("the bridge dials within the bound")
            .unwrap();
        let refused = tokio_tungstenite::accept_hdr_async(tcp, check_token).await;
        assert!(refused.is_err(), "a wrong token must not get a socket");
    }
}

#[allow(clippy::result_large_err)]
pub fn check_token(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    let bearer = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if bearer == Some(format!("Bearer {TOKEN}").as_str()) && request.uri().path() == PATH {
        return Ok(response);
    }
    let mut refusal = ErrorResponse::new(Some("a valid sandbox token is required".into()));
    *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
    Err(refusal)
}

/// One accepted sandbox connection.
pub struct Conn {
    pub ws: WebSocketStream<TcpStream>,
}

impl Conn {
    /// The next message, heartbeats included.
    pub async fn recv_any(&mut self) -> SandboxMessage {
        loop {
            let frame = timeout(WAIT, self.ws.next())
                .await
                .expect("the bridge sends within the bound")
                .expect("the bridge keeps the socket open")
                .expect("a readable frame");
            match frame {
                Message::Text(text) => {
                    assert!(
                        text.len() <= MAX_FRAME_BYTES,
                        "a {} byte frame: the server would close the socket",
                        text.len()
                    );
                    return serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("not a sandbox message: {e}: {text}"));
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next message that is not a heartbeat.
    pub async fn recv(&mut self) -> SandboxMessage {
        loop {
            match self.recv_any().await {
                SandboxMessage::Heartbeat => continue,
                message => return message,
            }
        }
    }

    /// Expects `hello` from sandbox `sbx-test` with this agent name and version.
    pub async fn hello_from(&mut self, name: &str, version: &str) {
        match self.recv().await {
            SandboxMessage::Hello {
                sandbox_id,
                agent,
                agent_version,
            } => {
                assert_eq!(sandbox_id.as_str(), "sbx-test");
                assert_eq!(agent, name);
                assert_eq!(agent_version, version);
            }
            other => panic!("expected hello first on every connection, got {other:?}"),
        }
    }

    pub async fn send(&mut self, frame: ServerToSandbox) {
        let text = serde_json::to_string(&frame).unwrap();
        timeout(WAIT, self.ws.send(Message::text(text)))
            .await
            .expect("the send finishes within the bound")
            .expect("the bridge is connected");
    }

    pub async fn ack(&mut self, n: u64) {
        self.send(ServerToSandbox::Ack { n }).await;
    }

    /// Numbered messages up to and including `run_id`'s `run_finished`, ACKing none.
    pub async fn until_finished(&mut self, run_id: &RunId) -> Vec<SandboxMessage> {
        let mut got = Vec::new();
        loop {
            let message = self.recv().await;
            assert!(message.n().is_some(), "unexpected {message:?}");
            let done =
                matches!(&message, SandboxMessage::RunFinished { run_id: r, .. } if r == run_id);
            got.push(message);
            if done {
                return got;
            }
        }
    }

    /// [`Conn::until_finished`], ACKing every message.
    pub async fn finish_acking(&mut self, run_id: &RunId) -> Vec<SandboxMessage> {
        let got = self.until_finished(run_id).await;
        for m in &got {
            self.ack(m.n().unwrap()).await;
        }
        got
    }
}

/// The session's de-duplication rule (`n` at or below the highest applied is a duplicate).
#[derive(Default)]
pub struct Ledger {
    pub last_n: u64,
    pub applied: Vec<SandboxMessage>,
}

impl Ledger {
    /// Applies `m` unless it is a duplicate; a gap would lose a message, so it fails the test.
    pub fn take(&mut self, m: &SandboxMessage) -> bool {
        let n = m.n().expect("a numbered message");
        if n <= self.last_n {
            return false;
        }
        assert_eq!(n, self.last_n + 1, "the bridge skipped a number: {m:?}");
        self.last_n = n;
        self.applied.push(m.clone());
        true
    }
}

/// A workspace directory of known content, removed (with its `.log` sibling) when dropped.
pub struct Workspace(PathBuf);

impl std::ops::Deref for Workspace {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("log"));
        if let Some(parent) = self.0.parent() {
            // Only once empty: other tests of this process may still use it.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// A fresh workspace of known content under the test target's scratch directory, private to
/// this test process.
pub fn workspace_dir(name: &str) -> Workspace {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bridge-tests-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    for (path, body) in [
        ("package.json", "{}"),
        ("package-lock.json", "{}"),
        ("src/index.ts", "export {}"),
        ("node_modules/left-pad/package.json", "{}"),
        (".git/HEAD", "ref: refs/heads/main"),
    ] {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    Workspace(dir)
}

pub fn run_id(id: &str) -> RunId {
    RunId::parse(id).unwrap()
}

pub fn gateway(key: &str) -> GatewayConfig {
    GatewayConfig {
        base_url: "http://127.0.0.1:9/v1".into(),
        api_key: Some(key.into()),
        headers: BTreeMap::new(),
    }
}

pub fn model() -> ModelRef {
    ModelRef::parse("openai/gpt-test").unwrap()
}

pub fn run_frame(id: &str, text: &str) -> ServerToSandbox {
    ServerToSandbox::Run {
        run_id: run_id(id),
        text: text.into(),
        model: model(),
        gateway: gateway("sk-tenant"),
    }
}

pub fn ns(messages: &[SandboxMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.n().unwrap()).collect()
}

pub fn reply(messages: &[SandboxMessage]) -> String {
    messages
        .iter()
        .filter_map(|m| match m {
            SandboxMessage::Event {
                event: Event::MessageDelta { text },
                ..
            } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

pub fn finished(messages: &[SandboxMessage]) -> (TerminalStatus, Option<String>) {
    match messages.last() {
        Some(SandboxMessage::RunFinished {
            status,
            stop_reason,
            ..
        }) => (*status, stop_reason.clone()),
        other => panic!("expected run_finished last, got {other:?}"),
    }
}

/// Reads the workspace message (n = 1) of a first connection and ACKs it.
pub async fn workspace_acked(conn: &mut Conn) {
    match conn.recv().await {
        SandboxMessage::Workspace { n: 1, .. } => conn.ack(1).await,
        other => panic!("expected the workspace message as n = 1, got {other:?}"),
    }
}
