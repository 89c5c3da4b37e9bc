//! The two WebSockets of PROTOCOL.md: the client socket `GET /v1/sessions/{id}/ws?after=<seq>`
//! and the sandbox dial-back socket `GET /sandbox/v1/sessions/{org_id}/{session_id}/ws`.
//!
//! Both are pumps: the session host hands out a link (a bounded stream of frames for the socket and
//! a handle to send the socket's frames to the session); this module only moves JSON text frames
//! between the link and the socket. Who may attach is decided before upgrading, so a refusal is an
//! ordinary HTTP answer (401, 404). Frames over [`MAX_FRAME_BYTES`] close the socket with 1009. A
//! ping goes out every [`PING_INTERVAL`]; a peer heard from for no [`PEER_TIMEOUT`] is dropped. When
//! the socket ends, for whatever reason, the link is detached exactly once. Open sockets are the
//! gauge `switchboard_websockets_open{kind="client"|"sandbox"}`.

use super::AppState;
use crate::app::ApiError;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::protocol::client::ControlFrame;
use switchboard_core::protocol::{
    ClientMessage, SandboxMessage, ServerFrame, ServerToSandbox, MAX_FRAME_BYTES,
};
use switchboard_core::tenancy::SessionKey;
use switchboard_core::{ErrorClass, OrgId, SessionId};
use switchboard_ports::session::{ClientHandle, SandboxHandle};
use switchboard_ports::{Classify, SecretString, SessionHostError};
use tokio::time::Instant;

use super::auth::Authed;

/// How often the server pings a socket at the WebSocket level.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// A peer that sends nothing (not even a pong) for this long is dropped.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// A peer that takes longer than this to take one frame, or one burst of queued frames (it
/// stopped reading), is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Frames written to a socket between two flushes at most (see `send_burst`).
const WRITE_BURST: usize = 64;
/// How long a closing socket waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Close codes used here (RFC 6455 §7.4.1).
pub mod close_code {
    /// The session ended the stream (closed, evicted, or this socket fell behind or was replaced).
    pub const GOING_AWAY: u16 = 1001;
    /// A binary frame where JSON text was expected (sandbox socket).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not a valid message (sandbox socket).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame over 1 MiB.
    pub const TOO_BIG: u16 = 1009;
    /// The session could not take a frame (its host failed).
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// The routes of this module.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/sessions/{id}/ws", get(client_socket))
        .route(
            "/sandbox/v1/sessions/{org_id}/{session_id}/ws",
            get(sandbox_socket),
        )
}

/// The frame-size limits of both sockets: a larger frame is refused before it is buffered.
fn limited(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(READ_BUFFER_BYTES)
}

/// Each socket's read buffer. tungstenite's default (128 KiB) is allocated per socket and
/// zero-filled on every read, which dominated both the memory of an idle session and the CPU of a
/// streaming one (`cargo xtask bench`); a larger frame still gets room for its whole length.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// `after=<seq>` from a query string (`None` when absent); anything unparseable is 400.
fn parse_after(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(raw) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("after="))
    else {
        return Ok(None);
    };
    raw.parse::<u64>().map(Some).map_err(|_| {
        ApiError::new(
            400,
            ErrorClass::Invalid.code(),
            format!("after must be a sequence number, got {raw:?}"),
        )
    })
}

// ----- client socket ------------------------------------------------------------------------------

/// `GET /v1/sessions/{id}/ws?after=<seq>`: attaches before upgrading, so that another org's session
/// (or an unknown one) is a plain 404 and a bad credential a plain 401.
async fn client_socket(
    State(state): State<AppState>,
    Authed(principal): Authed,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let after = match parse_after(query.as_deref()) {
        Ok(after) => after,
        Err(e) => return e.into_response(),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            // Not a WebSocket handshake: a session the caller cannot see is still just not found.
            if let Err(e) = state.app.session(&principal, &id).await {
                return e.into_response();
            }
            return rejection.into_response();
        }
    };
    let link = match state.app.attach(&principal, &id, after).await {
        Ok(link) => link,
        Err(e) => return e.into_response(),
    };
    let handle: Arc<dyn ClientHandle> = Arc::from(link.handle);
    let guard = DetachGuard::new(Detachable::Client(handle.clone()));
    limited(upgrade).on_upgrade(move |socket| async move {
        metrics::gauge!("switchboard_websockets_open", "kind" => "client").increment(1.0);
        let ending = pump_client(socket, link.frames, handle.as_ref()).await;
        tracing::debug!(conn = %handle.conn(), ?ending, "client socket ended");
        guard.detach().await;
        metrics::gauge!("switchboard_websockets_open", "kind" => "client").decrement(1.0);
    })
}

/// Why a socket's pump stopped.
#[derive(Debug)]
enum Ending {
    /// The peer sent its close frame (answered while the socket is drained).
    PeerClosed,
    /// The connection broke, or the peer stopped taking frames.
    PeerGone,
    /// The server closed the socket with this code and reason.
    Closed(u16, String),
}

/// What the server may send a client besides session frames: a `bad_frame` answer.
fn bad_frame(message: impl Into<String>) -> ServerFrame {
    ServerFrame::Control(ControlFrame::Error {
        code: "bad_frame".into(),
        message: message.into(),
    })
}

/// Moves frames both ways until either side ends, then closes the socket.
async fn pump_client(
    mut socket: WebSocket,
    mut frames: mpsc::Receiver<ServerFrame>,
    handle: &dyn ClientHandle,
) -> Ending {
    let mut liveness = Liveness::new();
    let mut last_seq: Option<u64> = None;
    let ending = loop {
        tokio::select! {
            incoming = socket.recv() => {
                let message = match incoming {
                    None => break Ending::PeerGone,
                    Some(Err(e)) => break read_failure(e),
                    Some(Ok(message)) => message,
                };
                liveness.heard();
                let text = match message {
                    Message::Text(text) => text,
                    Message::Binary(_) => {
                        if send_json(&mut socket, &bad_frame("binary frames are not accepted; send JSON text frames")).await.is_err() {
                            break Ending::PeerGone;
                        }
                        continue;
                    }
                    // tungstenite answers pings itself; a pong only proves the peer is alive.
                    Message::Ping(_) | Message::Pong(_) => continue,
                    Message::Close(_) => break Ending::PeerClosed,
                };
                let parsed = match serde_json::from_str::<ClientMessage>(text.as_str()) {
                    Ok(message) => message,
                    Err(e) => {
                        if send_json(&mut socket, &bad_frame(format!("not a client message: {e}"))).await.is_err() {
                            break Ending::PeerGone;
                        }
                        continue;
                    }
                };
                if let Err(e) = handle.send(parsed).await {
                    if let Some(ending) = refused(&mut socket, e).await {
                        break ending;
                    }
                }
            }
            frame = frames.next() => {
                let Some(frame) = frame else {
                    let reason = match last_seq {
                        Some(seq) => format!("the session ended this stream; resume with after={seq}"),
                        None => "the session ended this stream; reconnect to resume".to_string(),
                    };
                    break Ending::Closed(close_code::GOING_AWAY, reason);
                };
                let track = |frame: &ServerFrame| {
                    if let ServerFrame::Event(event) = frame {
                        last_seq = Some(event.seq);
                    }
                };
                if send_burst(&mut socket, frame, &mut frames, track).await.is_err() {
                    break Ending::PeerGone;
                }
            }
            () = liveness.next_ping() => {
                if liveness.is_overdue() {
                    break Ending::Closed(close_code::GOING_AWAY, "no pong within 60 s".into());
                }
                if send(&mut socket, Message::Ping(Default::default())).await.is_err() {
                    break Ending::PeerGone;
                }
            }
        }
    };
    finish(socket, ending).await
}

/// The session host refused a client frame. A connection it no longer knows ends the socket; any
/// other refusal is answered with an `error` frame carrying the class's code.
async fn refused(socket: &mut WebSocket, e: SessionHostError) -> Option<Ending> {
    let class = e.class();
    if class == ErrorClass::NotFound {
        return Some(Ending::Closed(
            close_code::GOING_AWAY,
            "this connection is no longer attached; reconnect to resume".into(),
        ));
    }
    let frame = ServerFrame::Control(ControlFrame::Error {
        code: class.code().to_string(),
        message: e.to_string(),
    });
    send_json(socket, &frame)
        .await
        .err()
        .map(|_| Ending::PeerGone)
}

// ----- sandbox socket -----------------------------------------------------------------------------

/// `GET /sandbox/v1/sessions/{org_id}/{session_id}/ws` with `Authorization: Bearer <sandbox token>`.
/// The token is checked by the session (SHA-256, constant time) before upgrading: a wrong, stale or
/// reused token is 401 and changes nothing; an unknown session is 404.
async fn sandbox_socket(
    State(state): State<AppState>,
    Path((org_id, session_id)): Path<(String, String)>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return ApiError::new(
            401,
            ErrorClass::Unauthorized.code(),
            "a bearer sandbox token is required",
        )
        .into_response();
    };
    let key = match (OrgId::parse(org_id), SessionId::parse(session_id)) {
        (Ok(org), Ok(session)) => SessionKey::for_sandbox_dial_back(org, session),
        _ => return ApiError::class_not_found("session").into_response(),
    };
    // Attaching replaces the live sandbox connection, so only a real handshake may attach.
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let link = match state
        .host
        .attach_sandbox(&key, &SecretString::new(token))
        .await
    {
        Ok(link) => link,
        Err(e) => return ApiError::from_port(e).into_response(),
    };
    let handle: Arc<dyn SandboxHandle> = Arc::from(link.handle);
    let guard = DetachGuard::new(Detachable::Sandbox(handle.clone()));
    limited(upgrade).on_upgrade(move |socket| async move {
        metrics::gauge!("switchboard_websockets_open", "kind" => "sandbox").increment(1.0);
        let ending = pump_sandbox(socket, link.frames, handle.as_ref()).await;
        tracing::debug!(conn = %handle.conn(), %key, ?ending, "sandbox socket ended");
        guard.detach().await;
        metrics::gauge!("switchboard_websockets_open", "kind" => "sandbox").decrement(1.0);
    })
}

/// Moves frames both ways until either side ends. The sandbox protocol has no error frame: a frame
/// that cannot be used closes the socket (the bridge re-dials and re-sends what was not ACKed).
async fn pump_sandbox(
    mut socket: WebSocket,
    mut frames: mpsc::Receiver<ServerToSandbox>,
    handle: &dyn SandboxHandle,
) -> Ending {
    let mut liveness = Liveness::new();
    let ending = loop {
        tokio::select! {
            // Frames for the sandbox (ACKs) go out before the next message is read: with the
            // branches polled in random order, a sandbox streaming faster than its messages are
            // processed would let ACKs pile up until its bounded outbox overflowed and the
            // session dropped the connection.
            biased;
            frame = frames.next() => {
                let Some(frame) = frame else {
                    break Ending::Closed(close_code::GOING_AWAY, "the session closed this connection".into());
                };
                if send_burst(&mut socket, frame, &mut frames, |_| {}).await.is_err() {
                    break Ending::PeerGone;
                }
            }
            incoming = socket.recv() => {
                let message = match incoming {
                    None => break Ending::PeerGone,
                    Some(Err(e)) => break read_failure(e),
                    Some(Ok(message)) => message,
                };
                liveness.heard();
                let text = match message {
                    Message::Text(text) => text,
                    Message::Binary(_) => break Ending::Closed(close_code::UNSUPPORTED_DATA, "bad_frame: send JSON text frames".into()),
                    Message::Ping(_) | Message::Pong(_) => continue,
                    Message::Close(_) => break Ending::PeerClosed,
                };
                let message = match serde_json::from_str::<SandboxMessage>(text.as_str()) {
                    Ok(message) => message,
                    Err(e) => break Ending::Closed(close_code::INVALID_PAYLOAD, format!("bad_frame: {e}")),
                };
                if let Err(e) = handle.send(message).await {
                    break match e.class() {
                        ErrorClass::NotFound => Ending::Closed(close_code::GOING_AWAY, "this connection was replaced or closed".into()),
                        class => Ending::Closed(close_code::INTERNAL_ERROR, format!("{}: the session could not take the frame", class.code())),
                    };
                }
            }
            () = liveness.next_ping() => {
                if liveness.is_overdue() {
                    break Ending::Closed(close_code::GOING_AWAY, "no pong within 60 s".into());
                }
                if send(&mut socket, Message::Ping(Default::default())).await.is_err() {
                    break Ending::PeerGone;
                }
            }
        }
    };
    finish(socket, ending).await
}

// ----- shared -------------------------------------------------------------------------------------

/// A read error: a frame over the limit closes with 1009; anything else means the peer is gone.
fn read_failure(e: axum::Error) -> Ending {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
    match e.into_inner().downcast::<WsError>() {
        Ok(inner)
            if matches!(
                *inner,
                WsError::Capacity(CapacityError::MessageTooLong { .. })
            ) =>
        {
            Ending::Closed(
                close_code::TOO_BIG,
                format!("frames are limited to {MAX_FRAME_BYTES} bytes"),
            )
        }
        _ => Ending::PeerGone,
    }
}

/// Sends one frame; a peer that does not take it within [`SEND_TIMEOUT`] counts as gone.
async fn send(socket: &mut WebSocket, message: Message) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(()),
    }
}

async fn send_json(socket: &mut WebSocket, value: &impl Serialize) -> Result<(), ()> {
    send(socket, json_message(value)).await
}

fn json_message(value: &impl Serialize) -> Message {
    Message::text(serde_json::to_string(value).expect("wire types serialize"))
}

/// Sends `first` and the frames already queued behind it (at most [`WRITE_BURST`] in all), then
/// flushes once: a session that hands over a batch of events (or ACKs) costs one write to the
/// socket, not one per frame. `each` sees every frame as it goes. A peer that does not take the
/// burst within [`SEND_TIMEOUT`] counts as gone.
async fn send_burst<T: Serialize>(
    socket: &mut WebSocket,
    first: T,
    queued: &mut mpsc::Receiver<T>,
    mut each: impl FnMut(&T),
) -> Result<(), ()> {
    let burst = async {
        each(&first);
        socket.feed(json_message(&first)).await?;
        for _ in 1..WRITE_BURST {
            // Empty or closed: the pump's next read of the stream tells which.
            let Ok(frame) = queued.try_recv() else {
                break;
            };
            each(&frame);
            socket.feed(json_message(&frame)).await?;
        }
        socket.flush().await
    };
    match tokio::time::timeout(SEND_TIMEOUT, burst).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(()),
    }
}

/// Ends the socket as `ending` calls for: sends the server's close frame (its reason cut to the
/// 123 bytes a close frame holds), and lets the close handshake finish (reading on, for at most
/// [`CLOSE_LINGER`], answers the peer's close frame and lets the peer read ours before the
/// connection drops).
async fn finish(mut socket: WebSocket, ending: Ending) -> Ending {
    let handshake = match &ending {
        Ending::Closed(code, reason) => {
            let mut reason = reason.clone();
            while reason.len() > 123 {
                reason.pop();
            }
            send(
                &mut socket,
                Message::Close(Some(CloseFrame {
                    code: *code,
                    reason: reason.into(),
                })),
            )
            .await
            .is_ok()
        }
        Ending::PeerClosed => true,
        Ending::PeerGone => false,
    };
    if handshake {
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await;
    }
    ending
}

/// When to ping and whether the peer has gone quiet for too long.
struct Liveness {
    last_heard: Instant,
    next_ping: Instant,
}

impl Liveness {
    fn new() -> Self {
        let now = Instant::now();
        Liveness {
            last_heard: now,
            next_ping: now + PING_INTERVAL,
        }
    }

    fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// Resolves at the next ping time (and schedules the one after).
    async fn next_ping(&mut self) {
        tokio::time::sleep_until(self.next_ping).await;
        self.next_ping = Instant::now() + PING_INTERVAL;
    }

    fn is_overdue(&self) -> bool {
        self.last_heard.elapsed() >= PEER_TIMEOUT
    }
}

/// A link's handle, to detach when its socket ends.
enum Detachable {
    Client(Arc<dyn ClientHandle>),
    Sandbox(Arc<dyn SandboxHandle>),
}

impl Detachable {
    async fn detach(self) {
        match self {
            Detachable::Client(handle) => handle.detach().await,
            Detachable::Sandbox(handle) => handle.detach().await,
        }
    }
}

/// Detaches exactly once: when the pump ends, or — if the upgrade never happened (the peer went
/// away mid-handshake) or the pump was dropped — on drop, on a task.
struct DetachGuard(Option<Detachable>);

impl DetachGuard {
    fn new(link: Detachable) -> Self {
        DetachGuard(Some(link))
    }

    async fn detach(mut self) {
        if let Some(link) = self.0.take() {
            link.detach().await;
        }
    }
}

impl Drop for DetachGuard {
    fn drop(&mut self) {
        if let Some(link) = self.0.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(link.detach());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_is_read_from_the_query() {
        assert_eq!(parse_after(None).unwrap(), None);
        assert_eq!(parse_after(Some("token=sk_x")).unwrap(), None);
        assert_eq!(parse_after(Some("token=sk_x&after=17")).unwrap(), Some(17));
        assert_eq!(parse_after(Some("after=0")).unwrap(), Some(0));
        assert_eq!(parse_after(Some("after=-1")).unwrap_err().status, 400);
        assert_eq!(parse_after(Some("after=")).unwrap_err().status, 400);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_peer_is_pinged_every_20_s_and_dropped_after_60_s() {
        let start = Instant::now();
        let mut liveness = Liveness::new();
        liveness.next_ping().await;
        assert_eq!(start.elapsed(), PING_INTERVAL);
        assert!(!liveness.is_overdue());
        liveness.next_ping().await;
        liveness.next_ping().await;
        assert_eq!(start.elapsed(), 3 * PING_INTERVAL);
        assert!(liveness.is_overdue(), "nothing heard for 60 s");
        liveness.heard();
        assert!(
            !liveness.is_overdue(),
            "a pong (or any frame) proves the peer is alive"
        );
    }

    #[test]
    fn bad_frame_answers_have_the_protocol_shape() {
        let json = serde_json::to_value(bad_frame("nope")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "error", "code": "bad_frame", "message": "nope"})
        );
    }
}
