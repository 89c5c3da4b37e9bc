//! The permission broker end to end, over real sockets: the real server (`serve::start_with`,
//! embedded SQLite), the local sandbox provider running the real `switchboard-bridge`, which
//! drives the real `scripted-acp-agent` through `AcpAgentDriver` (its `permission:<tool>` prompt
//! makes a real ACP `session/request_permission`), and WebSocket clients. Each session carries its
//! own policy (`POST /v1/sessions` `"permissions"`). Proven, on what clients receive:
//! - `ask`: the client gets `permission.request`, answers `allow_once`, everyone sees
//!   `permission.resolved` by `client`, the tool runs and the run completes;
//! - `ask` with nobody answering: at the deadline the policy's `ask_default` applies (`timeout`),
//!   the agent hears it and the run completes (never a hang);
//! - `deny` and `auto`: decided by `policy` at once, no `permission.request` reaches a client;
//! - a second client sees the same request; a late or duplicate answer after the resolution is
//!   answered `unknown_request` and changes nothing (one resolution in the log, the session goes
//!   on);
//! - a bad policy is 422 `invalid_permissions` naming the field; the policy is shown by
//!   `GET /v1/sessions/{id}` and survives a server restart.

mod common;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use switchboard_adapters::local_sandbox::{LocalProcessSandboxProvider, LocalSandboxConfig};
use switchboard_adapters::sql::scratch::ScratchDir;
use switchboard_adapters::system_clock::SystemClock;
use switchboard_core::Timestamp;
use switchboard_fakes::sandbox_provider::InMemorySandboxProvider;
use switchboard_ports::SandboxProvider;
use switchboard_server::config::ServeConfig;
use switchboard_server::deployment::OpenOptions;
use switchboard_server::serve::{self, RunningServer};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single wait may take (generous: sandboxes start real processes on a shared
/// machine). A hang is a failure with a message, never a pass.
const WAIT: Duration = Duration::from_secs(60);
const MODEL: &str = "openai/gpt-4o-mini";
/// The agent name sessions ask for; the provider maps it to `scripted-acp-agent`.
const AGENT: &str = "scripted";

// ----- binaries -------------------------------------------------------------------------------

// ----- the server -----------------------------------------------------------------------------

struct Harness {
    server: Option<RunningServer>,
    http: reqwest::Client,
    dir: Arc<ScratchDir>,
}

struct Tenant {
    key: String,
}

impl Harness {
    /// A server with the local sandbox provider (real bridge, scripted ACP agent) and
    /// `permission_timeout_s`.
    async fn local(permission_timeout_s: u64) -> Harness {
        let dir = Arc::new(ScratchDir::create("sb-permissions").expect("a scratch dir"));
        let bridge = common::bridge();
        let agent = common::scripted_agent();
        let sandboxes = LocalSandboxConfig::new(dir.join("data").join("sandboxes"))
            .hide(dir.join("data"))
            .with_bridge(bridge, Vec::new())
            .with_agent_command(AGENT, agent.display().to_string())
            .with_env("RUST_LOG", "info")
            .with_terminate_grace(Duration::from_secs(2));
        let provider = LocalProcessSandboxProvider::new(sandboxes).expect("the local provider");
        Harness::start(dir, Arc::new(provider), |c| {
            c.permission_timeout_s = permission_timeout_s
        })
        .await
    }

    async fn start(
        dir: Arc<ScratchDir>,
        sandboxes: Arc<dyn SandboxProvider>,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> Harness {
        let mut config = ServeConfig::embedded(dir.join("data"));
        configure(&mut config);
        let server = serve::start_with(
            config,
            sandboxes,
            Arc::new(SystemClock::new()),
            OpenOptions::default(),
        )
        .await
        .expect("the server starts");
        Harness {
            server: Some(server),
            http: reqwest::Client::new(),
            dir,
        }
    }

    fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    async fn stop(mut self) -> Arc<ScratchDir> {
        self.server
            .take()
            .expect("running")
            .stop()
            .await
            .expect("a clean stop");
        self.dir.clone()
    }

    async fn tenant(&self, name: &str) -> Tenant {
        let app = &self.server().deployment.app;
        let org = app.create_org(name, None).await.expect("create-org");
        let principal = app
            .authenticate(Some(&format!("Bearer {}", org.api_key)))
            .await
            .unwrap();
        app.put_credential(&principal, "openai", "sk-byok-permissions-test-0042")
            .await
            .unwrap();
        Tenant { key: org.api_key }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("an HTTP answer in time")
            .expect("an HTTP answer");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("a body");
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).expect("a JSON body")
        };
        (status, body)
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        let url = format!("{}{path}", self.server().http_url());
        self.send(self.http.post(url).bearer_auth(key).json(&body))
            .await
    }

    async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.server().http_url());
        self.send(self.http.get(url).bearer_auth(key)).await
    }

    /// `POST /v1/sessions` with `permissions` → the session's id.
    async fn session(&self, t: &Tenant, permissions: Value) -> String {
        let (status, body) = self
            .post(
                "/v1/sessions",
                &t.key,
                json!({"model": MODEL, "agent": AGENT, "permissions": permissions}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("an id").to_string()
    }

    async fn client(&self, sid: &str, t: &Tenant) -> Client {
        let url = format!("{}/v1/sessions/{sid}/ws", self.server().ws_url());
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", t.key).parse().unwrap(),
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("a handshake in time")
            .expect("the socket opens");
        let mut client = Client {
            ws,
            seen: Vec::new(),
        };
        let hello = client.next().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        client
    }

    /// The session's events of type `kind`, from `GET /v1/sessions/{id}/events`.
    async fn events_of(&self, sid: &str, t: &Tenant, kind: &str) -> Vec<Value> {
        let (status, page) = self
            .get(&format!("/v1/sessions/{sid}/events?limit=1000"), &t.key)
            .await;
        assert_eq!(status, 200, "{page}");
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    }
}

// ----- a client -------------------------------------------------------------------------------

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every frame received, in order.
    seen: Vec<Value>,
}

impl Client {
    async fn next(&mut self) -> Value {
        self.next_by(tokio::time::Instant::now() + WAIT).await
    }

    /// The next frame, before `deadline` (a hang is a failure naming what was received).
    async fn next_by(&mut self, deadline: tokio::time::Instant) -> Value {
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no awaited frame within {WAIT:?}; received so far:\n{}",
                        render(&self.seen)
                    )
                });
            match message {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(text.as_str()).expect("JSON frames");
                    self.seen.push(frame.clone());
                    return frame;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!(
                    "the socket ended ({other:?}); received:\n{}",
                    render(&self.seen)
                ),
            }
        }
    }

    /// Frames until one satisfies `done` (returned), all within [`WAIT`]: re-sent critical
    /// events keep a socket busy, so the bound is on the whole wait, not on each frame.
    async fn until(&mut self, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = self.next_by(deadline).await;
            if done(&frame) {
                return frame;
            }
        }
    }

    async fn event(&mut self, kind: &str) -> Value {
        self.until(|f| f["type"] == kind).await
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("the frame is sent");
    }

    async fn prompt(&mut self, text: &str) {
        self.send(json!({"type": "prompt", "text": text})).await;
    }

    /// Every event of `kind` received so far.
    fn seen_of(&self, kind: &str) -> Vec<&Value> {
        self.seen.iter().filter(|f| f["type"] == kind).collect()
    }

    /// The concatenated `message.delta` texts of run `run_id`.
    fn reply(&self, run_id: &Value) -> String {
        self.seen
            .iter()
            .filter(|f| f["type"] == "message.delta" && &f["run_id"] == run_id)
            .filter_map(|f| f["data"]["text"].as_str())
            .collect()
    }
}

fn render(frames: &[Value]) -> String {
    frames
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn timestamp(v: &Value) -> u64 {
    Timestamp::parse_rfc3339(v.as_str().expect("a time string"))
        .expect("an RFC 3339 time")
        .as_millis()
}

// ----- the cases ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn ask_reaches_every_client_and_the_first_answer_decides() {
    let h = Harness::local(60).await;
    let t = h.tenant("Ask").await;
    let policy = json!({"default": "auto", "tools": {"bash": "ask"}, "ask_default": "deny"});
    let sid = h.session(&t, policy.clone()).await;
    let (status, info) = h.get(&format!("/v1/sessions/{sid}"), &t.key).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        info["permissions"], policy,
        "GET shows the session's policy"
    );

    let mut first = h.client(&sid, &t).await;
    let mut second = h.client(&sid, &t).await;
    first.prompt("permission:bash").await;
    let request = first.event("permission.request").await;
    let data = &request["data"];
    assert_eq!(data["tool"], "bash", "{request}");
    assert_eq!(data["input"], json!({"tool": "bash"}), "{request}");
    assert_eq!(
        data["options"],
        json!(["allow_once", "allow_always", "deny"]),
        "{request}"
    );
    let request_id = data["request_id"].clone();
    assert!(request_id.as_str().is_some_and(|r| !r.is_empty()));
    let asked_at = timestamp(&request["at"]);
    let deadline = timestamp(&data["deadline"]);
    assert!(
        (59_000..=61_000).contains(&(deadline - asked_at)),
        "the deadline is the permission timeout away: {request}"
    );
    let run_id = request["run_id"].clone();

    // The second client sees the same request.
    let seen_by_second = second.event("permission.request").await;
    assert_eq!(seen_by_second["data"]["request_id"], request_id);
    assert_eq!(seen_by_second["seq"], request["seq"]);

    first
        .send(json!({"type": "permission", "request_id": request_id, "decision": "allow_once"}))
        .await;
    let resolved = first.event("permission.resolved").await;
    assert_eq!(
        resolved["data"],
        json!({"request_id": request_id, "decision": "allow_once", "by": "client"}),
        "{resolved}"
    );
    let complete = first.event("execution_complete").await;
    assert_eq!(complete["data"]["status"], "completed", "{complete}");
    assert_eq!(complete["run_id"], run_id);
    let calls = first.seen_of("tool_call");
    assert_eq!(calls.len(), 1, "{}", render(&first.seen));
    assert_eq!(calls[0]["data"]["name"], "bash");
    let results = first.seen_of("tool_result");
    assert_eq!(results.len(), 1, "{}", render(&first.seen));
    assert_eq!(results[0]["data"]["status"], "ok");
    assert_eq!(first.reply(&run_id), "permission granted for bash");

    // The second client saw the resolution too; its late answer, and the first client's
    // duplicate, are refused and change nothing.
    let also = second.event("permission.resolved").await;
    assert_eq!(also["seq"], resolved["seq"]);
    second.event("execution_complete").await;
    second
        .send(json!({"type": "permission", "request_id": request_id, "decision": "deny"}))
        .await;
    let refused = second.until(|f| f["type"] == "error").await;
    assert_eq!(refused["code"], "unknown_request", "{refused}");
    first
        .send(json!({"type": "permission", "request_id": request_id, "decision": "allow_always"}))
        .await;
    let refused = first.until(|f| f["type"] == "error").await;
    assert_eq!(refused["code"], "unknown_request", "{refused}");
    let resolutions = h.events_of(&sid, &t, "permission.resolved").await;
    assert_eq!(resolutions.len(), 1, "one resolution: {resolutions:?}");
    assert_eq!(resolutions[0]["data"]["by"], "client");

    // The session goes on: the next ask is answered `deny` and the agent hears it.
    first.prompt("permission:bash").await;
    let request = first.event("permission.request").await;
    assert_ne!(request["data"]["request_id"], request_id, "a new request");
    second
        .send(json!({"type": "permission", "request_id": request["data"]["request_id"], "decision": "deny"}))
        .await;
    let resolved = first.event("permission.resolved").await;
    assert_eq!(resolved["data"]["decision"], "deny");
    assert_eq!(resolved["data"]["by"], "client");
    let complete = first.event("execution_complete").await;
    assert_eq!(complete["data"]["status"], "completed", "{complete}");
    assert_eq!(
        first.reply(&request["run_id"]),
        "permission denied for bash"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_ask_takes_the_policy_default_at_its_deadline() {
    let h = Harness::local(2).await;
    let t = h.tenant("Nobody answers").await;
    // `ask` for everything, the default `ask_default` (deny).
    let sid = h.session(&t, json!({"default": "ask"})).await;
    let mut client = h.client(&sid, &t).await;
    client.prompt("permission:bash").await;
    let request = client.event("permission.request").await;
    let resolved = client.event("permission.resolved").await;
    assert_eq!(
        resolved["data"],
        json!({"request_id": request["data"]["request_id"], "decision": "deny", "by": "timeout"}),
        "{resolved}"
    );
    assert!(
        timestamp(&resolved["at"]) >= timestamp(&request["data"]["deadline"]),
        "resolved at the deadline, not before: {request} {resolved}"
    );
    let complete = client.event("execution_complete").await;
    assert_eq!(complete["data"]["status"], "completed", "{complete}");
    assert_eq!(
        client.reply(&request["run_id"]),
        "permission denied for bash"
    );
    assert!(
        client.seen_of("tool_call").is_empty(),
        "a denied tool never runs"
    );

    // An `ask_default` of `allow_once` lets the tool run when nobody answers.
    let sid = h
        .session(&t, json!({"default": "ask", "ask_default": "allow_once"}))
        .await;
    let mut client = h.client(&sid, &t).await;
    client.prompt("permission:edit").await;
    let request = client.event("permission.request").await;
    let resolved = client.event("permission.resolved").await;
    assert_eq!(resolved["data"]["decision"], "allow_once", "{resolved}");
    assert_eq!(resolved["data"]["by"], "timeout", "{resolved}");
    let complete = client.event("execution_complete").await;
    assert_eq!(complete["data"]["status"], "completed", "{complete}");
    assert_eq!(
        client.reply(&request["run_id"]),
        "permission granted for edit"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_and_auto_are_decided_by_the_policy_without_asking() {
    let h = Harness::local(60).await;
    let t = h.tenant("Policy").await;
    let sid = h
        .session(&t, json!({"default": "auto", "tools": {"bash": "deny"}}))
        .await;
    let mut client = h.client(&sid, &t).await;
    client.prompt("permission:bash").await;
    let resolved = client.event("permission.resolved").await;
    assert_eq!(resolved["data"]["decision"], "deny", "{resolved}");
    assert_eq!(resolved["data"]["by"], "policy", "{resolved}");
    let complete = client.event("execution_complete").await;
    assert_eq!(complete["data"]["status"], "completed", "{complete}");
    assert_eq!(
        client.reply(&resolved["run_id"]),
        "permission denied for bash"
    );

    client.prompt("permission:edit").await;
    let resolved = client
        .until(|f| f["type"] == "permission.resolved" && f["data"]["decision"] == "allow_once")
        .await;
    assert_eq!(resolved["data"]["by"], "policy", "{resolved}");
    client.event("execution_complete").await;
    assert_eq!(
        client.reply(&resolved["run_id"]),
        "permission granted for edit"
    );
    assert!(
        client.seen_of("permission.request").is_empty(),
        "no client is asked under auto or deny:\n{}",
        render(&client.seen)
    );
    assert!(h.events_of(&sid, &t, "permission.request").await.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_policies_are_refused_and_a_policy_survives_a_restart() {
    let dir = Arc::new(ScratchDir::create("sb-permissions").expect("a scratch dir"));
    let h = Harness::start(dir, Arc::new(InMemorySandboxProvider::new()), |_| {}).await;
    let t = h.tenant("Policies").await;
    for (policy, field) in [
        (json!({"default": "sometimes"}), "permissions.default"),
        (
            json!({"tools": {"bash": "maybe"}}),
            "permissions.tools.bash",
        ),
        (json!({"ask_default": "allow"}), "permissions.ask_default"),
        (json!({"tools": {" ": "ask"}}), "permissions.tools"),
    ] {
        let (status, body) = h
            .post(
                "/v1/sessions",
                &t.key,
                json!({"model": MODEL, "permissions": policy}),
            )
            .await;
        assert_eq!(status, 422, "{policy}: {body}");
        assert_eq!(body["error"]["code"], "invalid_permissions", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message} should name {field}");
    }
    let (status, body) = h
        .post(
            "/v1/sessions",
            &t.key,
            json!({"model": MODEL, "permissions": {"tools": ["bash"]}}),
        )
        .await;
    assert_eq!(status, 400, "a policy of the wrong shape: {body}");
    let (_, sessions) = h.get("/v1/sessions", &t.key).await;
    assert_eq!(
        sessions["sessions"],
        json!([]),
        "no refused policy made a session"
    );

    // Without a policy, the server's: `auto` for every tool, `deny` when nobody answers.
    let (status, plain) = h
        .post("/v1/sessions", &t.key, json!({"model": MODEL}))
        .await;
    assert_eq!(status, 201, "{plain}");
    assert_eq!(
        plain["permissions"],
        json!({"default": "auto", "tools": {}, "ask_default": "deny"})
    );
    let policy = json!({"default": "deny", "tools": {"bash": "ask", "read": "auto"}, "ask_default": "allow_always"});
    let sid = h.session(&t, policy.clone()).await;

    // A new server process on the same data reads the sessions back from their stores.
    let dir = h.stop().await;
    let h = Harness::start(dir, Arc::new(InMemorySandboxProvider::new()), |_| {}).await;
    let (status, info) = h.get(&format!("/v1/sessions/{sid}"), &t.key).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(
        info["permissions"], policy,
        "the policy was persisted with the session"
    );
    let (_, info) = h
        .get(
            &format!("/v1/sessions/{}", plain["id"].as_str().unwrap()),
            &t.key,
        )
        .await;
    assert_eq!(info["permissions"]["default"], "auto");
    h.stop().await;
}
