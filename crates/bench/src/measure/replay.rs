//! Replay (figure 4): a client reconnecting with `after = 0` to a session of 10,000 (and, in `--full`,
//! 100,000) events; the time from dialing to the last event's arrival. The log is filled through
//! the real path (a sandbox streaming events, each acknowledged once durable). Baseline: the bare
//! relay streaming the same number of same-sized event frames from memory.

use super::{live_session, ms, progress, receipt_client, receipt_of, Ctx};
use crate::children::{Relay, SbServer};
use crate::report::{Row, Section};
use crate::wire::{self, Sandbox};
use std::time::Instant;

/// Messages a filling sandbox may have unacknowledged.
const FILL_WINDOW: u64 = 256;

/// Streams `events` events through `sandbox`, each acknowledged (durable) before the next window.
pub async fn fill(sandbox: &mut Sandbox, run_id: &str, events: u64) -> Result<(), String> {
    for _ in 0..events {
        let sent = sandbox.sent();
        if sent >= FILL_WINDOW && sandbox.acked_now() <= sent - FILL_WINDOW {
            sandbox.acked(sent - FILL_WINDOW + 1).await?;
        }
        sandbox.send_event(run_id).await?;
    }
    let last = sandbox.sent();
    sandbox.acked(last).await
}

/// Dials `url` and waits for marker `last`; milliseconds from the dial to its arrival.
async fn time_to_last(url: &str, bearer: Option<&str>, last: u64) -> Result<f64, String> {
    let began = Instant::now();
    let ws = wire::dial(url, bearer).await?;
    let (client, mut receipts) = receipt_client(ws);
    let at = receipt_of(&mut receipts, last, crate::WAIT).await?;
    client.close().await;
    Ok(ms(at - began))
}

async fn switchboard(server: &SbServer, events: u64, repeats: usize) -> Result<Vec<f64>, String> {
    let mut live = live_session(server).await?;
    fill(&mut live.sandbox, &live.run_id, events).await?;
    let url = server.ws(&format!("/v1/sessions/{}/ws?after=0", live.id));
    let mut times = Vec::new();
    for _ in 0..repeats {
        times.push(time_to_last(&url, Some(&server.api_key), events).await?);
    }
    live.sandbox.close().await;
    Ok(times)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

pub async fn measure(ctx: &Ctx) -> Result<Section, String> {
    let server = ctx.server("replay", &Default::default()).await?;
    let relay = Relay::start(&ctx.exe).await?;
    let repeats = ctx.sizes.replay_repeats.max(1);
    let mut rows = Vec::new();
    for &events in &ctx.sizes.replay_events {
        progress(format!("  {events} events"));
        let sb = median(switchboard(&server, events as u64, repeats).await?);
        let mut base = Vec::new();
        for _ in 0..repeats {
            base.push(
                time_to_last(&relay.ws(&format!("/replay/{events}")), None, events as u64).await?,
            );
        }
        let base = median(base);
        rows.push(Row::new(
            format!(
                "replay {} events (after = 0), time to last event",
                group(events)
            ),
            "ms",
            sb,
            "bare relay streaming them from memory",
            Some(base),
        ));
        rows.push(Row::new(
            format!("replay {} events, rate", group(events)),
            "events/s",
            events as f64 / (sb / 1000.0),
            "bare relay rate",
            Some(events as f64 / (base / 1000.0)),
        ));
    }
    relay.stop().await;
    server.stop().await;
    Ok(Section {
        id: "replay".into(),
        title: "Replay (reconnect with after = 0)".into(),
        rows,
        notes: vec![format!(
            "median of {repeats} replays; the clock runs from the dial (handshake included) to the last event's arrival"
        )],
    })
}

/// `100000` → `100,000`.
pub fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
