//! Relay latency (the figure 1): one sandbox message → its receipt by every client of the session, persisted
//! first, at 1 and 10 clients per session; p50/p99/p99.9 over every (message, client) receipt.
//! Messages go one at a time (the next once every client has the last), so the figure is latency,
//! not queueing. Baseline: the bare relay with the same peers. A second baseline, the durable
//! relay (the bare relay committing each frame to SQLite with an fsync before forwarding it),
//! shows how much of the difference is the durable commit alone.

use super::{live_session, ms, progress, receipt_client, receipt_of, Ctx, Receipts};
use crate::children::Relay;
use crate::report::{percentile, Row, Section};
use crate::wire::{self, Client, Sandbox};
use std::time::{Duration, Instant};

/// One configuration's sender and its clients' receipts.
struct Setup {
    sandbox: Sandbox,
    run_id: String,
    clients: Vec<(Client, Receipts)>,
}

/// Sends `warmup` untimed then `messages` timed events; latencies in milliseconds, sorted.
async fn time_messages(
    setup: &mut Setup,
    warmup: usize,
    messages: usize,
) -> Result<Vec<f64>, String> {
    let mut samples = Vec::with_capacity(messages * setup.clients.len());
    for i in 0..warmup + messages {
        let sent_at = Instant::now();
        let n = setup.sandbox.send_event(&setup.run_id).await?;
        // A client still attaching may miss a warm-up message; timed ones must all arrive.
        let within = if i < warmup {
            Duration::from_secs(2)
        } else {
            crate::WAIT
        };
        for (_, receipts) in setup.clients.iter_mut() {
            match receipt_of(receipts, n, within).await {
                Ok(at) if i >= warmup => samples.push(ms(at - sent_at)),
                Ok(_) => {}
                Err(e) if i >= warmup => return Err(e),
                Err(_) => {}
            }
        }
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(samples)
}

async fn switchboard(
    ctx: &Ctx,
    server: &crate::children::SbServer,
    clients: usize,
) -> Result<Vec<f64>, String> {
    let live = live_session(server).await?;
    let mut setup = Setup {
        sandbox: live.sandbox,
        run_id: live.run_id,
        clients: Vec::new(),
    };
    for _ in 0..clients {
        let ws = wire::dial(
            &server.ws(&format!("/v1/sessions/{}/ws", live.id)),
            Some(&server.api_key),
        )
        .await?;
        let (mut client, receipts) = receipt_client(ws);
        client.ready().await?;
        setup.clients.push((client, receipts));
    }
    let samples = time_messages(
        &mut setup,
        ctx.sizes.latency_warmup,
        ctx.sizes.latency_messages,
    )
    .await?;
    for (client, _) in setup.clients {
        client.close().await;
    }
    setup.sandbox.close().await;
    Ok(samples)
}

/// The relay, bare (`durable = false`) or committing each frame first.
async fn bare(ctx: &Ctx, relay: &Relay, clients: usize, durable: bool) -> Result<Vec<f64>, String> {
    let room = format!("latency-{clients}-{durable}");
    let kind = if durable { "durable" } else { "sandbox" };
    let mut setup = Setup {
        sandbox: Sandbox::start(wire::dial(&relay.ws(&format!("/{kind}/{room}")), None).await?),
        run_id: "run".into(),
        clients: Vec::new(),
    };
    for _ in 0..clients {
        let ws = wire::dial(&relay.ws(&format!("/client/{room}")), None).await?;
        let (mut client, receipts) = receipt_client(ws);
        client.ready().await?;
        setup.clients.push((client, receipts));
    }
    let samples = time_messages(
        &mut setup,
        ctx.sizes.latency_warmup,
        ctx.sizes.latency_messages,
    )
    .await?;
    for (client, _) in setup.clients {
        client.close().await;
    }
    setup.sandbox.close().await;
    Ok(samples)
}

/// The second baseline's name.
pub const DURABLE_RELAY: &str = "bare relay committing each frame to SQLite (fsync) first";

pub async fn measure(ctx: &Ctx) -> Result<Section, String> {
    let server = ctx.server("latency", &Default::default()).await?;
    let relay = Relay::start(&ctx.exe).await?;
    let mut rows = Vec::new();
    for &clients in &ctx.sizes.latency_clients {
        progress(format!("  {clients} client(s) per session"));
        let sb = switchboard(ctx, &server, clients).await?;
        let base = bare(ctx, &relay, clients, false).await?;
        let durable = bare(ctx, &relay, clients, true).await?;
        for (label, p) in [("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9)] {
            rows.push(Row::new(
                format!("Switchboard {label} at {clients} client(s)"),
                "ms",
                percentile(&sb, p),
                &format!("bare relay {label}"),
                Some(percentile(&base, p)),
            ));
        }
        for (label, p) in [("p50", 50.0), ("p99", 99.0)] {
            rows.push(Row::new(
                format!("Switchboard {label} at {clients} client(s), against the durable floor"),
                "ms",
                percentile(&sb, p),
                &format!("{DURABLE_RELAY} {label}"),
                Some(percentile(&durable, p)),
            ));
        }
    }
    relay.stop().await;
    server.stop().await;
    Ok(Section {
        id: "relay_latency".into(),
        title: "Relay latency (sandbox message → every client's receipt)".into(),
        rows,
        notes: vec![format!(
            "{} timed messages per configuration after {} untimed, one at a time; a sample is one client's receipt of one message; the Switchboard figure includes the event's durable commit",
            ctx.sizes.latency_messages, ctx.sizes.latency_warmup
        )],
    })
}
