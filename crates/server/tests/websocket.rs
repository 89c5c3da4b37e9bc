//! End-to-end tests of the server over real sockets: the real axum server on an ephemeral loopback
//! port with real SQLite (and Postgres when `DATABASE_URL` is set), a real WebSocket client, and a
//! scripted sandbox that dials back over the sandbox WebSocket with the token the sandbox provider
//! was handed. They prove the lifecycle (create → dial-back → prompt → streamed events →
//! `execution_complete` → queued second prompt → reconnect with `after` and exact replay → the run
//! at `GET /v1/runs/{id}`), hibernation and rehydration without a lost event, the run watchdog, a
//! ledger outage healed by the outbox, and the sockets' edges (bad tokens, bad frames, 1009, other
//! tenants, slow clients).

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_adapters::sql::scratch::{postgres_gate, ScratchDir, ScratchPostgres};
use switchboard_adapters::system_clock::SystemClock;
use switchboard_core::protocol::client::ControlFrame;
use switchboard_core::protocol::{
    Event, EventEnvelope, SandboxMessage, SandboxStatus, ServerFrame, ServerToSandbox,
    SessionStatus, SpawnSpec, TerminalStatus, Usage, MAX_FRAME_BYTES,
};
use switchboard_core::run::RunRecord;
use switchboard_core::session::SessionInfo;
use switchboard_core::tenancy::{SessionKey, TenantContext};
use switchboard_core::{RunId, SandboxId, SessionId};
use switchboard_fakes::sandbox_provider::InMemorySandboxProvider;
use switchboard_ports::record::{Recorded, RunQuery};
use switchboard_ports::runtime::CLIENT_BUFFER;
use switchboard_ports::{RunLedger, RunLedgerError};
use switchboard_server::app::App;
use switchboard_server::config::ServeConfig;
use switchboard_server::deployment::OpenOptions;
use switchboard_server::scripted::Script;
use switchboard_server::serve::{self, RunningServer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single wait may take: a hang is a failure, never a pass.
const WAIT: Duration = Duration::from_secs(20);
/// A model the embedded price table knows, so runs have a cost.
const MODEL: &str = "openai/gpt-4o-mini";
/// The BYOK key each tenant stores; it must reach the sandbox's `run` frames.
const BYOK_KEY: &str = "sk-byok-websocket-test-0000000042";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ----- the server -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Whether the Postgres half can run. Under `CI=true` a missing Postgres is a failure; elsewhere the
/// reason is printed and the half is skipped.
fn postgres_available() -> bool {
    match postgres_gate() {
        Ok(()) => true,
        Err(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must provide Postgres: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping the Postgres half: {reason}");
            false
        }
    }
}

/// A real server with its data and its (in-memory) sandbox provider.
struct Harness {
    server: Option<RunningServer>,
    sandboxes: Arc<InMemorySandboxProvider>,
    http: reqwest::Client,
    _pg: Option<ScratchPostgres>,
    _dir: ScratchDir,
}

struct Tenant {
    org_id: String,
    key: String,
    tenant: TenantContext,
}

impl Harness {
    async fn start(backend: Backend, configure: impl FnOnce(&mut ServeConfig)) -> Harness {
        Harness::start_with(backend, configure, OpenOptions::default()).await
    }

    async fn start_with(
        backend: Backend,
        configure: impl FnOnce(&mut ServeConfig),
        options: OpenOptions,
    ) -> Harness {
        let dir = ScratchDir::create("sb-ws").expect("a scratch dir");
        let mut config = ServeConfig::embedded(dir.path().to_path_buf());
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let pg = ScratchPostgres::create()
                    .await
                    .expect("a scratch Postgres database");
                config.database_url = Some(pg.url.clone());
                Some(pg)
            }
        };
        configure(&mut config);
        let sandboxes = Arc::new(InMemorySandboxProvider::new());
        let server = serve::start_with(
            config,
            sandboxes.clone(),
            Arc::new(SystemClock::new()),
            options,
        )
        .await
        .expect("the server starts");
        serve::install_crypto_provider();
        Harness {
            server: Some(server),
            sandboxes,
            http: reqwest::Client::new(),
            _pg: pg,
            _dir: dir,
        }
    }

    fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    fn app(&self) -> &App {
        &self.server().deployment.app
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server().http_url())
    }

    fn ws(&self, path: &str) -> String {
        format!("{}{path}", self.server().ws_url())
    }

    /// A fresh org (through the operator's `create-org`) with a stored BYOK key for `openai`.
    async fn tenant(&self, name: &str) -> Tenant {
        let org = self.app().create_org(name, None).await.expect("create-org");
        let principal = self
            .app()
            .authenticate(Some(&format!("Bearer {}", org.api_key)))
            .await
            .expect("the new key works");
        self.app()
            .put_credential(&principal, "openai", BYOK_KEY)
            .await
            .expect("a BYOK key");
        Tenant {
            org_id: org.org_id.to_string(),
            key: org.api_key,
            tenant: principal.tenant(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("an HTTP answer in time")
            .expect("an HTTP answer");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("a body");
        (
            status,
            if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).expect("a JSON body")
            },
        )
    }

    async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path)).bearer_auth(key))
            .await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(self.url(path)).bearer_auth(key).json(&body))
            .await
    }

    /// `POST /v1/sessions` → the new session's id.
    async fn create_session(&self, t: &Tenant) -> String {
        let (status, body) = self
            .post("/v1/sessions", &t.key, json!({"model": MODEL}))
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["model"], MODEL);
        body["id"].as_str().expect("an id").to_string()
    }

    /// `GET /v1/sessions/{id}`.
    async fn info(&self, t: &Tenant, sid: &str) -> SessionInfo {
        let (status, body) = self.get(&format!("/v1/sessions/{sid}"), &t.key).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).expect("a session")
    }

    /// The `index`th sandbox the provider was asked for, once it has been.
    async fn spawned(&self, index: usize) -> (SandboxId, SpawnSpec) {
        eventually("the sandbox spawn", || async {
            self.sandboxes.spawned().into_iter().nth(index)
        })
        .await
    }

    /// `GET /v1/runs/{id}` once the outbox has flushed the run to the ledger.
    async fn ledger_run(&self, t: &Tenant, run_id: &RunId) -> RunRecord {
        let path = format!("/v1/runs/{run_id}");
        let body = eventually("the run in the ledger", || async {
            let (status, body) = self.get(&path, &t.key).await;
            (status == 200).then_some(body)
        })
        .await;
        serde_json::from_value(body).expect("a run record")
    }

    fn key(&self, t: &Tenant, sid: &str) -> SessionKey {
        t.tenant.session(SessionId::parse(sid).unwrap())
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(WAIT, server.stop()).await;
        }
    }
}

/// Polls `probe` (a state read, not an event) every few milliseconds until it answers, for at most
/// [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The HTTP status a refused WebSocket handshake answered.
fn refused_status(error: WsError) -> u16 {
    match error {
        WsError::Http(response) => response.status().as_u16(),
        other => panic!("the handshake failed without an HTTP answer: {other}"),
    }
}

async fn dial(url: &str, bearer: Option<&str>) -> Result<Ws, u16> {
    let mut request = url.into_client_request().expect("a ws:// URL");
    if let Some(token) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("a handshake answer in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(e) => Err(refused_status(e)),
    }
}

// ----- the client -----------------------------------------------------------------------------

/// What a client socket yields.
#[derive(Debug)]
enum Incoming {
    Frame(ServerFrame),
    Closed(Option<(u16, String)>),
}

/// A WebSocket client of one session; `seen` holds every frame it received, in order.
struct Client {
    ws: Ws,
    seen: Vec<ServerFrame>,
}

impl Client {
    async fn connect(h: &Harness, sid: &str, key: &str, after: Option<u64>) -> Result<Client, u16> {
        let query = after.map(|a| format!("?after={a}")).unwrap_or_default();
        let ws = dial(&h.ws(&format!("/v1/sessions/{sid}/ws{query}")), Some(key)).await?;
        Ok(Client {
            ws,
            seen: Vec::new(),
        })
    }

    /// Authenticated by `?token=` instead of a header (as browsers do).
    async fn connect_with_query_token(
        h: &Harness,
        sid: &str,
        key: &str,
        after: u64,
    ) -> Result<Client, u16> {
        let ws = dial(
            &h.ws(&format!("/v1/sessions/{sid}/ws?after={after}&token={key}")),
            None,
        )
        .await?;
        Ok(Client {
            ws,
            seen: Vec::new(),
        })
    }

    async fn next(&mut self) -> Incoming {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    let frame: ServerFrame = serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("a server frame ({e}): {text}"));
                    self.seen.push(frame.clone());
                    return Incoming::Frame(frame);
                }
                Some(Ok(Message::Close(close))) => {
                    return Incoming::Closed(
                        close.map(|c| (u16::from(c.code), c.reason.to_string())),
                    )
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("the server sent a non-text frame: {other:?}"),
                Some(Err(e)) => panic!("the client socket broke: {e}"),
                None => return Incoming::Closed(None),
            }
        }
    }

    async fn frame(&mut self) -> ServerFrame {
        match self.next().await {
            Incoming::Frame(frame) => frame,
            Incoming::Closed(close) => panic!("the server closed the client socket: {close:?}"),
        }
    }

    /// Reads until a frame satisfies `stop`, and returns that frame.
    async fn until(&mut self, stop: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            let frame = self.frame().await;
            if stop(&frame) {
                return frame;
            }
        }
    }

    /// Reads until an event with seq ≥ `seq` arrived.
    async fn through(&mut self, seq: u64) {
        if events(&self.seen).last().is_some_and(|e| e.seq >= seq) {
            return;
        }
        self.until(|f| matches!(f, ServerFrame::Event(e) if e.seq >= seq))
            .await;
    }

    async fn send_json(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("the frame goes out");
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain to the server's close so that the server has seen ours.
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

fn events(frames: &[ServerFrame]) -> Vec<EventEnvelope> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Event(e) => Some(e.clone()),
            ServerFrame::Control(_) => None,
        })
        .collect()
}

fn hello(frame: &ServerFrame) -> (SessionStatus, u64) {
    match frame {
        ServerFrame::Control(ControlFrame::Hello {
            status, last_seq, ..
        }) => (*status, *last_seq),
        other => panic!("not a hello: {other:?}"),
    }
}

fn is_type(frame: &ServerFrame, name: &str) -> bool {
    matches!(frame, ServerFrame::Event(e) if e.event.type_name() == name)
}

fn completion_status(frame: &ServerFrame) -> Option<TerminalStatus> {
    match frame {
        ServerFrame::Event(EventEnvelope {
            event: Event::ExecutionComplete { status, .. },
            ..
        }) => Some(*status),
        _ => None,
    }
}

fn error_code(frame: &ServerFrame) -> Option<&str> {
    match frame {
        ServerFrame::Control(ControlFrame::Error { code, .. }) => Some(code),
        _ => None,
    }
}

// ----- the scripted sandbox -------------------------------------------------------------------

/// A sandbox played over the sandbox WebSocket, as the bridge would.
struct Sandbox {
    ws: Ws,
    n: u64,
    received: Vec<ServerToSandbox>,
}

impl Sandbox {
    async fn dial(url: &str, token: Option<&str>) -> Result<Sandbox, u16> {
        Ok(Sandbox {
            ws: dial(url, token).await?,
            n: 0,
            received: Vec::new(),
        })
    }

    /// Dials the spec's callback URL with its token and says hello.
    async fn dial_back(id: &SandboxId, spec: &SpawnSpec) -> Sandbox {
        let mut sandbox = Sandbox::dial(&spec.callback_url, Some(&spec.token))
            .await
            .expect("the dial-back is accepted");
        sandbox
            .send(SandboxMessage::Hello {
                sandbox_id: id.clone(),
                agent: "scripted".into(),
                agent_version: "1".into(),
            })
            .await;
        sandbox
    }

    async fn send(&mut self, message: SandboxMessage) {
        self.ws
            .send(Message::text(serde_json::to_string(&message).unwrap()))
            .await
            .expect("the frame goes out");
    }

    fn number(&mut self) -> u64 {
        self.n += 1;
        self.n
    }

    /// The next frame from the server; `None` once it closed the socket.
    async fn next(&mut self) -> Option<ServerToSandbox> {
        self.next_or_close().await.ok()
    }

    /// The next frame, or the close code and reason.
    async fn next_or_close(&mut self) -> Result<ServerToSandbox, Option<(u16, String)>> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a sandbox frame in time")
            {
                Some(Ok(Message::Text(text))) => {
                    let frame: ServerToSandbox =
                        serde_json::from_str(text.as_str()).expect("a server-to-sandbox frame");
                    self.received.push(frame.clone());
                    return Ok(frame);
                }
                Some(Ok(Message::Close(close))) => {
                    return Err(close.map(|c| (u16::from(c.code), c.reason.to_string())))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    async fn next_run(&mut self) -> (RunId, String) {
        loop {
            match self.next().await.expect("the sandbox socket stays open") {
                ServerToSandbox::Run { run_id, text, .. } => return (run_id, text),
                _ => continue,
            }
        }
    }

    /// Plays `script` for `run_id`: tool call and result, the reply's deltas, `run_finished`.
    async fn play(&mut self, run_id: &RunId, script: &Script) {
        if let Some((command, output)) = &script.tool {
            let call_id = switchboard_core::CallId::parse(format!("call_{}", self.n + 1)).unwrap();
            let n = self.number();
            let event = Event::ToolCall {
                call_id: call_id.clone(),
                name: "bash".into(),
                input: json!({"command": command}),
            };
            self.send(SandboxMessage::Event {
                run_id: run_id.clone(),
                n,
                event,
            })
            .await;
            let n = self.number();
            let event = Event::ToolResult {
                call_id,
                status: switchboard_core::protocol::ToolStatus::Ok,
                output: json!(output),
            };
            self.send(SandboxMessage::Event {
                run_id: run_id.clone(),
                n,
                event,
            })
            .await;
        }
        for piece in &script.reply {
            let n = self.number();
            self.send(SandboxMessage::Event {
                run_id: run_id.clone(),
                n,
                event: Event::MessageDelta {
                    text: piece.clone(),
                },
            })
            .await;
        }
        let n = self.number();
        let finished = SandboxMessage::RunFinished {
            run_id: run_id.clone(),
            n,
            status: TerminalStatus::Completed,
            stop_reason: Some("end_turn".into()),
            usage: script.usage,
            error: None,
        };
        self.send(finished).await;
    }

    /// Reads until the server ACKs `n` (the message is durable).
    async fn acked(&mut self, n: u64) {
        loop {
            match self.next().await.expect("the sandbox socket stays open") {
                ServerToSandbox::Ack { n: acked } if acked >= n => return,
                _ => continue,
            }
        }
    }
}

// ----- the journey ----------------------------------------------------------------------------

async fn journey(backend: Backend) {
    let h = Harness::start(backend, |_| {}).await;
    let t = h.tenant("Journey").await;
    let sid = h.create_session(&t).await;

    // The client attaches while the sandbox provisions.
    let mut client = Client::connect(&h, &sid, &t.key, None)
        .await
        .expect("the client attaches");
    let first = client.frame().await;
    assert!(
        matches!(&first, ServerFrame::Control(ControlFrame::Hello { session_id, .. }) if session_id.as_str() == sid),
        "{first:?}"
    );

    // The provider was handed a callback URL on this server and a token; the sandbox dials back.
    let (sandbox_id, spec) = h.spawned(0).await;
    assert_eq!(
        spec.callback_url,
        h.ws(&format!("/sandbox/v1/sessions/{}/{sid}/ws", t.org_id))
    );
    assert_eq!(spec.session_key, format!("{}:{sid}", t.org_id));
    let mut sandbox = Sandbox::dial_back(&sandbox_id, &spec).await;
    client
        .until(|f| {
            matches!(
                f,
                ServerFrame::Event(EventEnvelope {
                    event: Event::SandboxStatus {
                        status: SandboxStatus::Connected,
                        ..
                    },
                    ..
                })
            )
        })
        .await;

    // The first prompt over the client socket, the second over HTTP: it waits in the queue.
    client.send_json(json!({"type": "prompt", "text": "List the files, then say hello.", "client_msg_id": "msg-1"})).await;
    let queued = client.until(|f| is_type(f, "run.queued")).await;
    let ServerFrame::Event(EventEnvelope {
        run_id: Some(run1),
        event:
            Event::RunQueued {
                position,
                client_msg_id,
                ..
            },
        ..
    }) = queued
    else {
        panic!("not a run.queued event: {queued:?}");
    };
    assert_eq!(position, 0);
    assert_eq!(
        client_msg_id.as_ref().map(|c| c.as_str()),
        Some("msg-1"),
        "run.queued echoes the client_msg_id"
    );
    let (status, body) = h
        .post(
            &format!("/v1/sessions/{sid}/prompts"),
            &t.key,
            json!({"text": "Now say goodbye."}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["position"], 1,
        "the second prompt waits behind the first"
    );
    let run2 = RunId::parse(body["run_id"].as_str().unwrap()).unwrap();

    // The sandbox plays both runs, one at a time.
    let scripts = [
        Script::reply_with_tool(
            "Hello! The workspace holds README.md and src/.",
            "ls",
            "README.md\nsrc\n",
        ),
        Script::reply_with_tool("Goodbye, and thanks for the chat.", "echo bye", "bye\n"),
    ];
    for (expected, script) in [&run1, &run2].into_iter().zip(&scripts) {
        let (run_id, _text) = sandbox.next_run().await;
        assert_eq!(&run_id, expected, "runs are dispatched in FIFO order");
        sandbox.play(&run_id, script).await;
    }
    let mut completions = 0;
    while completions < 2 {
        if completion_status(&client.frame().await).is_some() {
            completions += 1;
        }
    }
    // And whatever the session said after the second completion.
    let last = h.info(&t, &sid).await.last_seq;
    client.through(last).await;

    // Every event arrived once, in order, from seq 1.
    let live = events(&client.seen);
    let seqs: Vec<u64> = live.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seqs start at 1 with no gap or repeat"
    );
    let of_run = |run: &RunId| {
        live.iter()
            .filter(|e| e.run_id.as_ref() == Some(run))
            .cloned()
            .collect::<Vec<_>>()
    };
    let types: Vec<&str> = of_run(&run1).iter().map(|e| e.event.type_name()).collect();
    assert_eq!(
        types,
        [
            "run.queued",
            "run.started",
            "tool_call",
            "tool_result",
            "message.delta",
            "message.delta",
            "message.delta",
            "execution_complete"
        ],
        "the first run streamed its tool call, its result and its reply"
    );
    let reply: String = of_run(&run1)
        .iter()
        .filter_map(|e| match &e.event {
            Event::MessageDelta { text } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reply, "Hello! The workspace holds README.md and src/.");
    let done1 = of_run(&run1).last().cloned().unwrap();
    assert!(done1.critical, "execution_complete is critical");
    let Event::ExecutionComplete {
        status,
        usage,
        cost_micros,
        ..
    } = &done1.event
    else {
        unreachable!()
    };
    assert_eq!(*status, TerminalStatus::Completed);
    assert_eq!(
        *usage,
        Usage {
            input_tokens: 120,
            output_tokens: 30
        }
    );
    assert!(*cost_micros > 0, "the price table prices {MODEL}");
    let started2 = of_run(&run2)
        .into_iter()
        .find(|e| e.event.type_name() == "run.started")
        .expect("the second run started");
    assert!(
        started2.seq > done1.seq,
        "one run at a time: the second starts after the first completes"
    );
    assert_eq!(
        completion_status(&ServerFrame::Event(of_run(&run2).last().cloned().unwrap())),
        Some(TerminalStatus::Completed)
    );

    // The sandbox received each run with the tenant's own key for the model.
    let runs: Vec<_> = sandbox
        .received
        .iter()
        .filter(|f| matches!(f, ServerToSandbox::Run { .. }))
        .collect();
    assert_eq!(runs.len(), 2);
    for run in runs {
        let ServerToSandbox::Run { model, gateway, .. } = run else {
            unreachable!()
        };
        assert_eq!(model.to_string(), MODEL);
        assert_eq!(gateway.api_key.as_deref(), Some(BYOK_KEY));
    }

    // The client ACKs everything, hangs up, and a new client resumes after the first completion
    // (authenticated by `?token=`): exactly the later events, in order, once each.
    assert_eq!(last, seqs.len() as u64);
    client.send_json(json!({"type": "ack", "seq": last})).await;
    client.close().await;
    let mut resumed = Client::connect_with_query_token(&h, &sid, &t.key, done1.seq)
        .await
        .expect("the client resumes");
    let (_, last_seq) = hello(&resumed.frame().await);
    assert_eq!(last_seq, last, "hello names the last seq");
    resumed.through(last).await;
    let replayed = events(&resumed.seen);
    let expected: Vec<EventEnvelope> = live.iter().filter(|e| e.seq > done1.seq).cloned().collect();
    assert_eq!(
        replayed, expected,
        "the replay after {} is exact",
        done1.seq
    );

    // A prompt re-sent with its client_msg_id after the reconnect is not queued twice: the pong
    // that answers the next ping is the next frame.
    resumed.send_json(json!({"type": "prompt", "text": "List the files, then say hello.", "client_msg_id": "msg-1"})).await;
    resumed.send_json(json!({"type": "ping"})).await;
    let next = resumed.frame().await;
    assert_eq!(
        next,
        ServerFrame::Control(ControlFrame::Pong),
        "nothing was queued for the re-sent prompt"
    );
    assert_eq!(h.info(&t, &sid).await.queue_length, 0);

    // Both runs are in the ledger once, with their events in seq order, as they were streamed.
    for run in [&run1, &run2] {
        let record = h.ledger_run(&t, run).await;
        assert_eq!(&record.run_id, run);
        assert_eq!(record.session_id.as_str(), sid);
        assert_eq!(record.org_id.to_string(), t.org_id);
        assert_eq!(record.status, TerminalStatus::Completed);
        assert_eq!(record.event_count as usize, record.events.len());
        assert_eq!(
            record.events,
            of_run(run),
            "the ledger's events are the streamed events, in seq order"
        );
    }
    let (status, body) = h.get(&format!("/v1/runs?session_id={sid}"), &t.key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["runs"].as_array().map(Vec::len),
        Some(2),
        "each run recorded exactly once: {body}"
    );

    resumed.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journey_over_real_sockets_on_sqlite() {
    journey(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journey_over_real_sockets_on_postgres() {
    if postgres_available() {
        journey(Backend::Postgres).await;
    }
}

// ----- hibernation ----------------------------------------------------------------------------

async fn hibernation(backend: Backend) {
    let h = Harness::start(backend, |c| {
        c.hibernate_after_s = 1;
        c.sandbox_idle_timeout_s = 1;
    })
    .await;
    let t = h.tenant("Sleepy").await;
    let sid = h.create_session(&t).await;
    let key = h.key(&t, &sid);
    let mut client = Client::connect(&h, &sid, &t.key, None).await.unwrap();
    hello(&client.frame().await);
    let (sandbox_id, spec) = h.spawned(0).await;
    let mut sandbox = Sandbox::dial_back(&sandbox_id, &spec).await;
    client
        .send_json(json!({"type": "prompt", "text": "Say hello."}))
        .await;
    let (run1, _) = sandbox.next_run().await;
    sandbox
        .play(
            &run1,
            &Script::reply_with_tool("Hello there.", "pwd", "/work\n"),
        )
        .await;
    client.until(|f| completion_status(f).is_some()).await;

    // Idle, the sandbox is shut down; it hangs up. The client hangs up too.
    loop {
        match sandbox.next_or_close().await {
            Ok(ServerToSandbox::Shutdown) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    client
        .until(|f| {
            matches!(
                f,
                ServerFrame::Event(EventEnvelope {
                    event: Event::SandboxStatus {
                        status: SandboxStatus::Terminated,
                        ..
                    },
                    ..
                })
            )
        })
        .await;
    drop(sandbox);
    client.through(h.info(&t, &sid).await.last_seq).await;
    let seen_live = events(&client.seen);
    client
        .send_json(json!({"type": "ack", "seq": seen_live.last().unwrap().seq}))
        .await;
    client.close().await;

    // With no client, no run and no sandbox, the session leaves memory.
    let host = h.server().deployment.host.clone();
    eventually("the session to hibernate", || async {
        (!host.is_live(&key)).then_some(())
    })
    .await;

    // Reattaching rehydrates it from its store: every event, exactly as streamed.
    let mut back = Client::connect(&h, &sid, &t.key, Some(0))
        .await
        .expect("the session rehydrates");
    assert!(host.is_live(&key));
    let (_, last_seq) = hello(&back.frame().await);
    assert_eq!(
        last_seq,
        seen_live.last().unwrap().seq,
        "nothing was lost or added while hibernating"
    );
    back.through(last_seq).await;
    assert_eq!(
        events(&back.seen),
        seen_live,
        "the replay after rehydration is every event, exactly"
    );

    // And it carries on: a new prompt gets a new sandbox, which is given the conversation so far.
    back.send_json(json!({"type": "prompt", "text": "And goodbye."}))
        .await;
    let (sandbox_id, spec) = h.spawned(1).await;
    let mut sandbox = Sandbox::dial_back(&sandbox_id, &spec).await;
    let (run2, _) = sandbox.next_run().await;
    assert!(
        sandbox
            .received
            .iter()
            .any(|f| matches!(f, ServerToSandbox::Restore { turns } if !turns.is_empty())),
        "the new sandbox is restored"
    );
    sandbox
        .play(&run2, &Script::reply_with_tool("Goodbye.", "true", ""))
        .await;
    back.until(|f| completion_status(f).is_some()).await;
    let all = events(&back.seen);
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seqs carry on after rehydration with no gap"
    );
    h.ledger_run(&t, &run1).await;
    assert_eq!(
        h.ledger_run(&t, &run2).await.status,
        TerminalStatus::Completed
    );
    back.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernation_and_rehydration_lose_no_event_on_sqlite() {
    hibernation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernation_and_rehydration_lose_no_event_on_postgres() {
    if postgres_available() {
        hibernation(Backend::Postgres).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_sandbox_never_dials_back_hibernates_and_rehydrates() {
    let h = Harness::start(Backend::Sqlite, |c| {
        c.hibernate_after_s = 1;
        c.spawn_timeout_s = 1;
    })
    .await;
    let t = h.tenant("Never").await;
    let sid = h.create_session(&t).await;
    let key = h.key(&t, &sid);
    let mut client = Client::connect(&h, &sid, &t.key, None).await.unwrap();
    hello(&client.frame().await);
    // Every spawn attempt times out; the sandbox ends `terminated` and the client leaves.
    client
        .until(|f| {
            matches!(
                f,
                ServerFrame::Event(EventEnvelope {
                    event: Event::SandboxStatus {
                        status: SandboxStatus::Terminated,
                        ..
                    },
                    ..
                })
            )
        })
        .await;
    client.through(h.info(&t, &sid).await.last_seq).await;
    let seen_live = events(&client.seen);
    client.close().await;
    let host = h.server().deployment.host.clone();
    eventually("the session to hibernate", || async {
        (!host.is_live(&key)).then_some(())
    })
    .await;
    let mut back = Client::connect(&h, &sid, &t.key, None).await.unwrap();
    let (_, last_seq) = hello(&back.frame().await);
    back.through(last_seq).await;
    assert_eq!(events(&back.seen), seen_live);
    back.close().await;
    h.stop().await;
}

// ----- watchdog -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sandbox_times_the_run_out() {
    let h = Harness::start(Backend::Sqlite, |c| c.run_idle_timeout_s = 1).await;
    let t = h.tenant("Watchdog").await;
    let sid = h.create_session(&t).await;
    let mut client = Client::connect(&h, &sid, &t.key, None).await.unwrap();
    hello(&client.frame().await);
    let (sandbox_id, spec) = h.spawned(0).await;
    let mut sandbox = Sandbox::dial_back(&sandbox_id, &spec).await;
    client
        .send_json(json!({"type": "prompt", "text": "Think forever."}))
        .await;
    // The sandbox takes the run and goes silent.
    let (run_id, _) = sandbox.next_run().await;
    let done = client.until(|f| completion_status(f).is_some()).await;
    let ServerFrame::Event(EventEnvelope {
        event: Event::ExecutionComplete { status, error, .. },
        run_id: Some(done_run),
        ..
    }) = &done
    else {
        unreachable!()
    };
    assert_eq!(done_run, &run_id);
    assert_eq!(*status, TerminalStatus::TimedOut);
    assert_eq!(
        error.as_ref().map(|e| e.code.as_str()),
        Some("run_idle_timeout")
    );
    // The agent is told to stop, and the ledger has the timed-out run.
    loop {
        match sandbox.next().await.expect("the sandbox socket stays open") {
            ServerToSandbox::Cancel { run_id: cancelled } => {
                assert_eq!(cancelled, run_id);
                break;
            }
            _ => continue,
        }
    }
    let record = h.ledger_run(&t, &run_id).await;
    assert_eq!(record.status, TerminalStatus::TimedOut);
    assert_eq!(
        record.events.last().map(|e| e.event.type_name()),
        Some("execution_complete")
    );
    client.close().await;
    h.stop().await;
}

// ----- the ledger outbox ----------------------------------------------------------------------

/// What the outage ledger did with one `record` call.
#[derive(Debug, Clone, PartialEq)]
enum Attempt {
    /// Refused as unavailable; nothing written.
    Down,
    /// Written, but the answer was lost (the caller saw unavailable).
    LostAnswer,
    /// Passed through to the real ledger.
    Answered(Recorded),
}

/// A run ledger in front of the real one that plays a scripted outage on `record` (first the
/// `script`, then the real ledger), and reports every attempt. Reads pass through.
struct OutageLedger {
    inner: Arc<dyn RunLedger>,
    script: Mutex<VecDeque<Attempt>>,
    attempts: watch::Sender<Vec<Attempt>>,
}

#[async_trait]
impl RunLedger for OutageLedger {
    async fn record(&self, run: &RunRecord) -> Result<Recorded, RunLedgerError> {
        let planned = self.script.lock().unwrap().pop_front();
        let (attempt, result) = match planned {
            Some(Attempt::Down) => (
                Attempt::Down,
                Err(RunLedgerError::Unavailable("the ledger is down".into())),
            ),
            Some(Attempt::LostAnswer) => {
                self.inner.record(run).await?;
                (
                    Attempt::LostAnswer,
                    Err(RunLedgerError::Unavailable("the answer was lost".into())),
                )
            }
            Some(Attempt::Answered(_)) | None => {
                let recorded = self.inner.record(run).await?;
                (Attempt::Answered(recorded), Ok(recorded))
            }
        };
        self.attempts.send_modify(|log| log.push(attempt));
        result
    }

    async fn get(&self, tenant: &TenantContext, run: &RunId) -> Result<RunRecord, RunLedgerError> {
        self.inner.get(tenant, run).await
    }

    async fn list(
        &self,
        tenant: &TenantContext,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, RunLedgerError> {
        self.inner.list(tenant, query).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_outage_is_healed_by_the_outbox_with_exactly_one_record() {
    let (attempts, mut log) = watch::channel(Vec::new());
    let inner_slot: Arc<Mutex<Option<Arc<dyn RunLedger>>>> = Arc::default();
    let slot = inner_slot.clone();
    let options = OpenOptions {
        wrap_ledger: Some(Box::new(move |inner: Arc<dyn RunLedger>| {
            *slot.lock().unwrap() = Some(inner.clone());
            let script = VecDeque::from([Attempt::Down, Attempt::LostAnswer]);
            Arc::new(OutageLedger {
                inner,
                script: Mutex::new(script),
                attempts,
            }) as Arc<dyn RunLedger>
        })),
    };
    let h = Harness::start_with(Backend::Sqlite, |_| {}, options).await;
    let inner = inner_slot
        .lock()
        .unwrap()
        .clone()
        .expect("the ledger was wrapped");
    let t = h.tenant("Outage").await;
    let sid = h.create_session(&t).await;
    let mut client = Client::connect(&h, &sid, &t.key, None).await.unwrap();
    hello(&client.frame().await);
    let (sandbox_id, spec) = h.spawned(0).await;
    let mut sandbox = Sandbox::dial_back(&sandbox_id, &spec).await;
    client
        .send_json(json!({"type": "prompt", "text": "Say hello."}))
        .await;
    let (run_id, _) = sandbox.next_run().await;
    sandbox
        .play(&run_id, &Script::reply_with_tool("Hello.", "ls", "a\n"))
        .await;

    // The stream does not wait for the ledger.
    assert_eq!(
        completion_status(&client.until(|f| completion_status(f).is_some()).await),
        Some(TerminalStatus::Completed)
    );

    // The first flush fails and nothing is recorded.
    tokio::time::timeout(WAIT, log.wait_for(|l| !l.is_empty()))
        .await
        .expect("a flush attempt in time")
        .unwrap();
    assert_eq!(log.borrow().first(), Some(&Attempt::Down));
    let missing = inner.get(&t.tenant, &run_id).await.unwrap_err();
    assert_eq!(
        switchboard_ports::Classify::class(&missing),
        switchboard_core::ErrorClass::NotFound
    );

    // The outbox retries with backoff through a lost answer until the ledger answers.
    let final_log = tokio::time::timeout(
        WAIT,
        log.wait_for(|l| l.iter().any(|a| matches!(a, Attempt::Answered(_)))),
    )
    .await
    .expect("the outbox heals the outage in time")
    .unwrap()
    .clone();
    assert_eq!(
        final_log,
        vec![
            Attempt::Down,
            Attempt::LostAnswer,
            Attempt::Answered(Recorded::AlreadyRecorded)
        ]
    );

    // Exactly one record, complete, visible through the API.
    let record = h.ledger_run(&t, &run_id).await;
    assert_eq!(record.status, TerminalStatus::Completed);
    assert_eq!(
        record.events,
        events(&client.seen)
            .into_iter()
            .filter(|e| e.run_id.as_ref() == Some(&run_id))
            .collect::<Vec<_>>()
    );
    let listed = inner
        .list(
            &t.tenant,
            &RunQuery {
                session_id: Some(SessionId::parse(&sid).unwrap()),
                limit: 100,
                ..RunQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "exactly one record");
    client.close().await;
    h.stop().await;
}

// ----- the sockets' edges ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sandbox_token_is_refused_and_changes_nothing() {
    let h = Harness::start(Backend::Sqlite, |_| {}).await;
    let t = h.tenant("Tokens").await;
    let sid = h.create_session(&t).await;
    let (sandbox_id, spec) = h.spawned(0).await;
    let before = h.info(&t, &sid).await;

    let wrong = format!("sbx_{}", "0".repeat(64));
    assert_eq!(
        Sandbox::dial(&spec.callback_url, Some(&wrong)).await.err(),
        Some(401),
        "a wrong token"
    );
    assert_eq!(
        Sandbox::dial(&spec.callback_url, None).await.err(),
        Some(401),
        "no token"
    );
    assert_eq!(
        Sandbox::dial(&spec.callback_url, Some(&t.key)).await.err(),
        Some(401),
        "an API key is not a sandbox token"
    );
    assert_eq!(
        h.info(&t, &sid).await,
        before,
        "a refused dial-back changes nothing"
    );

    // The real token still works, and a later wrong one does not displace the live sandbox.
    let mut sandbox = Sandbox::dial_back(&sandbox_id, &spec).await;
    let mut client = Client::connect(&h, &sid, &t.key, None).await.unwrap();
    hello(&client.frame().await);
    eventually("the sandbox to be connected", || async {
        (h.info(&t, &sid).await.sandbox.status == SandboxStatus::Connected).then_some(())
    })
    .await;
    assert_eq!(
        Sandbox::dial(&spec.callback_url, Some(&wrong)).await.err(),
        Some(401)
    );
    client
        .send_json(json!({"type": "prompt", "text": "Still there?"}))
        .await;
    let (run_id, _) = sandbox.next_run().await;
    sandbox
        .play(&run_id, &Script::reply_with_tool("Yes.", "true", ""))
        .await;
    assert_eq!(
        completion_status(&client.until(|f| completion_status(f).is_some()).await),
        Some(TerminalStatus::Completed)
    );
    client.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_frames_are_answered_and_change_nothing() {
    let h = Harness::start(Backend::Sqlite, |_| {}).await;
    let t = h.tenant("Frames").await;
    let sid = h.create_session(&t).await;
    let mut client = Client::connect(&h, &sid, &t.key, None).await.unwrap();
    let (_, last_seq) = hello(&client.frame().await);
    client.through(last_seq).await;
    let before = h.info(&t, &sid).await;
    let seen_before = client.seen.len();

    let bad = [
        Message::text("not json"),
        Message::text(r#"{"type": "prompt"}"#),
        Message::text(r#"{"type": "launch_missiles"}"#),
        Message::text(r#"{"type": "ping", "extra": 1}"#),
        Message::text(r#"{"type": "ack", "seq": -1}"#),
        Message::binary(b"{\"type\": \"ping\"}".to_vec()),
    ];
    for frame in bad {
        let shown = format!("{frame:?}");
        client.ws.send(frame).await.unwrap();
        let answer = client.frame().await;
        assert_eq!(
            error_code(&answer),
            Some("bad_frame"),
            "{shown} → {answer:?}"
        );
    }
    // A frame of exactly 1 MiB is read (and, not being JSON, answered); it does not close the socket.
    client
        .ws
        .send(Message::text("x".repeat(MAX_FRAME_BYTES)))
        .await
        .unwrap();
    assert_eq!(error_code(&client.frame().await), Some("bad_frame"));

    // The socket still works, and no event was produced meanwhile.
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(
        client.frame().await,
        ServerFrame::Control(ControlFrame::Pong)
    );
    assert!(
        events(&client.seen[seen_before..]).is_empty(),
        "bad frames emit no event"
    );
    assert_eq!(
        h.info(&t, &sid).await,
        before,
        "bad frames change no session state"
    );
    client.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_one_mebibyte_close_both_sockets_with_1009() {
    let h = Harness::start(Backend::Sqlite, |_| {}).await;
    let t = h.tenant("Big").await;
    let sid = h.create_session(&t).await;
    let mut client = Client::connect(&h, &sid, &t.key, None).await.unwrap();
    let (_, last_seq) = hello(&client.frame().await);
    client.through(last_seq).await;
    let before = h.info(&t, &sid).await;

    let huge = json!({"type": "prompt", "text": "x".repeat(MAX_FRAME_BYTES)}).to_string();
    assert!(huge.len() > MAX_FRAME_BYTES);
    let _ = client.ws.send(Message::text(huge.clone())).await;
    let closed = loop {
        match client.next().await {
            Incoming::Frame(_) => continue,
            Incoming::Closed(close) => break close,
        }
    };
    assert_eq!(
        closed.map(|(code, _)| code),
        Some(u16::from(CloseCode::Size)),
        "the client socket closes with 1009"
    );
    assert_eq!(
        h.info(&t, &sid).await,
        before,
        "the oversized frame changed nothing"
    );

    // The same on the sandbox socket.
    let (sandbox_id, spec) = h.spawned(0).await;
    let mut sandbox = Sandbox::dial_back(&sandbox_id, &spec).await;
    let _ = sandbox.ws.send(Message::text(huge)).await;
    let closed = loop {
        match sandbox.next_or_close().await {
            Ok(_) => continue,
            Err(close) => break close,
        }
    };
    assert_eq!(
        closed.map(|(code, _)| code),
        Some(1009),
        "the sandbox socket closes with 1009"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_session_is_not_found_on_both_sockets() {
    let h = Harness::start(Backend::Sqlite, |_| {}).await;
    let owner = h.tenant("Owner").await;
    let intruder = h.tenant("Intruder").await;
    let sid = h.create_session(&owner).await;
    let (_, spec) = h.spawned(0).await;
    let before = h.info(&owner, &sid).await;

    // The client socket: by header and by query token, before any upgrade.
    assert_eq!(
        Client::connect(&h, &sid, &intruder.key, None).await.err(),
        Some(404)
    );
    assert_eq!(
        Client::connect_with_query_token(&h, &sid, &intruder.key, 0)
            .await
            .err(),
        Some(404)
    );
    assert_eq!(
        Client::connect(&h, "ses_no_such_session", &owner.key, None)
            .await
            .err(),
        Some(404)
    );
    assert_eq!(
        Client::connect(&h, &sid, "sk_not_a_key", None).await.err(),
        Some(401)
    );
    // A plain GET (no upgrade) to another org's socket is still just not found.
    assert_eq!(
        h.get(&format!("/v1/sessions/{sid}/ws"), &intruder.key)
            .await
            .0,
        404
    );

    // The sandbox socket: the owner's session under the intruder's org id, even with the right token.
    let foreign = h.ws(&format!(
        "/sandbox/v1/sessions/{}/{sid}/ws",
        intruder.org_id
    ));
    assert_eq!(
        Sandbox::dial(&foreign, Some(&spec.token)).await.err(),
        Some(404)
    );
    let unknown = h.ws(&format!(
        "/sandbox/v1/sessions/{}/ses_no_such_session/ws",
        owner.org_id
    ));
    assert_eq!(
        Sandbox::dial(&unknown, Some(&spec.token)).await.err(),
        Some(404)
    );
    assert_eq!(
        h.info(&owner, &sid).await,
        before,
        "nothing changed for the owner"
    );
    h.stop().await;
}

/// How long the slow-client test's flood may take (every event is committed to disk).
const FLOOD: Duration = Duration::from_secs(180);

/// The largest send buffer the kernel may grow a TCP socket to (Linux: `tcp_wmem`'s maximum).
fn max_send_buffer() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_dropped_with_a_reason_and_resumes_with_after() {
    let h = Harness::start(Backend::Sqlite, |_| {}).await;
    let t = h.tenant("Slow").await;
    let sid = h.create_session(&t).await;

    // A client with a small receive window that stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(h.server().addr).await.unwrap();
    let mut request = h
        .ws(&format!("/v1/sessions/{sid}/ws"))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", t.key).parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut slow = Client {
        ws,
        seen: Vec::new(),
    };
    let mut fast = Client::connect(&h, &sid, &t.key, None).await.unwrap();
    hello(&fast.frame().await);

    let (sandbox_id, spec) = h.spawned(0).await;
    let mut sandbox = Sandbox::dial_back(&sandbox_id, &spec).await;
    fast.send_json(json!({"type": "prompt", "text": "Talk a lot."}))
        .await;
    // The fast client keeps reading, on its own task, until the run completes.
    let fast = tokio::spawn(async move {
        fast.until(|f| completion_status(f).is_some()).await;
        fast
    });
    let (run_id, _) = sandbox.next_run().await;
    // More than the server can buffer for one client: its outbox, plus what the kernel's socket
    // buffers hold (the send buffer can grow to `tcp_wmem`'s maximum), in deltas of 64 KiB.
    let piece = 64 * 1024;
    let count = CLIENT_BUFFER + (max_send_buffer() + (1 << 20)) / piece + 32;
    let script = Script {
        reply: vec!["y".repeat(piece); count],
        tool: None,
        usage: Usage {
            input_tokens: 1,
            output_tokens: 1,
        },
    };
    tokio::time::timeout(FLOOD, sandbox.play(&run_id, &script))
        .await
        .expect("the session takes the flood");
    // The session is not stalled by the slow client: every message is ACKed and the run completes.
    sandbox.acked(sandbox.n).await;
    let mut fast = tokio::time::timeout(WAIT, fast)
        .await
        .expect("the fast client keeps up")
        .unwrap();
    let done = events(&fast.seen)
        .into_iter()
        .find(|e| e.event.type_name() == "execution_complete")
        .unwrap();

    // The slow client reads what was buffered for it, then the server's close with a reason.
    let reason = loop {
        match slow.next().await {
            Incoming::Frame(_) => continue,
            Incoming::Closed(close) => break close.expect("a close frame with a reason"),
        }
    };
    assert_eq!(reason.0, 1001);
    let got = events(&slow.seen);
    let resume_after = got.last().map(|e| e.seq).unwrap_or(0);
    assert!(
        resume_after < done.seq,
        "the slow client was dropped before the end"
    );
    assert!(
        reason.1.contains(&format!("after={resume_after}")),
        "the reason says where to resume: {reason:?}"
    );

    // Resuming with `after` gives exactly the rest.
    let mut resumed = Client::connect(&h, &sid, &t.key, Some(resume_after))
        .await
        .unwrap();
    hello(&resumed.frame().await);
    resumed.through(done.seq).await;
    let mut combined = got;
    combined.extend(
        events(&resumed.seen)
            .into_iter()
            .filter(|e| e.seq <= done.seq),
    );
    let fast_events: Vec<EventEnvelope> = events(&fast.seen)
        .into_iter()
        .filter(|e| e.seq <= done.seq)
        .collect();
    assert_eq!(
        combined, fast_events,
        "dropped and resumed, the slow client saw every event exactly once"
    );
    resumed.close().await;
    fast.send_json(json!({"type": "ping"})).await;
    fast.until(|f| matches!(f, ServerFrame::Control(ControlFrame::Pong)))
        .await;
    fast.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sandbox_frames_close_the_socket_and_the_sandbox_can_dial_back_again() {
    let h = Harness::start(Backend::Sqlite, |_| {}).await;
    let t = h.tenant("Bridge").await;
    let sid = h.create_session(&t).await;
    let mut client = Client::connect(&h, &sid, &t.key, None).await.unwrap();
    hello(&client.frame().await);
    let (sandbox_id, spec) = h.spawned(0).await;

    // The sandbox protocol has no error frame: garbage closes the socket (1007), binary too (1003).
    for (frame, code) in [
        (Message::text("{\"type\": \"bogus\"}"), 1007),
        (Message::binary(vec![1, 2, 3]), 1003),
    ] {
        let mut sandbox = Sandbox::dial_back(&sandbox_id, &spec).await;
        sandbox.ws.send(frame).await.unwrap();
        let closed = loop {
            match sandbox.next_or_close().await {
                Ok(_) => continue,
                Err(close) => break close,
            }
        };
        assert_eq!(closed.map(|(c, _)| c), Some(code));
    }

    // The token is still good: a newer connection replaces an older one, which is closed.
    let mut old = Sandbox::dial_back(&sandbox_id, &spec).await;
    let mut sandbox = Sandbox::dial_back(&sandbox_id, &spec).await;
    let closed = loop {
        match old.next_or_close().await {
            Ok(_) => continue,
            Err(close) => break close,
        }
    };
    assert_eq!(
        closed.map(|(c, _)| c),
        Some(1001),
        "the replaced connection is closed"
    );

    // The session goes on with the newest connection.
    client
        .send_json(json!({"type": "prompt", "text": "Still fine?"}))
        .await;
    let (run_id, _) = sandbox.next_run().await;
    sandbox
        .play(&run_id, &Script::reply_with_tool("Fine.", "true", ""))
        .await;
    let done = client.until(|f| completion_status(f).is_some()).await;
    assert_eq!(completion_status(&done), Some(TerminalStatus::Completed));
    client.close().await;
    h.stop().await;
}
