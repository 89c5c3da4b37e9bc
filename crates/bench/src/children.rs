//! The driver's handles on its child processes: the server under test ([`SbServer`], from
//! `switchboard-bench serve`) and the bare relay ([`Relay`], from `switchboard-bench relay`).
//! Each child prints a `ready` JSON line; the server then prints spawn specs, which the handle
//! files by session id for the driver's scripted sandboxes.

use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Notify;

/// A spawn the server asked its sandbox provider for.
#[derive(Debug, Clone)]
pub struct SpawnInfo {
    pub sandbox_id: String,
    pub session_key: String,
    pub callback_url: String,
    pub token: String,
}

#[derive(Default)]
struct Spawns {
    by_session: Mutex<HashMap<String, VecDeque<SpawnInfo>>>,
    arrived: Notify,
}

/// Starts `exe` with `args`, stdin and stdout piped, and reads its `ready` line.
async fn start_child(
    exe: &Path,
    args: &[String],
) -> Result<(Child, ChildStdin, ChildStdout, Value), String> {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {} {args:?}: {e}", exe.display()))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    let read = tokio::time::timeout(crate::WAIT, lines.read_line(&mut line)).await;
    match read {
        Ok(Ok(n)) if n > 0 => {}
        _ => {
            let status = child.try_wait().ok().flatten();
            return Err(format!("{args:?} printed no ready line (exit: {status:?})"));
        }
    }
    let value: Value =
        serde_json::from_str(&line).map_err(|e| format!("{args:?}: ready line {line:?}: {e}"))?;
    let ready = value
        .get("ready")
        .cloned()
        .ok_or(format!("{args:?}: not a ready line: {line}"))?;
    Ok((child, stdin, lines.into_inner(), ready))
}

/// Ends a child: closes its stdin (it stops on its own), then kills it if it lingers.
async fn end_child(mut child: Child, stdin: Option<ChildStdin>) {
    drop(stdin);
    if tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// How a server child is set up (the defaults are the server's own, with printed spawn specs).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub database_url: Option<String>,
    pub local_sandboxes: bool,
    pub hibernate_after_s: u64,
    pub sandbox_idle_timeout_s: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            database_url: None,
            local_sandboxes: false,
            hibernate_after_s: 60,
            sandbox_idle_timeout_s: 600,
        }
    }
}

/// The server under test, running as a child process.
pub struct SbServer {
    child: Child,
    stdin: Option<ChildStdin>,
    pub addr: String,
    pub api_key: String,
    pub org_id: String,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
    spawns: Arc<Spawns>,
}

impl SbServer {
    /// Starts `exe serve` on `data_dir`.
    pub async fn start(
        exe: &Path,
        data_dir: PathBuf,
        options: &ServerOptions,
    ) -> Result<SbServer, String> {
        let mut args = vec![
            "serve".to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--hibernate-after-s".into(),
            options.hibernate_after_s.to_string(),
            "--sandbox-idle-timeout-s".into(),
            options.sandbox_idle_timeout_s.to_string(),
        ];
        if let Some(url) = &options.database_url {
            args.extend(["--database-url".to_string(), url.to_string()]);
        }
        if options.local_sandboxes {
            args.push("--local-sandboxes".into());
        }
        let (child, stdin, stdout, ready) = start_child(exe, &args).await?;
        let text = |k: &str| ready[k].as_str().unwrap_or_default().to_string();
        let spawns = Arc::new(Spawns::default());
        tokio::spawn(file_spawns(stdout, spawns.clone()));
        switchboard_server::serve::install_crypto_provider();
        Ok(SbServer {
            addr: text("addr"),
            api_key: text("api_key"),
            org_id: text("org_id"),
            pid: ready["pid"].as_u64().unwrap_or(0) as u32,
            child,
            stdin: Some(stdin),
            data_dir,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .map_err(|e| e.to_string())?,
            spawns,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The server process's resident memory.
    pub fn rss(&self) -> Option<u64> {
        crate::sys::rss_bytes(self.pid)
    }

    /// The next spawn the server asked for on behalf of `session_id` (waits for it).
    pub async fn spawn_of(&self, session_id: &str) -> Result<SpawnInfo, String> {
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        loop {
            let arrived = self.spawns.arrived.notified();
            if let Some(info) = self
                .spawns
                .by_session
                .lock()
                .unwrap()
                .get_mut(session_id)
                .and_then(VecDeque::pop_front)
            {
                return Ok(info);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(format!(
                    "no sandbox spawn for session {session_id} within {:?}",
                    crate::WAIT
                ));
            }
        }
    }

    /// An HTTP call with the org's key; the status and the JSON body (`null` when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.api_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = tokio::time::timeout(crate::WAIT, request.send())
            .await
            .map_err(|_| format!("{path}: no answer within {:?}", crate::WAIT))?
            .map_err(|e| format!("{path}: {e}"))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| format!("{path}: {e}"))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))?
        };
        Ok((status, body))
    }

    /// `POST /v1/sessions` → the new session's id.
    pub async fn create_session(&self) -> Result<String, String> {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/sessions",
                Some(serde_json::json!({"model": crate::MODEL})),
            )
            .await?;
        if status != 201 {
            return Err(format!("POST /v1/sessions answered {status}: {body}"));
        }
        body["id"]
            .as_str()
            .map(str::to_string)
            .ok_or(format!("no id in {body}"))
    }

    /// `POST /v1/sessions/{id}/prompts`.
    pub async fn prompt(&self, session_id: &str, text: &str) -> Result<(), String> {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/sessions/{session_id}/prompts"),
                Some(serde_json::json!({"text": text})),
            )
            .await?;
        if status != 202 {
            return Err(format!("a prompt answered {status}: {body}"));
        }
        Ok(())
    }

    /// `GET /v1/sessions/{id}` → `last_seq`.
    pub async fn last_seq(&self, session_id: &str) -> Result<u64, String> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/sessions/{session_id}"),
                None,
            )
            .await?;
        if status != 200 {
            return Err(format!("GET session answered {status}: {body}"));
        }
        body["last_seq"]
            .as_u64()
            .ok_or(format!("no last_seq in {body}"))
    }

    /// A gauge or counter of `/metrics` (summed over its label sets).
    pub async fn metric(&self, name: &str) -> Result<f64, String> {
        let response = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .map_err(|e| format!("/metrics: {e}"))?;
        let text = response
            .text()
            .await
            .map_err(|e| format!("/metrics: {e}"))?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Stops the server (its sandboxes end with it).
    pub async fn stop(mut self) {
        let stdin = self.stdin.take();
        let logs = self.child.id().map(crate::relay::durable_dir);
        end_child(self.child, stdin).await;
        if let Some(logs) = logs {
            let _ = std::fs::remove_dir_all(logs);
        }
    }
}

async fn file_spawns(stdout: ChildStdout, spawns: Arc<Spawns>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let spawn = &value["spawn"];
        let text = |k: &str| spawn[k].as_str().unwrap_or_default().to_string();
        let info = SpawnInfo {
            sandbox_id: text("sandbox_id"),
            session_key: text("session_key"),
            callback_url: text("callback_url"),
            token: text("token"),
        };
        let Some((_, session)) = info.session_key.split_once(':') else {
            continue;
        };
        spawns
            .by_session
            .lock()
            .unwrap()
            .entry(session.to_string())
            .or_default()
            .push_back(info);
        spawns.arrived.notify_waiters();
    }
}

/// The bare relay, running as a child process.
pub struct Relay {
    child: Child,
    stdin: Option<ChildStdin>,
    pub addr: String,
}

impl Relay {
    pub async fn start(exe: &Path) -> Result<Relay, String> {
        let (child, stdin, _stdout, ready) = start_child(exe, &["relay".to_string()]).await?;
        Ok(Relay {
            child,
            stdin: Some(stdin),
            addr: ready["addr"].as_str().unwrap_or_default().to_string(),
        })
    }

    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        let stdin = self.stdin.take();
        let logs = self.child.id().map(crate::relay::durable_dir);
        end_child(self.child, stdin).await;
        if let Some(logs) = logs {
            let _ = std::fs::remove_dir_all(logs);
        }
    }
}
