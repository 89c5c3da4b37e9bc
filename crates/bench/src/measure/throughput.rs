//! Durable throughput (figure 2): events per second relayed and persisted across 1, 100 and 1,000
//! concurrent sessions with one client each. Every sandbox streams its events as fast as its
//! client takes them (at most `window` sent and not yet received); the clock runs from the first
//! event to the last client's last receipt. Baselines: the bare relay with the same peers, and raw
//! SQLite inserts into one WAL database per session (`synchronous = FULL`), one transaction per
//! event (what committing every sandbox message on its own costs) and transactions of as many
//! events as a sandbox may have in flight (the most the server's coalescing can put in a commit
//! here).

use super::{live_session, progress, Ctx};
use crate::children::{Relay, SbServer};
use crate::report::{Row, Section};
use crate::wire::{self, Client, Sandbox};
use futures::stream::{self, StreamExt, TryStreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, watch, Semaphore};

/// What bounds the durable throughput (stated with the goal).
pub const BOUND: &str = "at 100 sessions, CPU: two cores shared by the server, the scripted peers and SQLite. In the server about a third is SQLite's worker threads (fsync, pwrite, the hand-offs of a handful of statements per commit), a fifth the session tasks (the machine itself about 4%, its snapshot under 1%: one per batch of queued frames since decision 0003's follow-up), a seventh the WebSocket pumps, and malloc/free about a fifth of everything. At 1 session: one fsync per batch times the 192-event window. At 1,000 sessions of 20 events each, the fixed cost of each commit";

/// One stream: a sandbox sending events of `run_id` and the client counting them.
struct Stream {
    sandbox: Sandbox,
    run_id: String,
    client: Client,
    window: Arc<Semaphore>,
    done: oneshot::Receiver<Instant>,
}

fn counting_client(
    ws: wire::Ws,
    events: u64,
    window: Arc<Semaphore>,
) -> (Client, oneshot::Receiver<Instant>) {
    let (done_tx, done) = oneshot::channel();
    let mut done_tx = Some(done_tx);
    let mut count = 0u64;
    let client = Client::start(ws, move |_, at| {
        count += 1;
        window.add_permits(1);
        if count == events {
            if let Some(tx) = done_tx.take() {
                let _ = tx.send(at);
            }
        }
    });
    (client, done)
}

/// Runs every stream at once; events per second over all of them.
async fn run_streams(streams: Vec<Stream>, events: u64) -> Result<f64, String> {
    let (go_tx, go) = watch::channel(false);
    let mut senders = Vec::new();
    let mut dones = Vec::new();
    let mut clients = Vec::new();
    let total = streams.len() as u64 * events;
    for s in streams {
        let mut go = go.clone();
        let (mut sandbox, run_id, window) = (s.sandbox, s.run_id, s.window);
        dones.push(s.done);
        clients.push(s.client);
        senders.push(tokio::spawn(async move {
            let _ = go.wait_for(|g| *g).await;
            for _ in 0..events {
                let permit = window.acquire().await.map_err(|e| e.to_string())?;
                permit.forget();
                sandbox.send_event(&run_id).await?;
            }
            Ok::<Sandbox, String>(sandbox)
        }));
    }
    let began = Instant::now();
    let _ = go_tx.send(true);
    let mut last = began;
    for done in dones {
        let at = tokio::time::timeout(crate::WAIT, done)
            .await
            .map_err(|_| {
                format!(
                    "a client did not receive all its events within {:?}",
                    crate::WAIT
                )
            })?
            .map_err(|_| "a client socket ended before all its events".to_string())?;
        last = last.max(at);
    }
    for sender in senders {
        let sandbox = sender.await.map_err(|e| e.to_string())??;
        sandbox.close().await;
    }
    for client in clients {
        client.close().await;
    }
    Ok(total as f64 / (last - began).as_secs_f64())
}

async fn switchboard(
    ctx: &Ctx,
    server: &SbServer,
    sessions: usize,
    events: u64,
) -> Result<f64, String> {
    let window = ctx.sizes.window;
    let streams: Vec<Stream> = stream::iter(0..sessions)
        .map(|_| async move {
            let live = live_session(server).await?;
            let permits = Arc::new(Semaphore::new(window));
            let ws = wire::dial(
                &server.ws(&format!("/v1/sessions/{}/ws", live.id)),
                Some(&server.api_key),
            )
            .await?;
            let (mut client, done) = counting_client(ws, events, permits.clone());
            client.ready().await?;
            Ok::<Stream, String>(Stream {
                sandbox: live.sandbox,
                run_id: live.run_id,
                client,
                window: permits,
                done,
            })
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    run_streams(streams, events).await
}

async fn bare(ctx: &Ctx, relay: &Relay, sessions: usize, events: u64) -> Result<f64, String> {
    let window = ctx.sizes.window;
    let streams: Vec<Stream> = stream::iter(0..sessions)
        .map(|i| async move {
            let room = format!("throughput-{sessions}-{i}");
            let permits = Arc::new(Semaphore::new(window));
            let ws = wire::dial(&relay.ws(&format!("/client/{room}")), None).await?;
            let (mut client, done) = counting_client(ws, events, permits.clone());
            client.ready().await?;
            let sandbox =
                Sandbox::start(wire::dial(&relay.ws(&format!("/sandbox/{room}")), None).await?);
            Ok::<Stream, String>(Stream {
                sandbox,
                run_id: "run".into(),
                client,
                window: permits,
                done,
            })
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    run_streams(streams, events).await
}

/// Raw SQLite: `sessions` WAL databases written at once, `events` rows each, one transaction per
/// row, `synchronous = FULL`. Rows per second.
pub async fn raw_sqlite(
    dir: &std::path::Path,
    sessions: usize,
    events: u64,
    per_txn: u64,
) -> Result<f64, String> {
    let json = crate::relay::replay_frame(1);
    let mut conns = Vec::new();
    for i in 0..sessions {
        let mut conn = SqliteConnectOptions::new()
            .filename(dir.join(format!("raw-{sessions}x{events}x{per_txn}-{i}.db")))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, run_id TEXT, type TEXT NOT NULL, \
             at INTEGER NOT NULL, critical INTEGER NOT NULL, json TEXT NOT NULL)",
        )
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
        conns.push(conn);
    }
    let written = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let writers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (json, written) = (json.clone(), written.clone());
            tokio::spawn(async move {
                let mut seq = 0i64;
                while seq < events as i64 {
                    let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
                    for _ in 0..per_txn.min(events - seq as u64) {
                        seq += 1;
                        sqlx::query("INSERT INTO events (seq, run_id, type, at, critical, json) VALUES (?, ?, ?, ?, ?, ?)")
                            .bind(seq)
                            .bind("019a0000-0000-7000-8000-000000000000")
                            .bind("message.delta")
                            .bind(1_790_000_000_000i64)
                            .bind(false)
                            .bind(&json)
                            .execute(&mut *tx)
                            .await
                            .map_err(|e| e.to_string())?;
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    tx.commit().await.map_err(|e| e.to_string())?;
                }
                let _ = conn.close().await;
                Ok::<(), String>(())
            })
        })
        .collect();
    for w in writers {
        w.await.map_err(|e| e.to_string())??;
    }
    Ok(written.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64())
}

pub async fn measure(ctx: &Ctx) -> Result<Section, String> {
    let relay = Relay::start(&ctx.exe).await?;
    let raw_dir = ctx.dir("throughput-raw")?;
    let mut rows = Vec::new();
    for &(sessions, events) in &ctx.sizes.throughput {
        progress(format!("  {sessions} session(s) × {events} events"));
        // A fresh server per level: the previous level's sessions do not linger in its memory.
        let server = ctx
            .server(&format!("throughput-{sessions}"), &Default::default())
            .await?;
        let sb = switchboard(ctx, &server, sessions, events as u64).await?;
        server.stop().await;
        let base = bare(ctx, &relay, sessions, events as u64).await?;
        let raw = raw_sqlite(&raw_dir, sessions, events as u64, 1).await?;
        let window = ctx.sizes.window as u64;
        let raw_batched = raw_sqlite(&raw_dir, sessions, events as u64, window).await?;
        let name = format!("Switchboard at {sessions} session(s)");
        rows.push(Row::new(
            name.clone(),
            "events/s",
            sb,
            "bare relay",
            Some(base),
        ));
        rows.push(Row::new(
            format!("{name}, against raw inserts"),
            "events/s",
            sb,
            "raw SQLite, 1 event per txn",
            Some(raw),
        ));
        rows.push(Row::new(
            format!("{name}, against batched raw inserts"),
            "events/s",
            sb,
            &format!("raw SQLite, {window} events per txn"),
            Some(raw_batched),
        ));
    }
    relay.stop().await;
    Ok(Section {
        id: "durable_throughput".into(),
        title: "Durable throughput (events/s relayed and persisted, one client per session)".into(),
        rows,
        notes: vec![format!(
            "sizes (sessions × events each): {}; at most {} events in flight per session",
            ctx.sizes
                .throughput
                .iter()
                .map(|(s, e)| format!("{s} × {e}"))
                .collect::<Vec<_>>()
                .join(", "),
            ctx.sizes.window
        )],
    })
}
