//! The scripted peers: WebSocket clients that time the events they receive, and sandboxes that
//! speak the sandbox protocol (hello, events, `run_finished`) and watch the server's `run` and
//! `ack` frames. The same peers drive the server under test and the bare relay, so both pay the
//! same client-side costs.

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Text of the `n`th bench event: `m<n> ` then filler, about the size of an agent's reply delta.
pub fn delta_text(n: u64) -> String {
    format!("m{n} the agent streams a piece of its reply to every client, persisted first")
}

/// The marker number in a frame's text: a Switchboard event envelope carries it at
/// `data.text`, a frame forwarded by the bare relay (the sandbox's own message) at
/// `event.data.text`.
pub fn marker(frame: &str) -> Option<u64> {
    let value: Value = serde_json::from_str(frame).ok()?;
    let text = value["data"]["text"]
        .as_str()
        .or_else(|| value["event"]["data"]["text"].as_str())?;
    let rest = text.strip_prefix('m')?;
    rest.split(' ').next()?.parse().ok()
}

/// The sandbox protocol's `event` frame with a `message.delta` carrying [`delta_text`].
pub fn event_frame(run_id: &str, n: u64) -> String {
    serde_json::json!({
        "type": "event",
        "run_id": run_id,
        "n": n,
        "event": {"type": "message.delta", "data": {"text": delta_text(n)}},
    })
    .to_string()
}

/// The WebSocket settings of every bench peer and of the bare relay: an 8 KiB read buffer, as the
/// server uses (tungstenite's default of 128 KiB is allocated per socket and zero-filled on every
/// read).
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Dials `url` (TCP_NODELAY), with `Authorization: Bearer` when given.
pub async fn dial(url: &str, bearer: Option<&str>) -> Result<Ws, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .map_err(|e| format!("a bearer header: {e}"))?,
        );
    }
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(config()), true);
    match tokio::time::timeout(crate::WAIT, connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("dialing {url}: {e}")),
        Err(_) => Err(format!("dialing {url}: no answer within {:?}", crate::WAIT)),
    }
}

/// A client that reads until its socket ends and reports each marked event it receives.
pub struct Client {
    sink: SplitSink<Ws, Message>,
    reader: JoinHandle<()>,
    first: Option<oneshot::Receiver<()>>,
}

impl Client {
    /// Starts reading `ws`; `receipt(marker, when)` is called for every marked frame.
    pub fn start(ws: Ws, receipt: impl FnMut(u64, Instant) + Send + 'static) -> Client {
        let (sink, stream) = ws.split();
        let (first_tx, first) = oneshot::channel();
        let reader = tokio::spawn(read_markers(stream, first_tx, receipt));
        Client {
            sink,
            reader,
            first: Some(first),
        }
    }

    /// Waits for the first frame (the hello): from then on the client receives live events.
    pub async fn ready(&mut self) -> Result<(), String> {
        let Some(first) = self.first.take() else {
            return Ok(());
        };
        match tokio::time::timeout(crate::WAIT, first).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the client socket ended before its first frame".into()),
            Err(_) => Err(format!("no first frame within {:?}", crate::WAIT)),
        }
    }

    /// Sends one text frame.
    pub async fn send(&mut self, text: String) -> Result<(), String> {
        self.sink
            .send(Message::text(text))
            .await
            .map_err(|e| format!("a client frame: {e}"))
    }

    /// Whether the socket ended (the server dropped the client).
    pub fn ended(&self) -> bool {
        self.reader.is_finished()
    }

    /// Closes the socket and stops reading.
    pub async fn close(mut self) {
        let _ = self.sink.close().await;
        self.reader.abort();
    }
}

async fn read_markers(
    mut stream: SplitStream<Ws>,
    first: oneshot::Sender<()>,
    mut receipt: impl FnMut(u64, Instant) + Send + 'static,
) {
    let mut first = Some(first);
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Text(text) = message {
            let at = Instant::now();
            if let Some(first) = first.take() {
                let _ = first.send(());
            }
            if text.as_str().contains("\"type\":\"error\"")
                && std::env::var_os("BENCH_DEBUG").is_some()
            {
                eprintln!("[bench] a client got {}", text.as_str());
            }
            if let Some(n) = marker(text.as_str()) {
                receipt(n, at);
            }
        }
    }
}

/// A scripted sandbox: says hello, sends events, and watches what the server sends back.
pub struct Sandbox {
    sink: SplitSink<Ws, Message>,
    /// Run ids the server dispatched (`run` frames), in order.
    runs: mpsc::UnboundedReceiver<String>,
    /// The highest `n` the server acknowledged (durable).
    acked: watch::Receiver<u64>,
    reader: JoinHandle<()>,
    n: u64,
}

impl Sandbox {
    /// Starts a sandbox on an open socket (no hello yet).
    pub fn start(ws: Ws) -> Sandbox {
        let (sink, mut stream) = ws.split();
        let (run_tx, runs) = mpsc::unbounded_channel();
        let (ack_tx, acked) = watch::channel(0u64);
        let reader = tokio::spawn(async move {
            while let Some(next) = stream.next().await {
                let message = match next {
                    Ok(message) => message,
                    Err(e) => {
                        eprintln!("[bench] a sandbox socket broke: {e}");
                        break;
                    }
                };
                if let Message::Close(Some(close)) = &message {
                    if std::env::var_os("BENCH_DEBUG").is_some() {
                        eprintln!(
                            "[bench] sandbox socket closed by the server: {} {}",
                            close.code, close.reason
                        );
                    }
                }
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                match value["type"].as_str() {
                    Some("ack") => {
                        let n = value["n"].as_u64().unwrap_or(0);
                        ack_tx.send_if_modified(|a| {
                            let newer = n > *a;
                            if newer {
                                *a = n;
                            }
                            newer
                        });
                    }
                    Some("run") => {
                        if let Some(id) = value["run_id"].as_str() {
                            let _ = run_tx.send(id.to_string());
                        }
                    }
                    _ => {}
                }
            }
        });
        Sandbox {
            sink,
            runs,
            acked,
            reader,
            n: 0,
        }
    }

    /// Dials a Switchboard callback URL with its token and says hello.
    pub async fn dial_back(url: &str, token: &str, sandbox_id: &str) -> Result<Sandbox, String> {
        let mut sandbox = Sandbox::start(dial(url, Some(token)).await?);
        let hello = serde_json::json!({
            "type": "hello", "sandbox_id": sandbox_id, "agent": "bench", "agent_version": "1",
        });
        sandbox.send_text(hello.to_string()).await?;
        Ok(sandbox)
    }

    pub async fn send_text(&mut self, text: String) -> Result<(), String> {
        self.sink
            .send(Message::text(text))
            .await
            .map_err(|e| format!("a sandbox frame: {e}"))
    }

    /// Sends the next event of `run_id` and returns its `n` (also its marker).
    pub async fn send_event(&mut self, run_id: &str) -> Result<u64, String> {
        self.n += 1;
        let n = self.n;
        self.send_text(event_frame(run_id, n)).await?;
        Ok(n)
    }

    /// Ends `run_id` as completed.
    pub async fn finish_run(&mut self, run_id: &str) -> Result<(), String> {
        self.n += 1;
        let frame = serde_json::json!({
            "type": "run_finished", "run_id": run_id, "n": self.n, "status": "completed",
            "stop_reason": "end_turn", "usage": {"input_tokens": 10, "output_tokens": 10},
        });
        self.send_text(frame.to_string()).await
    }

    /// The next run the server dispatches.
    pub async fn next_run(&mut self) -> Result<String, String> {
        match tokio::time::timeout(crate::WAIT, self.runs.recv()).await {
            Ok(Some(run)) => Ok(run),
            Ok(None) => Err("the sandbox socket closed before a run came".into()),
            Err(_) => Err(format!("no run dispatched within {:?}", crate::WAIT)),
        }
    }

    /// Waits until the server acknowledged (made durable) every message up to `n`.
    pub async fn acked(&mut self, n: u64) -> Result<(), String> {
        let wait = self.acked.wait_for(|a| *a >= n);
        match tokio::time::timeout(crate::WAIT, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(format!(
                "the sandbox socket closed before n = {n} was acked"
            )),
            Err(_) => Err(format!("n = {n} not acked within {:?}", crate::WAIT)),
        }
    }

    /// The highest `n` acknowledged so far.
    pub fn acked_now(&self) -> u64 {
        *self.acked.borrow()
    }

    /// How many messages this sandbox numbered so far.
    pub fn sent(&self) -> u64 {
        self.n
    }

    pub async fn close(mut self) {
        let _ = self.sink.close().await;
        self.reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_in_both_shapes() {
        let sandbox = event_frame("run-1", 42);
        assert_eq!(
            marker(&sandbox),
            Some(42),
            "the relay forwards the sandbox frame"
        );
        let envelope = serde_json::json!({
            "seq": 3, "type": "message.delta", "run_id": "run-1", "at": "x", "critical": false,
            "data": {"text": delta_text(7)},
        });
        assert_eq!(marker(&envelope.to_string()), Some(7));
        assert_eq!(marker(r#"{"type":"hello"}"#), None);
    }
}
