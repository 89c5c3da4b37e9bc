//! The REST API and the operational endpoints, end to end: a real server (`serve::start` on an
//! ephemeral loopback port, real SQLite, and Postgres when `DATABASE_URL` is set) driven with
//! reqwest, a scripted sandbox dialling back through the session host.
//!
//! - the journey signup → login → API key → credential → session → prompt → events → runs;
//! - bad input: malformed JSON, wrong content type, missing or provider-less model, oversized
//!   bodies, bad query strings, unknown routes and methods, all answering `{"error": {..}}`;
//! - tenant isolation: a second org's key against every route with the first org's ids is 404
//!   (and every authenticated route is 401 without a key); the walk covers every documented route;
//! - `/health`, `/ready` (and its 503), `/metrics`, and `/openapi.json` against the router.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use switchboard_adapters::sql::scratch::{postgres_gate, ScratchDir, ScratchPostgres};
use switchboard_adapters::system_clock::SystemClock;
use switchboard_core::protocol::{ServerToSandbox, Usage};
use switchboard_core::tenancy::Principal;
use switchboard_core::{OrgId, UserId};
use switchboard_fakes::sandbox_provider::InMemorySandboxProvider;
use switchboard_ports::identity::{Membership, Role, User};
use switchboard_ports::Clock;
use switchboard_server::config::ServeConfig;
use switchboard_server::scripted::{Script, ScriptedSandbox};
use switchboard_server::serve::{self, RunningServer};

/// The longest any single wait may take (a hang is a failure).
const WAIT: Duration = Duration::from_secs(20);
const MODEL: &str = "openai/gpt-4.1-mini";
const BYOK: &str = "sk-byok-http-api-test-000000009876";

/// One running server and what a test needs around it.
struct Harness {
    server: RunningServer,
    sandboxes: Arc<InMemorySandboxProvider>,
    http: reqwest::Client,
    _dir: ScratchDir,
    _pg: Option<ScratchPostgres>,
}

impl Harness {
    async fn start(pg: Option<ScratchPostgres>) -> Harness {
        serve::install_crypto_provider();
        let dir = ScratchDir::create("http_api").expect("a scratch dir");
        let mut config = ServeConfig::embedded(dir.path().to_path_buf());
        config.database_url = pg.as_ref().map(|p| p.url.clone());
        let sandboxes = Arc::new(InMemorySandboxProvider::new());
        let server = serve::start(config, sandboxes.clone(), Arc::new(SystemClock::new()))
            .await
            .expect("the server starts");
        let http = reqwest::Client::builder()
            .timeout(WAIT)
            .build()
            .expect("an HTTP client");
        Harness {
            server,
            sandboxes,
            http,
            _dir: dir,
            _pg: pg,
        }
    }

    async fn sqlite() -> Harness {
        Harness::start(None).await
    }

    /// A server on a scratch Postgres database, or `None` (with the reason printed) when there is
    /// no Postgres here. Under CI a missing Postgres is a failure.
    async fn postgres() -> Option<Harness> {
        if let Err(reason) = postgres_gate() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs Postgres: {reason}"
            );
            eprintln!("skipping the Postgres half: {reason}");
            return None;
        }
        let pg = ScratchPostgres::create()
            .await
            .expect("a scratch Postgres database");
        Some(Harness::start(Some(pg)).await)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.http_url())
    }

    /// Sends a request; `token` as the bearer credential, `body` as JSON.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("the server answers");
        read(res).await
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// A new org with an owner through the operator path; its first API key.
    async fn org(&self, name: &str) -> (String, String) {
        let created = self
            .server
            .deployment
            .app
            .create_org(name, None)
            .await
            .expect("an org");
        (created.org_id.to_string(), created.api_key)
    }
}

/// Status and JSON body (`Null` for an empty body). A non-JSON body fails the test.
async fn read(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.expect("a body");
    if text.is_empty() {
        return (status, Value::Null);
    }
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: the body is not JSON ({e}): {text:?}"));
    (status, value)
}

/// Asserts an error answer: the status and `{"error": {"code", "message"}}`.
fn assert_error(answer: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(answer.0.as_u16(), status, "{answer:?}");
    assert_eq!(answer.1["error"]["code"], code, "{answer:?}");
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{answer:?}"
    );
}

fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.test", uuid::Uuid::now_v7().simple())
}

/// Waits until `GET /v1/runs/{run_id}` finds the run in the ledger (the outbox flushes it after
/// the run ends), each look a full HTTP round trip, for at most `WAIT`.
async fn run_from_ledger(h: &Harness, token: &str, run_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = h.get(&format!("/v1/runs/{run_id}"), token).await;
        if status == StatusCode::OK {
            return body;
        }
        assert_error(&(status, body), 404, "not_found");
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {run_id} never reached the ledger"
        );
        tokio::task::yield_now().await;
    }
}

/// Plays the sandbox of the `nth` spawned sandbox: dials back, answers the next run by `script`.
async fn play_next_run(h: &Harness, nth: usize, script: &Script) -> (ScriptedSandbox, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let (sandbox_id, spec) = loop {
        if let Some(s) = h.sandboxes.spawned().into_iter().nth(nth) {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sandbox was spawned"
        );
        tokio::task::yield_now().await;
    };
    let mut sandbox =
        ScriptedSandbox::dial_back(h.server.deployment.host.as_ref(), &spec, &sandbox_id)
            .await
            .expect("the sandbox dials back");
    let (run_id, _) = tokio::time::timeout(WAIT, sandbox.next_run())
        .await
        .expect("a run within the wait")
        .expect("the socket stays open");
    sandbox
        .play(&run_id, script)
        .await
        .expect("the script plays");
    (sandbox, run_id.to_string())
}

// ---------------------------------------------------------------------------------------------
// The journey.

async fn journey(h: &Harness) {
    // Signup and login.
    let email = unique_email("journey");
    let signup = h
        .call(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"email": email, "password": "correct horse", "org_name": "Journey"})),
        )
        .await;
    assert_eq!(signup.0, StatusCode::CREATED, "{signup:?}");
    let org_id = signup.1["org_id"].as_str().expect("org_id").to_string();
    assert!(signup.1["user_id"].as_str().is_some_and(|u| !u.is_empty()));
    let signup_token = signup.1["token"].as_str().expect("token").to_string();
    assert_error(&h.call(Method::POST, "/v1/auth/signup", None, Some(json!({"email": email.to_uppercase(), "password": "another pw", "org_name": "Twice"}))).await, 409, "conflict");
    assert_error(
        &h.call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": email, "password": "wrong horse"})),
        )
        .await,
        401,
        "unauthorized",
    );
    assert_error(
        &h.call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": unique_email("nobody"), "password": "correct horse"})),
        )
        .await,
        401,
        "unauthorized",
    );
    let login = h
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": email, "password": "correct horse"})),
        )
        .await;
    assert_eq!(login.0, StatusCode::OK, "{login:?}");
    let token = login.1["token"].as_str().expect("token").to_string();
    assert_ne!(token, signup_token, "every login is a new session");
    let expires = switchboard_core::Timestamp::parse_rfc3339(
        login.1["expires_at"].as_str().expect("expires_at"),
    )
    .expect("an RFC 3339 time");
    let days = expires
        .since(switchboard_core::Timestamp::parse_rfc3339(&now_rfc3339()).unwrap())
        .as_secs()
        / 86_400;
    assert!(
        (29..=30).contains(&days),
        "a login lasts 30 days, got {days}"
    );
    assert_eq!(
        h.get("/v1/api-keys", &signup_token).await.0,
        StatusCode::OK,
        "the signup token works too"
    );

    // An API key, minted with the login token, shown once.
    let key = h.post("/v1/api-keys", &token, json!({"name": "ci"})).await;
    assert_eq!(key.0, StatusCode::CREATED, "{key:?}");
    let api_key = key.1["key"].as_str().expect("key").to_string();
    let key_id = key.1["id"].as_str().expect("id").to_string();
    assert!(api_key.starts_with("sk_") && api_key.starts_with(key.1["prefix"].as_str().unwrap()));
    assert_eq!(key.1["name"], "ci");
    let keys = h.get("/v1/api-keys", &api_key).await;
    assert_eq!(keys.0, StatusCode::OK);
    let listed: Vec<&Value> = keys.1["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["id"] == key_id.as_str())
        .collect();
    assert_eq!(listed.len(), 1, "{keys:?}");
    assert!(
        listed[0].get("key").is_none() && listed[0]["revoked_at"].is_null(),
        "{:?}",
        listed[0]
    );
    assert!(
        !keys.1.to_string().contains(&api_key),
        "a listing never holds a key"
    );

    // A BYOK credential: stored, listed by last4, never returned.
    let put = h
        .call(
            Method::PUT,
            "/v1/credentials/openai",
            Some(&api_key),
            Some(json!({"api_key": BYOK})),
        )
        .await;
    assert_eq!(put, (StatusCode::NO_CONTENT, Value::Null));
    let creds = h.get("/v1/credentials", &api_key).await;
    assert_eq!(creds.0, StatusCode::OK);
    assert_eq!(
        creds.1["credentials"].as_array().unwrap().len(),
        1,
        "{creds:?}"
    );
    assert_eq!(creds.1["credentials"][0]["provider"], "openai");
    assert_eq!(creds.1["credentials"][0]["last4"], "9876");
    assert!(
        !creds.1.to_string().contains(BYOK) && !creds.1.to_string().contains("http-api-test"),
        "GET /v1/credentials never returns a key"
    );

    // A session: 201, provisioning.
    let created = h
        .post("/v1/sessions", &api_key, json!({"model": MODEL}))
        .await;
    assert_eq!(created.0, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.1["status"], "provisioning");
    assert_eq!(created.1["model"], MODEL);
    assert!(created.1["created_at"].as_str().is_some());
    let sid = created.1["id"].as_str().unwrap().to_string();
    let info = h.get(&format!("/v1/sessions/{sid}"), &api_key).await;
    assert_eq!(info.0, StatusCode::OK);
    for field in [
        "id",
        "status",
        "model",
        "queue_length",
        "last_seq",
        "created_at",
    ] {
        assert!(info.1.get(field).is_some(), "{field} missing from {info:?}");
    }
    assert!(info.1["sandbox"]["status"].as_str().is_some(), "{info:?}");
    let list = h.get("/v1/sessions", &api_key).await;
    assert!(
        list.1["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == sid.as_str()),
        "{list:?}"
    );

    // A prompt: 202 at position 0; re-sent with its client_msg_id, the same run.
    let prompt = json!({"text": "Say hello.", "client_msg_id": "msg-1"});
    let queued = h
        .post(
            &format!("/v1/sessions/{sid}/prompts"),
            &api_key,
            prompt.clone(),
        )
        .await;
    assert_eq!(queued.0, StatusCode::ACCEPTED, "{queued:?}");
    assert_eq!(queued.1["position"], 0);
    let run_id = queued.1["run_id"].as_str().unwrap().to_string();
    let again = h
        .post(&format!("/v1/sessions/{sid}/prompts"), &api_key, prompt)
        .await;
    assert_eq!(again.0, StatusCode::ACCEPTED);
    assert_eq!(
        again.1["run_id"],
        run_id.as_str(),
        "a re-sent client_msg_id is the same run"
    );

    // The sandbox dials back and plays the run.
    let script = Script {
        reply: vec!["Hel".into(), "lo!".into()],
        tool: Some(("ls".into(), "README.md\n".into())),
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
        },
    };
    let (mut sandbox, played) = play_next_run(h, 0, &script).await;
    assert_eq!(played, run_id);
    let run = run_from_ledger(h, &api_key, &run_id).await;
    assert_eq!(run["status"], "completed", "{run:?}");
    assert_eq!(run["session_id"], sid.as_str());
    assert_eq!(run["org_id"], org_id.as_str());
    assert_eq!(run["api_key_id"], key_id.as_str());
    assert_eq!(run["model"], MODEL);
    assert_eq!(
        run["usage"],
        json!({"input_tokens": 10, "output_tokens": 5})
    );
    let run_events = run["events"]
        .as_array()
        .expect("events on GET /v1/runs/{id}");
    let seqs: Vec<u64> = run_events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]) && !seqs.is_empty(),
        "{seqs:?}"
    );
    assert_eq!(run["event_count"].as_u64().unwrap(), seqs.len() as u64);
    let reply: String = run_events
        .iter()
        .filter(|e| e["type"] == "message.delta")
        .map(|e| e["data"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(reply, "Hello!");

    // The session's event log, whole and paged.
    let page = h.get(&format!("/v1/sessions/{sid}/events"), &api_key).await;
    assert_eq!(page.0, StatusCode::OK);
    let events = page.1["events"].as_array().unwrap();
    let all: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        all,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "seqs from 1 without gaps"
    );
    assert_eq!(page.1["last_seq"].as_u64().unwrap(), *all.last().unwrap());
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in [
        "run.queued",
        "run.started",
        "tool_call",
        "message.delta",
        "execution_complete",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    let complete = events
        .iter()
        .find(|e| e["type"] == "execution_complete")
        .unwrap();
    assert_eq!(complete["critical"], true);
    assert_eq!(complete["run_id"], run_id.as_str());
    let paged = h
        .get(
            &format!("/v1/sessions/{sid}/events?after=2&limit=3"),
            &api_key,
        )
        .await;
    let paged_seqs: Vec<u64> = paged.1["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(paged_seqs, vec![3, 4, 5]);

    // Runs of the session, from the ledger: summaries without events.
    let runs = h
        .get(&format!("/v1/runs?session_id={sid}&limit=10"), &api_key)
        .await;
    assert_eq!(runs.0, StatusCode::OK, "{runs:?}");
    let listed = runs.1["runs"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{runs:?}");
    assert_eq!(listed[0]["run_id"], run_id.as_str());
    assert!(listed[0].get("events").is_none(), "listings are summaries");

    // Cancel: with nothing running there is nothing to cancel (the session machine answers
    // not_found); a running run is cancelled with or without a body, and the sandbox is told.
    assert_error(
        &h.post(&format!("/v1/sessions/{sid}/cancel"), &api_key, json!({}))
            .await,
        404,
        "not_found",
    );
    let second = h
        .post(
            &format!("/v1/sessions/{sid}/prompts"),
            &api_key,
            json!({"text": "Take your time."}),
        )
        .await;
    assert_eq!(second.0, StatusCode::ACCEPTED, "{second:?}");
    let second_run = second.1["run_id"].as_str().unwrap().to_string();
    let (dispatched, _) = tokio::time::timeout(WAIT, sandbox.next_run())
        .await
        .expect("the second run within the wait")
        .expect("the socket stays open");
    assert_eq!(dispatched.as_str(), second_run);
    let bare_cancel = h
        .http
        .post(h.url(&format!("/v1/sessions/{sid}/cancel")))
        .bearer_auth(&api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        bare_cancel.status(),
        StatusCode::ACCEPTED,
        "the cancel body is optional"
    );
    let cancelled = tokio::time::timeout(WAIT, async {
        while let Some(frame) = sandbox.next_frame().await {
            if let ServerToSandbox::Cancel { run_id } = frame {
                return Some(run_id);
            }
        }
        None
    })
    .await
    .expect("a cancel frame within the wait");
    assert_eq!(
        cancelled.map(|r| r.to_string()),
        Some(second_run.clone()),
        "the sandbox is told to cancel the running run"
    );
    assert_eq!(
        h.call(
            Method::DELETE,
            &format!("/v1/sessions/{sid}"),
            Some(&api_key),
            None
        )
        .await
        .0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        h.get(&format!("/v1/sessions/{sid}"), &api_key).await.1["status"],
        "closed"
    );
    assert_error(
        &h.post(
            &format!("/v1/sessions/{sid}/prompts"),
            &api_key,
            json!({"text": "more"}),
        )
        .await,
        409,
        "conflict",
    );

    // Environment detection.
    let env = h.post("/v1/environment/detect", &api_key, json!({"files": ["package.json", "package-lock.json", "src/index.ts", "node_modules/x/package.json"]})).await;
    assert_eq!(env.0, StatusCode::OK, "{env:?}");
    assert_eq!(env.1["package_manager"], "npm");
    assert_eq!(env.1["file_count"], 3);
    assert_eq!(env.1["install"], json!(["npm ci"]));
    let none = h
        .post(
            "/v1/environment/detect",
            &api_key,
            json!({"files": ["notes.txt"]}),
        )
        .await;
    assert_eq!(
        none.1,
        json!({"package_manager": null, "file_count": 1, "install": []})
    );
    assert_error(
        &h.post(
            "/v1/environment/detect",
            &api_key,
            json!({"repo": {"url": "https://example.test/r.git"}}),
        )
        .await,
        422,
        "repo_host_unavailable",
    );
    assert_error(
        &h.post("/v1/environment/detect", &api_key, json!({})).await,
        400,
        "invalid",
    );

    // Deleting a credential; revoking a key stops it at once.
    assert_eq!(
        h.call(
            Method::DELETE,
            "/v1/credentials/openai",
            Some(&api_key),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &h.call(
            Method::DELETE,
            "/v1/credentials/openai",
            Some(&api_key),
            None,
        )
        .await,
        404,
        "not_found",
    );
    assert_eq!(
        h.get("/v1/credentials", &api_key).await.1,
        json!({"credentials": []})
    );
    assert_eq!(
        h.call(
            Method::DELETE,
            &format!("/v1/api-keys/{key_id}"),
            Some(&token),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_error(&h.get("/v1/sessions", &api_key).await, 401, "unauthorized");
    let keys = h.get("/v1/api-keys", &token).await;
    let revoked = keys.1["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key_id.as_str())
        .cloned()
        .unwrap();
    assert!(revoked["revoked_at"].as_str().is_some(), "{revoked:?}");
}

/// Now as RFC 3339, from the system clock the server also uses.
fn now_rfc3339() -> String {
    SystemClock::new().now().to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn journey_on_sqlite() {
    let h = Harness::sqlite().await;
    journey(&h).await;
    h.server.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn journey_on_postgres() {
    let Some(h) = Harness::postgres().await else {
        return;
    };
    journey(&h).await;
    h.server.stop().await.expect("a clean stop");
}

// ---------------------------------------------------------------------------------------------
// Bad input.

async fn bad_input(h: &Harness) {
    let (_, key) = h.org("Bad input").await;
    let sessions = h.url("/v1/sessions");
    let send = |req: reqwest::RequestBuilder| async move {
        read(req.send().await.expect("an answer")).await
    };

    let malformed = send(
        h.http
            .post(&sessions)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{\"model\": "),
    )
    .await;
    assert_error(&malformed, 400, "invalid");
    let wrong_type = send(
        h.http
            .post(&sessions)
            .bearer_auth(&key)
            .header("content-type", "text/plain")
            .body(json!({"model": MODEL}).to_string()),
    )
    .await;
    assert_error(&wrong_type, 400, "invalid");
    let no_type = send(
        h.http
            .post(&sessions)
            .bearer_auth(&key)
            .body(json!({"model": MODEL}).to_string()),
    )
    .await;
    assert_error(&no_type, 400, "invalid");
    let wrong_shape = send(
        h.http
            .post(&sessions)
            .bearer_auth(&key)
            .json(&json!({"model": 42})),
    )
    .await;
    assert_error(&wrong_shape, 400, "invalid");
    assert_error(
        &h.post("/v1/sessions", &key, json!({})).await,
        422,
        "invalid_model",
    );
    assert_error(
        &h.post("/v1/sessions", &key, json!({"model": "gpt-4.1"}))
            .await,
        422,
        "invalid_model",
    );
    assert_error(
        &h.post("/v1/sessions", &key, json!({"model": "/gpt"})).await,
        422,
        "invalid_model",
    );

    // Over 1 MiB: with a content-length (refused before reading) and streamed (refused on read).
    let big = json!({"model": MODEL, "agent": "x".repeat(2 * 1024 * 1024)}).to_string();
    // The refused rest of the body is never read, so the answer closes the connection.
    let closes = |res: &reqwest::Response| {
        res.headers()
            .get("connection")
            .is_some_and(|v| v == "close")
    };
    let res = h
        .http
        .post(&sessions)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert!(closes(&res), "{:?}", res.headers());
    assert_error(&read(res).await, 413, "too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .into_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let streamed = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let res = h
        .http
        .post(&sessions)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(streamed)
        .send()
        .await
        .unwrap();
    assert!(closes(&res), "{:?}", res.headers());
    assert_error(&read(res).await, 413, "too_large");

    // A session to aim the rest at.
    let sid = h
        .post("/v1/sessions", &key, json!({"model": MODEL}))
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_error(
        &h.get(&format!("/v1/sessions/{sid}/events?after=abc"), &key)
            .await,
        400,
        "invalid",
    );
    assert_error(
        &h.post(
            &format!("/v1/sessions/{sid}/prompts"),
            &key,
            json!({"client_msg_id": "x"}),
        )
        .await,
        400,
        "invalid",
    );
    assert_error(
        &h.post(
            &format!("/v1/sessions/{sid}/prompts"),
            &key,
            json!({"text": "hi", "client_msg_id": "not valid!"}),
        )
        .await,
        400,
        "invalid",
    );
    let bad_cancel = send(
        h.http
            .post(h.url(&format!("/v1/sessions/{sid}/cancel")))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{oops"),
    )
    .await;
    assert_error(&bad_cancel, 400, "invalid");
    assert_error(
        &h.post("/v1/api-keys", &key, json!({"name": "  "})).await,
        400,
        "invalid",
    );
    assert_error(
        &h.post(
            "/v1/api-keys",
            &key,
            json!({"name": "k", "scopes": ["root"]}),
        )
        .await,
        400,
        "invalid",
    );
    assert_error(
        &h.call(
            Method::PUT,
            "/v1/credentials/Not%20A%20Provider",
            Some(&key),
            Some(json!({"api_key": "k-123456"})),
        )
        .await,
        400,
        "invalid",
    );
    assert_error(
        &h.call(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"email": "not-an-email", "password": "long enough", "org_name": "x"})),
        )
        .await,
        400,
        "invalid",
    );
    assert_error(
        &h.call(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"email": unique_email("short"), "password": "short", "org_name": "x"})),
        )
        .await,
        400,
        "invalid",
    );

    // Unknown routes and methods answer JSON too.
    assert_error(&h.get("/v1/nothing-here", &key).await, 404, "no_route");
    assert_error(
        &h.call(Method::PATCH, "/v1/sessions", Some(&key), None)
            .await,
        405,
        "method_not_allowed",
    );
    assert_error(
        &h.get("/v1/sessions/ses_unknown", &key).await,
        404,
        "not_found",
    );
    assert_error(
        &h.get("/v1/sessions/bad%20id", &key).await,
        404,
        "not_found",
    );
    assert_error(
        &h.get("/v1/sessions", "sk_not_a_key").await,
        401,
        "unauthorized",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_on_sqlite() {
    let h = Harness::sqlite().await;
    bad_input(&h).await;
    h.server.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_on_postgres() {
    let Some(h) = Harness::postgres().await else {
        return;
    };
    bad_input(&h).await;
    h.server.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_cannot_mint_an_admin_key() {
    let h = Harness::sqlite().await;
    let app = &h.server.deployment.app;
    let (org_id, owner_key) = h.org("Scopes").await;
    let org = OrgId::parse(org_id).unwrap();
    let member = UserId::parse(format!("usr_{}", uuid::Uuid::now_v7().simple())).unwrap();
    app.identity
        .create_user(&User {
            id: member.clone(),
            email: unique_email("member"),
            password_hash: None,
            created_at: app.clock.now(),
        })
        .await
        .unwrap();
    app.identity
        .add_member(&Membership {
            org: org.clone(),
            user: member.clone(),
            role: Role::Member,
        })
        .await
        .unwrap();
    let principal = Principal::from_verified_credential(org, member, None, Role::Member.scopes());
    let (_, member_key) = app.issue_api_key(&principal, "member key").await.unwrap();
    let member_key = member_key.expose().to_string();

    assert_error(
        &h.post(
            "/v1/api-keys",
            &member_key,
            json!({"name": "escalate", "scopes": ["admin"]}),
        )
        .await,
        403,
        "forbidden",
    );
    let narrow = h
        .post(
            "/v1/api-keys",
            &member_key,
            json!({"name": "narrow", "scopes": ["sessions"]}),
        )
        .await;
    assert_eq!(narrow.0, StatusCode::CREATED, "{narrow:?}");
    assert_eq!(narrow.1["scopes"], json!(["sessions"]));
    let narrow_key = narrow.1["key"].as_str().unwrap();
    assert_eq!(h.get("/v1/sessions", narrow_key).await.0, StatusCode::OK);
    assert_error(
        &h.get("/v1/credentials", narrow_key).await,
        403,
        "forbidden",
    );
    let default = h
        .post("/v1/api-keys", &member_key, json!({"name": "same"}))
        .await;
    assert_eq!(
        default.1["scopes"],
        json!(["sessions", "credentials", "api_keys"]),
        "a key defaults to its creator's scopes"
    );
    let admin = h
        .post(
            "/v1/api-keys",
            &owner_key,
            json!({"name": "admin", "scopes": ["admin"]}),
        )
        .await;
    assert_eq!(
        admin.0,
        StatusCode::CREATED,
        "an owner may mint an admin key: {admin:?}"
    );
    h.server.stop().await.expect("a clean stop");
}

// ---------------------------------------------------------------------------------------------
// Tenant isolation.

/// One authenticated route of the API, with the first org's ids filled in.
struct Route {
    method: Method,
    /// The documented path pattern.
    pattern: &'static str,
    /// The concrete path, naming the first org's objects.
    path: String,
    body: Option<Value>,
    /// A collection route: the second org gets 200 and none of the first org's ids.
    collection: bool,
}

async fn tenant_isolation(h: &Harness) {
    let (_, key_a) = h.org("Tenant A").await;
    let (_, key_b) = h.org("Tenant B").await;
    assert_eq!(
        h.call(
            Method::PUT,
            "/v1/credentials/openai",
            Some(&key_a),
            Some(json!({"api_key": "sk-a-secret-4321"}))
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    let extra = h
        .post("/v1/api-keys", &key_a, json!({"name": "a's second"}))
        .await
        .1;
    let key_id_a = extra["id"].as_str().unwrap().to_string();
    let sid = h
        .post("/v1/sessions", &key_a, json!({"model": MODEL}))
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run_id = h
        .post(
            &format!("/v1/sessions/{sid}/prompts"),
            &key_a,
            json!({"text": "hi"}),
        )
        .await
        .1["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A run A has in the ledger, so that B's 404 is about tenancy, not absence.
    let script = Script {
        reply: vec!["ok".into()],
        tool: None,
        usage: Usage {
            input_tokens: 1,
            output_tokens: 1,
        },
    };
    let (_sandbox, played) = play_next_run(h, 0, &script).await;
    assert_eq!(played, run_id);
    run_from_ledger(h, &key_a, &run_id).await;

    let r = |method: Method,
             pattern: &'static str,
             path: String,
             body: Option<Value>,
             collection: bool| Route {
        method,
        pattern,
        path,
        body,
        collection,
    };
    let routes = vec![
        r(
            Method::POST,
            "/v1/api-keys",
            "/v1/api-keys".into(),
            Some(json!({"name": "b"})),
            true,
        ),
        r(
            Method::GET,
            "/v1/api-keys",
            "/v1/api-keys".into(),
            None,
            true,
        ),
        r(
            Method::DELETE,
            "/v1/api-keys/{id}",
            format!("/v1/api-keys/{key_id_a}"),
            None,
            false,
        ),
        r(
            Method::DELETE,
            "/v1/credentials/{provider}",
            "/v1/credentials/openai".into(),
            None,
            false,
        ), // before B stores its own key
        r(
            Method::PUT,
            "/v1/credentials/{provider}",
            "/v1/credentials/openai".into(),
            Some(json!({"api_key": "sk-b-own-0000"})),
            true,
        ),
        r(
            Method::GET,
            "/v1/credentials",
            "/v1/credentials".into(),
            None,
            true,
        ),
        r(
            Method::POST,
            "/v1/sessions",
            "/v1/sessions".into(),
            Some(json!({"model": MODEL})),
            true,
        ),
        r(
            Method::GET,
            "/v1/sessions",
            "/v1/sessions".into(),
            None,
            true,
        ),
        r(
            Method::GET,
            "/v1/sessions/{id}",
            format!("/v1/sessions/{sid}"),
            None,
            false,
        ),
        r(
            Method::POST,
            "/v1/sessions/{id}/prompts",
            format!("/v1/sessions/{sid}/prompts"),
            Some(json!({"text": "hijack"})),
            false,
        ),
        r(
            Method::POST,
            "/v1/sessions/{id}/cancel",
            format!("/v1/sessions/{sid}/cancel"),
            Some(json!({"run_id": run_id})),
            false,
        ),
        r(
            Method::GET,
            "/v1/sessions/{id}/events",
            format!("/v1/sessions/{sid}/events?after=0"),
            None,
            false,
        ),
        r(
            Method::GET,
            "/v1/runs",
            format!("/v1/runs?session_id={sid}"),
            None,
            false,
        ),
        r(Method::GET, "/v1/runs", "/v1/runs".into(), None, true),
        r(
            Method::GET,
            "/v1/runs/{run_id}",
            format!("/v1/runs/{run_id}"),
            None,
            false,
        ),
        r(
            Method::POST,
            "/v1/environment/detect",
            "/v1/environment/detect".into(),
            Some(json!({"files": ["Cargo.toml"]})),
            true,
        ),
        r(
            Method::GET,
            "/v1/sessions/{id}/ws",
            format!("/v1/sessions/{sid}/ws"),
            None,
            false,
        ),
        r(
            Method::DELETE,
            "/v1/sessions/{id}",
            format!("/v1/sessions/{sid}"),
            None,
            false,
        ),
    ];

    // The walk covers every route of the document that takes an org credential (not the public
    // auth and operational routes; the sandbox socket takes a sandbox token instead).
    let doc = h.call(Method::GET, "/openapi.json", None, None).await.1;
    let walked: BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| (r.method.to_string(), r.pattern.to_string()))
        .collect();
    for (method, path) in operations(&doc) {
        let public = path.starts_with("/v1/auth/") || !path.starts_with("/v1/");
        assert!(
            public || walked.contains(&(method.clone(), path.clone())),
            "{method} {path} is not walked"
        );
    }

    let a_ids = [sid.as_str(), run_id.as_str(), key_id_a.as_str(), "4321"];
    for route in &routes {
        let unauthenticated = h
            .call(route.method.clone(), &route.path, None, route.body.clone())
            .await;
        assert_error(&unauthenticated, 401, "unauthorized");
        let answer = h
            .call(
                route.method.clone(),
                &route.path,
                Some(&key_b),
                route.body.clone(),
            )
            .await;
        if route.collection {
            assert!(
                answer.0.is_success(),
                "{} {}: {answer:?}",
                route.method,
                route.path
            );
            let text = answer.1.to_string();
            assert!(
                a_ids.iter().all(|id| !text.contains(id)),
                "{} {} shows the other org's data: {text}",
                route.method,
                route.path
            );
        } else {
            assert_error(&answer, 404, "not_found");
            assert!(!answer.1.to_string().contains("4321"));
        }
    }

    // Nothing B did changed A's objects.
    let session = h.get(&format!("/v1/sessions/{sid}"), &key_a).await;
    assert_eq!(session.0, StatusCode::OK);
    assert_ne!(
        session.1["status"], "closed",
        "B's DELETE did not close A's session"
    );
    let keys = h.get("/v1/api-keys", &key_a).await.1;
    assert!(
        keys["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == key_id_a.as_str() && k["revoked_at"].is_null()),
        "{keys:?}"
    );
    let creds = h.get("/v1/credentials", &key_a).await.1;
    assert_eq!(
        creds["credentials"][0]["last4"], "4321",
        "B's PUT wrote B's own key, B's DELETE did not touch A's"
    );
    let events = h.get(&format!("/v1/sessions/{sid}/events"), &key_a).await.1;
    assert!(
        !events.to_string().contains("hijack"),
        "B's prompt never reached A's session"
    );
    assert_eq!(
        h.get(&format!("/v1/runs?session_id={sid}"), &key_a).await.1["runs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_isolation_on_sqlite() {
    let h = Harness::sqlite().await;
    tenant_isolation(&h).await;
    h.server.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_isolation_on_postgres() {
    let Some(h) = Harness::postgres().await else {
        return;
    };
    tenant_isolation(&h).await;
    h.server.stop().await.expect("a clean stop");
}

// ---------------------------------------------------------------------------------------------
// Operational endpoints and the OpenAPI document.

/// Every `(METHOD, path)` operation of an OpenAPI document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in [
            "get", "put", "post", "delete", "patch", "head", "options", "trace",
        ] {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// Every HTTP route of PROTOCOL.md, exactly as named there, plus `/openapi.json`.
const PROTOCOL_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/auth/signup"),
    ("POST", "/v1/auth/login"),
    ("POST", "/v1/api-keys"),
    ("GET", "/v1/api-keys"),
    ("DELETE", "/v1/api-keys/{id}"),
    ("PUT", "/v1/credentials/{provider}"),
    ("GET", "/v1/credentials"),
    ("DELETE", "/v1/credentials/{provider}"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("POST", "/v1/sessions/{id}/prompts"),
    ("POST", "/v1/sessions/{id}/cancel"),
    ("DELETE", "/v1/sessions/{id}"),
    ("GET", "/v1/sessions/{id}/events"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/{run_id}"),
    ("POST", "/v1/environment/detect"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("GET", "/v1/sessions/{id}/ws"),
    ("GET", "/sandbox/v1/sessions/{org_id}/{session_id}/ws"),
    ("GET", "/openapi.json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openapi_document_matches_the_router() {
    let h = Harness::sqlite().await;
    let (status, doc) = h.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{:?}",
        doc["openapi"]
    );
    let documented = operations(&doc);
    let protocol: BTreeSet<(String, String)> = PROTOCOL_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, protocol,
        "the document names exactly the routes of PROTOCOL.md"
    );

    // The router serves an operation iff the document has it: every documented path under every
    // method, with placeholder ids and no credential. A route that is not served answers the
    // router's own 404 (`no_route`) or 405; a served one answers anything else (401, 400, 200…).
    let paths: BTreeSet<&str> = documented.iter().map(|(_, p)| p.as_str()).collect();
    for path in paths {
        let concrete: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "probe" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            let res = h
                .http
                .request(method.clone(), h.url(&concrete))
                .send()
                .await
                .expect("an answer");
            let status = res.status();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            let served = !(status == StatusCode::METHOD_NOT_ALLOWED
                || (status == StatusCode::NOT_FOUND && body["error"]["code"] == "no_route"));
            let in_doc = documented.contains(&(method.to_string(), path.to_string()));
            assert_eq!(
                served, in_doc,
                "{method} {path}: served={served} (answered {status} {body}), documented={in_doc}"
            );
        }
    }
    h.server.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_ready_and_metrics() {
    let h = Harness::sqlite().await;
    assert_eq!(
        h.call(Method::GET, "/health", None, None).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        h.call(Method::GET, "/ready", None, None).await,
        (StatusCode::OK, json!({"status": "ready"}))
    );

    // Some traffic: a session that runs one prompt to the ledger.
    let (_, key) = h.org("Metrics").await;
    assert_eq!(
        h.call(
            Method::PUT,
            "/v1/credentials/openai",
            Some(&key),
            Some(json!({"api_key": BYOK}))
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    let sid = h
        .post("/v1/sessions", &key, json!({"model": MODEL}))
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run_id = h
        .post(
            &format!("/v1/sessions/{sid}/prompts"),
            &key,
            json!({"text": "count me"}),
        )
        .await
        .1["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let script = Script {
        reply: vec!["counted".into()],
        tool: None,
        usage: Usage {
            input_tokens: 1,
            output_tokens: 1,
        },
    };
    let _sandbox = play_next_run(&h, 0, &script).await;
    run_from_ledger(&h, &key, &run_id).await;

    let res = h.http.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text().await.unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    // This server's one session is live (its sandbox is connected), so none is hibernated.
    assert_eq!(
        value("switchboard_sessions_live"),
        1.0,
        "the session is live"
    );
    assert_eq!(value("switchboard_sessions_hibernated"), 0.0);
    assert!(
        value("switchboard_events_relayed_total") >= 5.0,
        "events were relayed"
    );
    assert!(value("switchboard_ledger_outbox_depth") >= 0.0);
    assert!(
        text.contains("switchboard_run_outcomes_total{status=\"completed\"}"),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("switchboard_http_request_duration_seconds")
                && l.contains("route=\"/v1/sessions/{id}/prompts\"")
                && l.contains("method=\"POST\"")
        ),
        "latency by route pattern:\n{text}"
    );
    assert!(
        !text.contains(&sid),
        "routes are labelled by pattern, never by id"
    );

    // /ready names the failing dependency: the session store directory turns read-only.
    use std::os::unix::fs::PermissionsExt;
    let root = h.server.deployment.session_store.root().to_path_buf();
    let before = std::fs::metadata(&root).unwrap().permissions();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o500)).unwrap();
    let not_ready = h.call(Method::GET, "/ready", None, None).await;
    std::fs::set_permissions(&root, before).unwrap();
    assert_eq!(
        not_ready.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "{not_ready:?}"
    );
    assert_eq!(not_ready.1["dependency"], "session_store");
    assert_error(&not_ready, 503, "unavailable");
    assert_eq!(
        h.call(Method::GET, "/ready", None, None).await.0,
        StatusCode::OK,
        "ready again once healed"
    );
    h.server.stop().await.expect("a clean stop");
}
