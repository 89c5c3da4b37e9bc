//! Concurrency (figure 3): the server's memory per connected idle session (a client socket and a sandbox
//! socket each), per hibernated session, and the time to rehydrate one.
//!
//! Memory is the server child's RSS (`/proc/<pid>/status`) after its start and after the sessions
//! are connected and settled (the store's idle database connections closed), divided by their
//! number; the baseline is the bare relay's RSS per room holding the same two
//! sockets. One process may hold only as many sockets as its open-file limit allows (two per
//! session here, plus the stores' files), so the session count is capped by that limit and the
//! figure at 10,000 sessions is projected from the measured per-session cost.
//!
//! Hibernation: a second server with a 1 s hibernation and sandbox idle timeout; its sessions get a
//! sandbox, which idles out, then they leave memory. Rehydration is `GET /v1/sessions/{id}` on a
//! hibernated session (the host rebuilds it from its SQLite file); the baseline is the same call
//! on the session once it is live.

use super::{ms, progress, Ctx};
use crate::children::{Relay, ServerOptions};
use crate::report::{percentile, Row, Section};
use crate::wire::{self, Client, Sandbox};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::time::{Duration, Instant};

/// Descriptors kept back from the open-file limit for everything but the sessions' sockets: the
/// session store's pool cache (up to 1,024 databases at three descriptors while sessions are being
/// created) and the rest.
const FD_RESERVE: u64 = 4096;

const MIB: f64 = 1024.0 * 1024.0;

/// Polls `probe` every 50 ms until it answers, for at most `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut probe: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        if probe().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {within:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bytes of every file under `dir`.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => disk_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

pub async fn measure(ctx: &Ctx) -> Result<Section, String> {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let cap = (ctx.fd_limit.saturating_sub(FD_RESERVE) / 2) as usize;
    let sessions = ctx.sizes.idle_sessions.min(cap).max(1);
    if sessions < ctx.sizes.idle_sessions {
        notes.push(format!(
            "{sessions} sessions held, not {}: the open-file limit here is {} per process and the server needs two sockets per session",
            ctx.sizes.idle_sessions, ctx.fd_limit
        ));
    }

    // Idle connected sessions.
    progress(format!("  {sessions} idle connected sessions"));
    let server = ctx.server("concurrency", &ServerOptions::default()).await?;
    let before = server.rss().ok_or("cannot read the server's RSS")?;
    let server_ref = &server;
    let held: Vec<(Sandbox, Client)> = stream::iter(0..sessions)
        .map(|_| async move {
            let id = server_ref.create_session().await?;
            let spawn = server_ref.spawn_of(&id).await?;
            let sandbox =
                Sandbox::dial_back(&spawn.callback_url, &spawn.token, &spawn.sandbox_id).await?;
            let ws = wire::dial(
                &server_ref.ws(&format!("/v1/sessions/{id}/ws")),
                Some(&server_ref.api_key),
            )
            .await?;
            let mut client = Client::start(ws, |_, _| {});
            client.ready().await?;
            Ok::<_, String>((sandbox, client))
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    // Steady state: the session databases' idle connections have closed (only sockets remain).
    let pid = server.pid;
    eventually(
        "the server's idle database connections to close",
        Duration::from_secs(60),
        || async move { Ok(crate::sys::open_fds(pid).is_some_and(|n| n <= 2 * sessions + 256)) },
    )
    .await?;
    let after = server.rss().ok_or("cannot read the server's RSS")?;
    let dropped = held.iter().filter(|(_, c)| c.ended()).count();
    if dropped > 0 {
        return Err(format!(
            "{dropped} of {sessions} idle clients were dropped by the server"
        ));
    }
    for (sandbox, client) in held {
        sandbox.close().await;
        client.close().await;
    }
    server.stop().await;
    let per_session = after.saturating_sub(before) as f64 / sessions as f64;

    // The same sockets on the bare relay.
    let relay = Relay::start(&ctx.exe).await?;
    let relay_pid = relay_pid(&relay)?;
    let relay_before = crate::sys::rss_bytes(relay_pid).ok_or("cannot read the relay's RSS")?;
    let relay_ref = &relay;
    let relay_held: Vec<(Sandbox, Client)> = stream::iter(0..sessions)
        .map(|i| async move {
            let mut client = Client::start(
                wire::dial(&relay_ref.ws(&format!("/client/idle-{i}")), None).await?,
                |_, _| {},
            );
            client.ready().await?;
            let sandbox = Sandbox::start(
                wire::dial(&relay_ref.ws(&format!("/sandbox/idle-{i}")), None).await?,
            );
            Ok::<_, String>((sandbox, client))
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    let relay_after = crate::sys::rss_bytes(relay_pid).ok_or("cannot read the relay's RSS")?;
    for (sandbox, client) in relay_held {
        sandbox.close().await;
        client.close().await;
    }
    relay.stop().await;
    let relay_per_session = relay_after.saturating_sub(relay_before) as f64 / sessions as f64;

    rows.push(Row::alone(
        "idle connected sessions held at once",
        "sessions",
        sessions as f64,
    ));
    rows.push(Row::new(
        "server RSS per idle connected session",
        "KiB",
        per_session / 1024.0,
        "bare relay RSS per room (same 2 sockets)",
        Some(relay_per_session / 1024.0),
    ));
    rows.push(Row::new(
        "projected server RSS at 10,000 connected sessions",
        "MiB",
        (before as f64 + per_session * 10_000.0) / MIB,
        "bare relay, projected the same way",
        Some((relay_before as f64 + relay_per_session * 10_000.0) / MIB),
    ));
    rows.push(Row::alone(
        format!("server RSS with {sessions} connected sessions"),
        "MiB",
        after as f64 / MIB,
    ));

    // Hibernated sessions and rehydration.
    let hibernated = ctx
        .sizes
        .hibernated_sessions
        .max(ctx.sizes.rehydrate_samples);
    progress(format!("  {hibernated} hibernated sessions"));
    let options = ServerOptions {
        hibernate_after_s: 1,
        sandbox_idle_timeout_s: 1,
        ..ServerOptions::default()
    };
    let server = ctx.server("hibernation", &options).await?;
    let before = server.rss().ok_or("cannot read the server's RSS")?;
    let server_ref = &server;
    let ids: Vec<String> = stream::iter(0..hibernated)
        .map(|_| async move {
            let id = server_ref.create_session().await?;
            let spawn = server_ref.spawn_of(&id).await?;
            let sandbox =
                Sandbox::dial_back(&spawn.callback_url, &spawn.token, &spawn.sandbox_id).await?;
            Ok::<_, String>((id, sandbox))
        })
        .buffer_unordered(32)
        .map_ok(|(id, sandbox)| {
            // The sandbox idles out and the server closes its socket; the reader ends with it.
            drop(sandbox);
            id
        })
        .try_collect()
        .await?;
    let within = Duration::from_secs(60 + hibernated as u64 / 10);
    eventually("every session to hibernate", within, || async {
        Ok(server.metric("switchboard_sessions_live").await? == 0.0)
    })
    .await?;
    let after = server.rss().ok_or("cannot read the server's RSS")?;
    let disk = disk_bytes(&server.data_dir.join("sessions")) as f64 / hibernated as f64;
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for id in ids.iter().take(ctx.sizes.rehydrate_samples) {
        for samples in [&mut cold, &mut warm] {
            let began = Instant::now();
            server.last_seq(id).await?;
            samples.push(ms(began.elapsed()));
        }
    }
    server.stop().await;
    cold.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    warm.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    rows.push(Row::alone(
        "server RSS per hibernated session",
        "KiB",
        after.saturating_sub(before) as f64 / hibernated as f64 / 1024.0,
    ));
    rows.push(Row::alone(
        "disk per hibernated session (SQLite file and WAL)",
        "KiB",
        disk / 1024.0,
    ));
    rows.push(Row::new(
        "rehydrate one session (GET on a hibernated session) p50",
        "ms",
        percentile(&cold, 50.0),
        "same GET on the live session p50",
        Some(percentile(&warm, 50.0)),
    ));
    rows.push(Row::new(
        "rehydrate one session p99",
        "ms",
        percentile(&cold, 99.0),
        "same GET on the live session p99",
        Some(percentile(&warm, 99.0)),
    ));
    notes.push(format!(
        "hibernated: {hibernated} sessions whose sandbox idled out, after 1 s without clients; the RSS per hibernated session is what stays resident after they left memory (allocator retention included), an upper bound"
    ));
    Ok(Section {
        id: "concurrency".into(),
        title: "Concurrency (memory per session, hibernation, rehydration)".into(),
        rows,
        notes,
    })
}

fn relay_pid(relay: &Relay) -> Result<u32, String> {
    relay
        .pid()
        .ok_or_else(|| "the relay has no pid".to_string())
}
