//! The connection to the control plane: dials back with the sandbox token, says `hello`, re-sends
//! what the server has not ACKed, streams the agent's messages, heartbeats, and obeys the server's
//! frames. A dropped connection is re-dialled with backoff until the idle timeout runs out.

use futures::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::sync::Arc;
use switchboard_core::protocol::{SandboxMessage, ServerToSandbox};
use switchboard_core::RunId;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::agent::{Agent, Cancelled, Job, Outgoing, RunJob};
use crate::outbox::{encode, Outbox};
use crate::{BridgeConfig, BridgeError, Exit};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How one dial went.
enum Dial {
    Connected(Box<Socket>),
    /// The server answered the handshake with a refusal that will not change (a wrong, stale or
    /// reused token, or no such session).
    Refused(u16),
    /// Anything worth retrying: no route, refused TCP, a timeout, a 5xx.
    Failed(String),
}

/// How a connection ended.
enum Ended {
    Shutdown,
    Dropped(String),
    /// The agent worker is gone (it only ends at exit, or by panicking).
    AgentGone,
}

/// The connection loop's state, which outlives every connection.
pub(crate) struct Link {
    config: BridgeConfig,
    agent: Arc<Agent>,
    from_agent: mpsc::UnboundedReceiver<Outgoing>,
    outbox: Outbox,
    /// Every run id the server has sent, so a re-sent `run` is not run twice.
    runs: HashSet<RunId>,
}

impl Link {
    pub(crate) fn new(
        config: BridgeConfig,
        agent: Arc<Agent>,
        from_agent: mpsc::UnboundedReceiver<Outgoing>,
        files: Vec<String>,
    ) -> Self {
        let mut outbox = Outbox::default();
        outbox.push(|n| SandboxMessage::Workspace { n, files });
        Link {
            config,
            agent,
            from_agent,
            outbox,
            runs: HashSet::new(),
        }
    }

    /// Dials, serves and re-dials until the server says `shutdown`, refuses us, or stays away for
    /// the idle timeout.
    pub(crate) async fn serve(&mut self) -> Result<Exit, BridgeError> {
        let mut attempt: u32 = 0;
        let mut disconnected_since = Instant::now();
        let mut wait = None;
        loop {
            let idle_deadline = disconnected_since + self.config.idle_timeout;
            if let Some(delay) = wait.take() {
                if timeout_at(idle_deadline, tokio::time::sleep(delay))
                    .await
                    .is_err()
                {
                    return Ok(self.idle_exit());
                }
            }
            let socket = match timeout_at(idle_deadline, self.dial()).await {
                Err(_) => return Ok(self.idle_exit()),
                Ok(Dial::Refused(status)) => {
                    tracing::error!(status, "the control plane refused this sandbox");
                    return Err(BridgeError::Refused { status });
                }
                Ok(Dial::Failed(reason)) => {
                    let delay = self.config.backoff.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(%reason, ?delay, "dialling the control plane failed");
                    wait = Some(delay);
                    continue;
                }
                Ok(Dial::Connected(socket)) => socket,
            };
            tracing::info!(
                unacked = self.outbox.len(),
                "connected to the control plane"
            );
            match self.connected(*socket, &mut attempt).await {
                Ended::Shutdown => return Ok(Exit::Shutdown),
                Ended::AgentGone => {
                    return Err(BridgeError::Agent("the agent worker ended".into()))
                }
                Ended::Dropped(reason) => {
                    let delay = self.config.backoff.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(%reason, ?delay, unacked = self.outbox.len(), "connection lost");
                    disconnected_since = Instant::now();
                    wait = Some(delay);
                }
            }
        }
    }

    fn idle_exit(&self) -> Exit {
        tracing::error!(
            idle_timeout = ?self.config.idle_timeout,
            "no connection to the control plane within the idle timeout; stopping the agent"
        );
        Exit::IdleTimeout
    }

    async fn dial(&self) -> Dial {
        let mut request = match self.config.callback_url.as_str().into_client_request() {
            Ok(request) => request,
            Err(e) => return Dial::Failed(format!("bad callback URL: {e}")),
        };
        let Ok(mut bearer) = HeaderValue::from_str(&format!("Bearer {}", self.config.token)) else {
            return Dial::Refused(401);
        };
        bearer.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, bearer);
        let dial = tokio_tungstenite::connect_async_with_config(request, None, true);
        match timeout(self.config.connect_timeout, dial).await {
            Err(_) => Dial::Failed(format!(
                "no handshake within {:?}",
                self.config.connect_timeout
            )),
            Ok(Ok((socket, _response))) => Dial::Connected(Box::new(socket)),
            Ok(Err(WsError::Http(response))) => {
                let status = response.status().as_u16();
                match status {
                    401 | 403 | 404 => Dial::Refused(status),
                    _ => Dial::Failed(format!("the handshake was answered {status}")),
                }
            }
            Ok(Err(e)) => Dial::Failed(e.to_string()),
        }
    }

    /// Serves one connection until it ends.
    async fn connected(&mut self, mut socket: Socket, attempt: &mut u32) -> Ended {
        let hello = encode(&SandboxMessage::Hello {
            sandbox_id: self.config.sandbox_id.clone(),
            agent: self.config.agent.clone(),
            agent_version: self.config.agent_version.clone(),
        });
        if let Err(e) = socket.send(Message::text(hello)).await {
            return Ended::Dropped(format!("sending hello failed: {e}"));
        }
        let unacked: Vec<String> = self.outbox.unacked().map(|(_, t)| t.to_string()).collect();
        for text in unacked {
            if let Err(e) = socket.send(Message::text(text)).await {
                return Ended::Dropped(format!("re-sending failed: {e}"));
            }
        }
        let every = self.config.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut heard_any = false;
        loop {
            tokio::select! {
                frame = socket.next() => {
                    let message = match frame {
                        None => return Ended::Dropped("the server closed the connection".into()),
                        Some(Err(e)) => return Ended::Dropped(e.to_string()),
                        Some(Ok(message)) => message,
                    };
                    last_heard = Instant::now();
                    if !heard_any {
                        // The session took this connection: the next drop starts a fresh backoff.
                        heard_any = true;
                        *attempt = 0;
                    }
                    let text = match message {
                        Message::Text(text) => text,
                        Message::Close(frame) => {
                            let reason = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason));
                            return Ended::Dropped(format!("the server closed the connection: {}", reason.unwrap_or_default()));
                        }
                        Message::Binary(_) => {
                            tracing::warn!("ignoring a binary frame");
                            continue;
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    };
                    match serde_json::from_str::<ServerToSandbox>(text.as_str()) {
                        Ok(frame) => {
                            if let Some(ended) = self.obey(frame, &mut socket).await {
                                return ended;
                            }
                        }
                        // Unknown frame types may come from a newer server: not a reason to drop.
                        Err(e) => tracing::warn!(error = %e, "ignoring a frame the bridge does not understand"),
                    }
                }
                outgoing = self.from_agent.recv() => {
                    let Some(outgoing) = outgoing else { return Ended::AgentGone };
                    let text = self.number(outgoing);
                    if let Err(e) = socket.send(Message::text(text)).await {
                        return Ended::Dropped(format!("sending failed: {e}"));
                    }
                }
                _ = heartbeat.tick() => {
                    let text = encode(&SandboxMessage::Heartbeat);
                    if let Err(e) = socket.send(Message::text(text)).await {
                        return Ended::Dropped(format!("sending a heartbeat failed: {e}"));
                    }
                }
                () = sleep_until(last_heard + self.config.silence_timeout) => {
                    return Ended::Dropped(format!("nothing heard from the server for {:?}", self.config.silence_timeout));
                }
            }
        }
    }

    /// Numbers an agent message into the outbox and returns its text.
    fn number(&mut self, outgoing: Outgoing) -> String {
        match outgoing {
            Outgoing::Event { run_id, event } => {
                self.outbox
                    .push(|n| SandboxMessage::Event { run_id, n, event })
            }
            Outgoing::Permission {
                run_id,
                request_id,
                tool,
                input,
            } => self.outbox.push(|n| SandboxMessage::PermissionRequest {
                run_id,
                n,
                request_id,
                tool,
                input,
            }),
            Outgoing::Finished {
                run_id,
                status,
                stop_reason,
                usage,
                error,
            } => self.outbox.push(|n| SandboxMessage::RunFinished {
                run_id,
                n,
                status,
                stop_reason,
                usage,
                error,
            }),
        }
    }

    /// Acts on one server frame; `Some` when the connection ends because of it.
    async fn obey(&mut self, frame: ServerToSandbox, socket: &mut Socket) -> Option<Ended> {
        match frame {
            ServerToSandbox::Ack { n } => {
                if !self.outbox.ack(n) {
                    tracing::debug!(n, "ack for a message no longer waiting");
                }
            }
            ServerToSandbox::Run {
                run_id,
                text,
                model,
                gateway,
            } => {
                if self.runs.insert(run_id.clone()) {
                    tracing::info!(%run_id, %model, "run received");
                    self.agent.submit(Job::Run(RunJob {
                        run_id,
                        text,
                        model,
                        gateway,
                    }));
                } else {
                    tracing::info!(%run_id, "ignoring a run already received");
                }
            }
            ServerToSandbox::Cancel { run_id } => match self.agent.cancel(&run_id) {
                Cancelled::Queued => {
                    tracing::info!(%run_id, "queued run cancelled");
                    let text = self.number(Outgoing::cancelled(run_id));
                    if let Err(e) = socket.send(Message::text(text)).await {
                        return Some(Ended::Dropped(format!("sending failed: {e}")));
                    }
                }
                Cancelled::Running => tracing::info!(%run_id, "cancelling the running turn"),
                Cancelled::Unknown => {
                    tracing::info!(%run_id, "cancel for a run not queued or running")
                }
            },
            ServerToSandbox::Permission {
                request_id,
                decision,
            } => {
                let agent = self.agent.clone();
                tokio::spawn(async move { agent.decide(request_id, decision).await });
            }
            ServerToSandbox::Restore { turns } => {
                tracing::info!(turns = turns.len(), "conversation to restore received");
                self.agent.submit(Job::Restore(turns));
            }
            ServerToSandbox::Shutdown => {
                tracing::info!("shutdown requested by the control plane");
                // Best effort: the server may already be gone.
                let _ = timeout(self.config.stop_grace, socket.close(None)).await;
                return Some(Ended::Shutdown);
            }
        }
        None
    }
}
