//! `switchboard session tail`: streams a session's events from the client WebSocket
//! (`/v1/sessions/{id}/ws?after=`) as readable lines on stdout, with a spinner on stderr while the
//! sandbox provisions (only when stderr is a terminal). Critical events are ACKed; a dropped
//! connection is resumed with `after` = the last event shown, so nothing prints twice; it ends on
//! `session.status` `closed`/`failed`, on the awaited run's `execution_complete`, or on Ctrl-C.

use super::client::{CliError, Connection};
use super::render;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// When tailing stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    /// When the session ends (`session.status` `closed` or `failed`).
    Closed,
    /// When this run's `execution_complete` arrives (or the session ends first).
    RunFinished(String),
}

/// How tailing ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailEnd {
    /// The session closed.
    Closed,
    /// The session failed.
    Failed,
    /// The awaited run ended with this status (`completed`, `failed`, `cancelled`, `timed_out`).
    RunFinished { status: String },
    /// Ctrl-C.
    Interrupted,
}

/// How many times in a row a dropped connection is re-opened before giving up.
const RECONNECT_ATTEMPTS: u32 = 5;

/// What one WebSocket connection ended with.
enum Connected {
    Ended(TailEnd),
    /// The socket closed or broke; resume with `after`.
    Dropped(String),
}

/// Streams session `id` until `until`; `after` = print only events after this seq.
pub async fn tail(
    conn: &Connection,
    id: &str,
    after: Option<u64>,
    until: Until,
) -> Result<TailEnd, CliError> {
    let id = super::client::path_segment(id)?;
    let screen = Screen::start(std::io::stderr().is_terminal());
    let mut state = TailState {
        last_seq: after,
        until,
        screen: screen.clone(),
        greeted: false,
    };
    let (mut failures, mut ever_greeted) = (0u32, false);
    let outcome = loop {
        state.greeted = false;
        let connected = tokio::select! {
            connected = state.connect_once(conn, id) => connected,
            _ = tokio::signal::ctrl_c() => Ok(Connected::Ended(TailEnd::Interrupted)),
        };
        if state.greeted {
            ever_greeted = true;
            failures = 0;
        }
        match connected {
            Ok(Connected::Ended(end)) => break Ok(end),
            // The first connection must work: a wrong key or id is an answer, not a blip.
            Err(e) if !ever_greeted => break Err(e),
            Err(e) if failures + 1 >= RECONNECT_ATTEMPTS => break Err(e),
            Err(e) => {
                failures += 1;
                screen.println_err(&format!("connection lost ({e}); reconnecting"));
            }
            Ok(Connected::Dropped(reason)) => {
                failures += 1;
                if failures >= RECONNECT_ATTEMPTS {
                    break Err(CliError::new(
                        "unavailable",
                        format!("the session stream kept dropping: {reason}"),
                    ));
                }
                screen.println_err(&format!(
                    "connection dropped ({reason}); resuming after seq {}",
                    state.last_seq.unwrap_or(0)
                ));
            }
        }
        // Back off before resuming (a pause for the user's sake, not synchronization).
        tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(failures.min(4)))).await;
    };
    screen.stop();
    outcome
}

struct TailState {
    last_seq: Option<u64>,
    until: Until,
    screen: Screen,
    /// Whether the current connection got its `hello` (it then counts as a working connection).
    greeted: bool,
}

impl TailState {
    async fn connect_once(&mut self, conn: &Connection, id: &str) -> Result<Connected, CliError> {
        let mut url = conn.ws_url(&format!("/v1/sessions/{id}/ws"));
        if let Some(after) = self.last_seq {
            url.push_str(&format!("?after={after}"));
        }
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| CliError::new("invalid", format!("bad WebSocket URL {url}: {e}")))?;
        let bearer =
            HeaderValue::from_str(&format!("Bearer {}", conn.api_key())).map_err(|_| {
                CliError::new(
                    "invalid",
                    "the API key holds characters a header cannot carry",
                )
            })?;
        request.headers_mut().insert("authorization", bearer);
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| handshake_error(conn.base(), e))?;
        let (mut sink, mut stream) = socket.split();
        while let Some(message) = stream.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => return Ok(Connected::Dropped(e.to_string())),
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    let reason = frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_else(|| "closed".into());
                    return Ok(Connected::Dropped(reason.trim().to_string()));
                }
                _ => continue,
            };
            let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                self.screen.println_err(&format!(
                    "ignored a frame that is not JSON: {}",
                    render::clip(text.as_str(), 120)
                ));
                continue;
            };
            if frame.get("seq").is_some() {
                if let Some(end) = self.on_event(&frame) {
                    if frame.get("critical").and_then(Value::as_bool) == Some(true) {
                        let _ = sink
                            .send(Message::text(
                                json!({"type": "ack", "seq": frame["seq"]}).to_string(),
                            ))
                            .await;
                    }
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(Connected::Ended(end));
                }
                if frame.get("critical").and_then(Value::as_bool) == Some(true) {
                    // Critical events are re-sent until ACKed.
                    let ack = json!({"type": "ack", "seq": frame["seq"]}).to_string();
                    if let Err(e) = sink.send(Message::text(ack)).await {
                        return Ok(Connected::Dropped(e.to_string()));
                    }
                }
                continue;
            }
            match frame.get("type").and_then(Value::as_str) {
                Some("hello") => {
                    self.greeted = true;
                    let status = frame.get("status").and_then(Value::as_str).unwrap_or("");
                    let last = frame.get("last_seq").and_then(Value::as_u64).unwrap_or(0);
                    self.screen.set(status == "provisioning");
                    self.screen
                        .println_err(&format!("session {id}: {status}, {last} events so far"));
                    // A session that already ended sends nothing more once we have seen it all.
                    if self.last_seq.unwrap_or(0) >= last {
                        match status {
                            "closed" => return Ok(Connected::Ended(TailEnd::Closed)),
                            "failed" => return Ok(Connected::Ended(TailEnd::Failed)),
                            _ => {}
                        }
                    }
                }
                Some("error") => {
                    self.screen.println_err(&format!(
                        "server: {}: {}",
                        frame.get("code").and_then(Value::as_str).unwrap_or("error"),
                        frame.get("message").and_then(Value::as_str).unwrap_or("")
                    ));
                }
                _ => {}
            }
        }
        Ok(Connected::Dropped("the server ended the stream".into()))
    }

    /// Shows one event (once: a re-sent or replayed seq already shown is skipped) and says whether
    /// tailing ends with it.
    fn on_event(&mut self, envelope: &Value) -> Option<TailEnd> {
        let seq = envelope.get("seq").and_then(Value::as_u64).unwrap_or(0);
        if self.last_seq.is_some_and(|last| seq <= last) {
            return None;
        }
        self.last_seq = Some(seq);
        let kind = envelope.get("type").and_then(Value::as_str).unwrap_or("");
        let data = envelope.get("data").cloned().unwrap_or(Value::Null);
        let status = data.get("status").and_then(Value::as_str).unwrap_or("");
        match kind {
            "session.status" => self.screen.set(status == "provisioning"),
            "sandbox.status" => self.screen.set(matches!(status, "provisioning" | "lost")),
            "run.started" | "message.delta" | "thought.delta" | "tool_call"
            | "execution_complete" => self.screen.set(false),
            _ => {}
        }
        self.screen.println_out(&render::event_line(envelope));
        match (kind, status) {
            ("session.status", "closed") => return Some(TailEnd::Closed),
            ("session.status", "failed") => return Some(TailEnd::Failed),
            _ => {}
        }
        if let Until::RunFinished(run) = &self.until {
            if kind == "execution_complete"
                && envelope.get("run_id").and_then(Value::as_str) == Some(run.as_str())
            {
                return Some(TailEnd::RunFinished {
                    status: status.to_string(),
                });
            }
        }
        None
    }
}

/// A failed WebSocket handshake as the user sees it: the API's error body when it sent one.
fn handshake_error(base: &str, e: WsError) -> CliError {
    match e {
        WsError::Http(response) => CliError::from_answer(
            response.status().as_u16(),
            response.body().as_deref().unwrap_or_default(),
        ),
        other => CliError::new(
            "unavailable",
            format!("cannot open the session stream at {base}: {other}"),
        ),
    }
}

/// What the user sees: event lines on stdout, notes and the provisioning spinner on stderr. The
/// spinner is drawn only when stderr is a terminal, and erased before any line is printed so that
/// output never interleaves with it.
#[derive(Clone)]
struct Screen {
    shared: Arc<Mutex<ScreenState>>,
}

struct ScreenState {
    tty: bool,
    /// Tests read the event lines here instead of stdout.
    captured: Option<Vec<String>>,
    active: bool,
    drawn: bool,
    frame: usize,
    stopped: bool,
}

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

impl Screen {
    fn start(tty: bool) -> Self {
        let screen = Screen {
            shared: Arc::new(Mutex::new(ScreenState {
                tty,
                captured: None,
                active: false,
                drawn: false,
                frame: 0,
                stopped: false,
            })),
        };
        if tty {
            let ticking = screen.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(100));
                loop {
                    every.tick().await;
                    if !ticking.tick() {
                        break;
                    }
                }
            });
        }
        screen
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ScreenState> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Draws the next spinner frame when active; false once stopped.
    fn tick(&self) -> bool {
        let mut st = self.state();
        if st.stopped {
            return false;
        }
        if st.active {
            st.frame = (st.frame + 1) % FRAMES.len();
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r\x1b[2K{} provisioning the sandbox…",
                FRAMES[st.frame]
            );
            let _ = err.flush();
            st.drawn = true;
        }
        true
    }

    fn erase(st: &mut ScreenState) {
        if st.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            st.drawn = false;
        }
    }

    fn set(&self, active: bool) {
        let mut st = self.state();
        if st.tty && !active {
            Self::erase(&mut st);
        }
        st.active = active;
    }

    fn println_out(&self, line: &str) {
        let mut st = self.state();
        if let Some(captured) = st.captured.as_mut() {
            captured.push(line.to_string());
            return;
        }
        Self::erase(&mut st);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn println_err(&self, line: &str) {
        let mut st = self.state();
        if st.captured.is_some() {
            return;
        }
        Self::erase(&mut st);
        eprintln!("{line}");
    }

    fn stop(&self) {
        let mut st = self.state();
        Self::erase(&mut st);
        st.active = false;
        st.stopped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(until: Until) -> TailState {
        let screen = Screen::start(false);
        screen.state().captured = Some(Vec::new());
        TailState {
            last_seq: None,
            until,
            screen,
            greeted: false,
        }
    }

    fn printed(t: &TailState) -> Vec<String> {
        t.screen.state().captured.clone().unwrap_or_default()
    }

    fn ev(seq: u64, kind: &str, run: Option<&str>, data: Value) -> Value {
        json!({"seq": seq, "type": kind, "run_id": run, "at": "t", "critical": false, "data": data})
    }

    #[test]
    fn a_closed_session_ends_the_tail_and_repeats_are_skipped() {
        let mut t = state(Until::Closed);
        assert_eq!(
            t.on_event(&ev(
                1,
                "session.status",
                None,
                json!({"status": "provisioning"})
            )),
            None
        );
        assert_eq!(
            t.on_event(&ev(
                2,
                "run.queued",
                Some("r"),
                json!({"position": 0, "text": "hi"})
            )),
            None
        );
        // A replayed or re-sent event at or below the last seq shown is not shown again, and
        // cannot end the tail a second time.
        assert_eq!(
            t.on_event(&ev(2, "session.status", None, json!({"status": "closed"}))),
            None
        );
        assert_eq!(t.last_seq, Some(2));
        assert_eq!(
            t.on_event(&ev(3, "session.status", None, json!({"status": "closed"}))),
            Some(TailEnd::Closed)
        );
        assert_eq!(
            printed(&t),
            vec![
                "#1    session.status       - provisioning",
                "#2    run.queued           r position 0: hi",
                "#3    session.status       - closed"
            ]
        );
    }

    #[test]
    fn waiting_for_a_run_ends_on_its_completion_only() {
        let mut t = state(Until::RunFinished("run_b".into()));
        assert_eq!(
            t.on_event(&ev(
                1,
                "execution_complete",
                Some("run_a"),
                json!({"status": "completed"})
            )),
            None
        );
        assert_eq!(
            t.on_event(&ev(
                2,
                "execution_complete",
                Some("run_b"),
                json!({"status": "timed_out"})
            )),
            Some(TailEnd::RunFinished {
                status: "timed_out".into()
            })
        );
        let mut t = state(Until::RunFinished("run_b".into()));
        assert_eq!(
            t.on_event(&ev(1, "session.status", None, json!({"status": "failed"}))),
            Some(TailEnd::Failed)
        );
    }

    #[test]
    fn the_screen_follows_provisioning() {
        let mut t = state(Until::Closed);
        t.on_event(&ev(
            1,
            "session.status",
            None,
            json!({"status": "provisioning"}),
        ));
        assert!(t.screen.state().active);
        t.on_event(&ev(
            2,
            "sandbox.status",
            None,
            json!({"status": "connected"}),
        ));
        assert!(!t.screen.state().active);
        t.on_event(&ev(3, "sandbox.status", None, json!({"status": "lost"})));
        assert!(t.screen.state().active);
        t.on_event(&ev(4, "run.started", Some("r"), json!({})));
        assert!(!t.screen.state().active);
    }
}
