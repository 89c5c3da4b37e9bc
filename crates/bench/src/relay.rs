//! The baseline: a bare loopback WebSocket relay (tokio-tungstenite, no persistence, no parsing,
//! the same 8 KiB read buffers as the server).
//! A sandbox dials `/sandbox/{room}`, clients dial `/client/{room}`, and every text frame the
//! sandbox sends is forwarded as is to every client of the room (a client is first sent
//! `{"type":"hello"}` once it is registered, as Switchboard sends its own hello). `/replay/{n}` streams `n` event
//! envelopes held in memory, the baseline of a replay. A sandbox that dials `/durable/{room}`
//! instead has each frame committed, as one row, to a SQLite file of its own (WAL,
//! `synchronous = FULL`, as Switchboard's session stores) before it is forwarded: the floor any
//! relay pays that persists each event before showing it. Run as `switchboard-bench relay`.

use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Message>)>>>>;

/// The `i`th replayed event envelope (the same shape and size as Switchboard's).
pub fn replay_frame(i: u64) -> String {
    serde_json::json!({
        "seq": i, "type": "message.delta", "run_id": "019a0000-0000-7000-8000-000000000000",
        "at": "2026-11-24T00:00:00.000Z", "critical": false,
        "data": {"text": crate::wire::delta_text(i)},
    })
    .to_string()
}

/// Serves the relay on `listener` until the process ends.
pub async fn serve(listener: TcpListener) {
    let rooms: Rooms = Arc::default();
    let mut next_id = 0u64;
    while let Ok((stream, _)) = listener.accept().await {
        next_id += 1;
        tokio::spawn(connection(stream, rooms.clone(), next_id));
    }
}

async fn connection(stream: TcpStream, rooms: Rooms, id: u64) {
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    // The handshake API's own callback type: its error is tungstenite's HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_string();
        Ok(response)
    };
    let accept = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(crate::wire::config()),
    );
    let Ok(ws) = accept.await else {
        return;
    };
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, room) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut sink, mut stream) = ws.split();
    match kind {
        "client" => {
            let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
            rooms
                .lock()
                .unwrap()
                .entry(room.clone())
                .or_default()
                .push((id, tx));
            // Registered: from now on the client gets every frame of the room.
            if sink
                .send(Message::text(r#"{"type":"hello"}"#))
                .await
                .is_err()
            {
                return;
            }
            let writer = async {
                while let Some(message) = rx.recv().await {
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
            };
            let reader = async { while let Some(Ok(_)) = stream.next().await {} };
            tokio::select! {
                () = writer => {}
                () = reader => {}
            }
            if let Some(clients) = rooms.lock().unwrap().get_mut(&room) {
                clients.retain(|(c, _)| *c != id);
            }
        }
        "sandbox" | "durable" => {
            let mut log = match kind {
                "durable" => match durable_log(id).await {
                    Ok(conn) => Some(conn),
                    Err(e) => {
                        eprintln!("relay: {e}");
                        return;
                    }
                },
                _ => None,
            };
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = &message {
                    if let Some(conn) = log.as_mut() {
                        let committed = sqlx::query("INSERT INTO events (json) VALUES (?)")
                            .bind(text.as_str())
                            .execute(&mut *conn)
                            .await;
                        if let Err(e) = committed {
                            eprintln!("relay: commit: {e}");
                            return;
                        }
                    }
                    if let Some(clients) = rooms.lock().unwrap().get(&room) {
                        for (_, tx) in clients {
                            let _ = tx.send(message.clone());
                        }
                    }
                }
            }
        }
        "replay" => {
            let n: u64 = room.parse().unwrap_or(0);
            for i in 1..=n {
                if sink.feed(Message::text(replay_frame(i))).await.is_err() {
                    return;
                }
            }
            let _ = sink.flush().await;
            while let Some(Ok(_)) = stream.next().await {}
        }
        _ => {
            let _ = sink.close().await;
        }
    }
}

/// Where relay process `pid` keeps its durable logs (removed by [`crate::children::Relay::stop`]).
pub fn durable_dir(pid: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("switchboard-bench-relay-{pid}"))
}

/// A fresh SQLite log for durable connection `id`, set up as a session store's (WAL, FULL).
async fn durable_log(id: u64) -> Result<sqlx::SqliteConnection, String> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    use sqlx::ConnectOptions;
    let dir = durable_dir(std::process::id());
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut conn = SqliteConnectOptions::new()
        .filename(dir.join(format!("durable-{id}.db")))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    sqlx::raw_sql("CREATE TABLE events (seq INTEGER PRIMARY KEY, json TEXT NOT NULL)")
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(conn)
}
