//! `ScriptedSandbox`: plays a sandbox in-process — dials back through the `SessionHost` with the
//! token the provider was given, then answers each `run` by a script. It stands in for
//! `switchboard-bridge` in the walking skeleton and the `demo` command until the bridge exists.

use futures::StreamExt;
use serde_json::json;
use switchboard_core::protocol::{
    Event, SandboxMessage, ServerToSandbox, SpawnSpec, TerminalStatus, ToolStatus, Usage,
};
use switchboard_core::tenancy::SessionKey;
use switchboard_core::{CallId, OrgId, RunId, SandboxId, SessionId};
use switchboard_ports::session::{SandboxHandle, SandboxLink};
use switchboard_ports::{SecretString, SessionHost, SessionHostError};

/// What the scripted agent does for one run.
#[derive(Debug, Clone)]
pub struct Script {
    /// Streamed as `message.delta` events, in order.
    pub reply: Vec<String>,
    /// A `bash` tool call and its output, sent before the reply.
    pub tool: Option<(String, String)>,
    pub usage: Usage,
}

impl Script {
    /// Replies with `text` in three pieces, after one tool call.
    pub fn reply_with_tool(text: &str, command: &str, output: &str) -> Self {
        let third = text.len().div_ceil(3).max(1);
        let reply = text
            .as_bytes()
            .chunks(third)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        Script {
            reply,
            tool: Some((command.to_string(), output.to_string())),
            usage: Usage {
                input_tokens: 120,
                output_tokens: 30,
            },
        }
    }
}

/// One dialled-back, scripted sandbox.
pub struct ScriptedSandbox {
    handle: Box<dyn SandboxHandle>,
    frames: futures::channel::mpsc::Receiver<ServerToSandbox>,
    n: u64,
    /// Every frame the server sent, in order (acks included).
    pub received: Vec<ServerToSandbox>,
}

/// The session key named by a spawn spec's `session_key` (`org:session`).
pub fn key_of(spec: &SpawnSpec) -> Option<SessionKey> {
    let (org, session) = spec.session_key.split_once(':')?;
    Some(SessionKey::for_sandbox_dial_back(
        OrgId::parse(org).ok()?,
        SessionId::parse(session).ok()?,
    ))
}

impl ScriptedSandbox {
    /// Dials back with the spec's token and says hello.
    pub async fn dial_back(
        host: &dyn SessionHost,
        spec: &SpawnSpec,
        sandbox_id: &SandboxId,
    ) -> Result<Self, SessionHostError> {
        let key = key_of(spec).ok_or_else(|| {
            SessionHostError::Invalid(format!("bad session key {:?}", spec.session_key))
        })?;
        let SandboxLink { handle, frames } = host
            .attach_sandbox(&key, &SecretString::new(spec.token.clone()))
            .await?;
        handle
            .send(SandboxMessage::Hello {
                sandbox_id: sandbox_id.clone(),
                agent: "scripted".into(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
            })
            .await?;
        Ok(ScriptedSandbox {
            handle,
            frames,
            n: 0,
            received: Vec::new(),
        })
    }

    /// The next frame from the server, `None` once the server closed the socket.
    pub async fn next_frame(&mut self) -> Option<ServerToSandbox> {
        let frame = self.frames.next().await?;
        self.received.push(frame.clone());
        Some(frame)
    }

    /// Waits for the next `run` frame (skipping acks and restores) and returns its id and text.
    pub async fn next_run(&mut self) -> Option<(RunId, String)> {
        loop {
            if let ServerToSandbox::Run { run_id, text, .. } = self.next_frame().await? {
                return Some((run_id, text));
            }
        }
    }

    async fn send_numbered(
        &mut self,
        make: impl FnOnce(u64) -> SandboxMessage,
    ) -> Result<(), SessionHostError> {
        self.n += 1;
        let message = make(self.n);
        self.handle.send(message).await
    }

    /// Plays `script` for `run_id`: tool call and result, the reply's deltas, then `run_finished`.
    pub async fn play(&mut self, run_id: &RunId, script: &Script) -> Result<(), SessionHostError> {
        if let Some((command, output)) = &script.tool {
            let call_id = CallId::parse(format!("call_{}", self.n + 1)).expect("a valid call id");
            let call = Event::ToolCall {
                call_id: call_id.clone(),
                name: "bash".into(),
                input: json!({ "command": command }),
            };
            self.send_numbered(|n| SandboxMessage::Event {
                run_id: run_id.clone(),
                n,
                event: call,
            })
            .await?;
            let result = Event::ToolResult {
                call_id,
                status: ToolStatus::Ok,
                output: json!(output),
            };
            self.send_numbered(|n| SandboxMessage::Event {
                run_id: run_id.clone(),
                n,
                event: result,
            })
            .await?;
        }
        for piece in &script.reply {
            let delta = Event::MessageDelta {
                text: piece.clone(),
            };
            self.send_numbered(|n| SandboxMessage::Event {
                run_id: run_id.clone(),
                n,
                event: delta,
            })
            .await?;
        }
        let usage = script.usage;
        self.send_numbered(|n| SandboxMessage::RunFinished {
            run_id: run_id.clone(),
            n,
            status: TerminalStatus::Completed,
            stop_reason: Some("end_turn".into()),
            usage,
            error: None,
        })
        .await
    }

    /// Sends a heartbeat.
    pub async fn heartbeat(&mut self) -> Result<(), SessionHostError> {
        self.handle.send(SandboxMessage::Heartbeat).await
    }

    /// Hangs up.
    pub async fn hang_up(self) {
        self.handle.detach().await;
    }
}
