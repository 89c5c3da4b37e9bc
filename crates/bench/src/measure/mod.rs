//! The six measurements of issue 6 and the run that strings them together into a [`Report`].
//! Each measurement starts what it needs (a server child, the relay child, scratch databases)
//! and stops it before the next one begins, so one figure's load never skews another's.

pub mod concurrency;
pub mod latency;
pub mod ledger;
pub mod replay;
pub mod start;
pub mod throughput;

use crate::children::{SbServer, ServerOptions};
use crate::report::{Goal, Report, Section};
use crate::wire::{Client, Sandbox};
use crate::{Mode, Sizes};
use std::path::PathBuf;
use std::time::Instant;
use tokio::sync::mpsc;

/// What every measurement gets.
pub struct Ctx {
    /// This binary (children are started from it).
    pub exe: PathBuf,
    pub mode: Mode,
    pub sizes: Sizes,
    /// Scratch space; every measurement takes a fresh directory under it.
    pub scratch: PathBuf,
    /// This process's open-file limit.
    pub fd_limit: u64,
    /// Only these sections (ids of [`crate::report::SECTIONS`]); empty means all.
    pub only: Vec<String>,
}

impl Ctx {
    /// A fresh directory `<scratch>/<name>`.
    pub fn dir(&self, name: &str) -> Result<PathBuf, String> {
        let dir = self.scratch.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// Starts a server child on a fresh data directory.
    pub async fn server(&self, name: &str, options: &ServerOptions) -> Result<SbServer, String> {
        SbServer::start(&self.exe, self.dir(name)?, options).await
    }
}

/// Prints a progress line to stderr (the table goes to stdout).
pub fn progress(what: impl AsRef<str>) {
    eprintln!("[bench] {}", what.as_ref());
}

/// A session with its sandbox connected and a run dispatched to it.
pub struct LiveSession {
    pub id: String,
    pub sandbox: Sandbox,
    pub run_id: String,
}

/// Creates a session, plays its sandbox (dial-back, hello) and starts a run with a prompt.
pub async fn live_session(server: &SbServer) -> Result<LiveSession, String> {
    let id = server.create_session().await?;
    let spawn = server.spawn_of(&id).await?;
    let mut sandbox =
        Sandbox::dial_back(&spawn.callback_url, &spawn.token, &spawn.sandbox_id).await?;
    server.prompt(&id, "bench").await?;
    let run_id = sandbox.next_run().await?;
    Ok(LiveSession {
        id,
        sandbox,
        run_id,
    })
}

/// Receipts of one client: `(marker, when)`.
pub type Receipts = mpsc::UnboundedReceiver<(u64, Instant)>;

/// Starts a client on `ws` whose receipts come out of the returned channel.
pub fn receipt_client(ws: crate::wire::Ws) -> (Client, Receipts) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = Client::start(ws, move |n, at| {
        let _ = tx.send((n, at));
    });
    (client, rx)
}

/// Waits until `receipts` yields marker `n` (skipping lower ones) and returns when it arrived.
pub async fn receipt_of(
    receipts: &mut Receipts,
    n: u64,
    within: std::time::Duration,
) -> Result<Instant, String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, receipts.recv()).await {
            Ok(Some((m, at))) if m == n => return Ok(at),
            Ok(Some((m, _))) if m > n => return Err(format!("marker {n} was skipped (got {m})")),
            Ok(Some(_)) => continue,
            Ok(None) => return Err(format!("the client socket ended before marker {n}")),
            Err(_) => return Err(format!("marker {n} not received within {within:?}")),
        }
    }
}

/// Milliseconds of a duration.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs every measurement and judges the goals.
pub async fn run_all(ctx: &Ctx, command: String) -> Result<Report, String> {
    let began = Instant::now();
    let machine = crate::sys::Machine::read();
    let mut sections: Vec<Section> = Vec::new();
    let wanted = |id: &str| ctx.only.is_empty() || ctx.only.iter().any(|o| o == id);
    for (i, id) in crate::report::SECTIONS.iter().enumerate() {
        if !wanted(id) {
            continue;
        }
        progress(format!("{}/6 {}", i + 1, id.replace('_', " ")));
        let section = match *id {
            "relay_latency" => latency::measure(ctx).await,
            "durable_throughput" => throughput::measure(ctx).await,
            "concurrency" => concurrency::measure(ctx).await,
            "replay" => replay::measure(ctx).await,
            "ledger_flush" => ledger::measure(ctx).await,
            _ => start::measure(ctx).await,
        };
        sections.push(section.map_err(|e| format!("{id}: {e}"))?);
    }
    let mut report = Report {
        mode: ctx.mode,
        command,
        date: crate::sys::today(),
        machine,
        seconds: began.elapsed().as_secs_f64(),
        sections,
        goals: Vec::new(),
    };
    report.goals = goals(&report);
    Ok(report)
}

fn row<'a>(report: &'a Report, section: &str, name_starts: &str) -> Option<&'a crate::report::Row> {
    report
        .section(section)?
        .rows
        .iter()
        .find(|r| r.name.starts_with(name_starts) && r.value.is_some())
}

/// What bounds the relay's p99, from the durable-floor rows: how far a relay that only commits each
/// frame (with its fsync) before forwarding it already is from the bare relay, and how far
/// Switchboard is from that floor.
fn relay_bound(report: &Report) -> String {
    let floors: Vec<String> = report
        .section("relay_latency")
        .map(|s| {
            s.rows
                .iter()
                .filter(|r| r.name.starts_with("Switchboard p99 ") && r.baseline_name.starts_with(latency::DURABLE_RELAY))
                .filter_map(|floor| {
                    let bare = s.rows.iter().find(|b| {
                        b.baseline_name == "bare relay p99"
                            && floor.name.starts_with(b.name.as_str())
                    })?;
                    Some(format!(
                        "{}: the floor's p99 {:.3} ms is {:.1}× the bare relay, Switchboard {:.2}× the floor",
                        bare.name.trim_start_matches("Switchboard p99 "),
                        floor.baseline?,
                        floor.baseline? / bare.baseline?,
                        floor.ratio?
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut bound = String::from(
        "the durable commit: each event is committed to its session's SQLite file with an fsync \
         (synchronous = FULL) before any client sees it, and the bare relay persists nothing. \
         The durable floor (the bare relay committing each frame the same way before forwarding it)",
    );
    if floors.is_empty() {
        bound.push_str(" was not measured");
    } else {
        bound.push_str(&format!(" — {}", floors.join("; ")));
    }
    bound
}

/// The goals, judged from the report's rows.
pub fn goals(report: &Report) -> Vec<Goal> {
    let mut goals = Vec::new();
    // p99 relay overhead at most 2× the bare relay.
    let p99: Vec<_> = report
        .section("relay_latency")
        .map(|s| {
            s.rows
                .iter()
                .filter(|r| {
                    r.name.contains("p99 ")
                        && r.baseline_name.starts_with("bare relay p")
                        && r.ratio.is_some()
                })
                .collect()
        })
        .unwrap_or_default();
    goals.push(Goal {
        goal: "p99 relay overhead at most 2× the bare relay".into(),
        met: (!p99.is_empty()).then(|| p99.iter().all(|r| r.ratio.unwrap_or(f64::INFINITY) <= 2.0)),
        figure: p99
            .iter()
            .map(|r| {
                format!(
                    "{}: {:.3} ms vs {:.3} ms = {:.2}×",
                    r.name,
                    r.value.unwrap_or(0.0),
                    r.baseline.unwrap_or(0.0),
                    r.ratio.unwrap_or(0.0)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        bound: relay_bound(report),
    });
    // 50,000 durable events/s per node.
    let best = report.section("durable_throughput").and_then(|s| {
        s.rows
            .iter()
            .filter(|r| r.baseline_name.starts_with("bare relay") && r.value.is_some())
            .max_by(|a, b| {
                a.value
                    .partial_cmp(&b.value)
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
    });
    goals.push(Goal {
        goal: "at least 50,000 durable events/s per node".into(),
        met: best.map(|r| r.value.unwrap_or(0.0) >= 50_000.0),
        figure: best
            .map(|r| {
                format!(
                    "best {:.0} events/s ({}; bare relay {:.0}/s)",
                    r.value.unwrap_or(0.0),
                    r.name,
                    r.baseline.unwrap_or(0.0)
                )
            })
            .unwrap_or_default(),
        bound: throughput::BOUND.into(),
    });
    // 10,000 connected sessions in under 2 GiB.
    let projected = row(report, "concurrency", "projected server RSS at 10,000");
    goals.push(Goal {
        goal: "10,000 connected sessions in under 2 GiB".into(),
        met: projected.map(|r| r.value.unwrap_or(f64::INFINITY) < 2048.0),
        figure: projected
            .map(|r| format!("{:.0} MiB ({})", r.value.unwrap_or(0.0), r.name))
            .unwrap_or_default(),
        bound: "per session: the session task and its runtime and two WebSocket pumps (about 90 KiB live); most of the rest is heap the allocator keeps after the short-lived SQLite connections of newly created sessions closed (calling malloc_trim on such a server released more than half of its RSS)".into(),
    });
    // Replay of 100,000 events in under 1 s.
    let replay_row = row(report, "replay", "replay 100,000").or_else(|| {
        report
            .section("replay")
            .and_then(|s| s.rows.iter().rfind(|r| r.unit == "ms" && r.value.is_some()))
    });
    goals.push(Goal {
        goal: "replay of 100,000 events in under 1 s".into(),
        met: replay_row.map(|r| {
            let events = r.name.split_whitespace().nth(1).and_then(|n| n.replace(',', "").parse::<f64>().ok()).unwrap_or(1.0);
            // Smaller replays are scaled linearly to 100,000 events.
            r.value.unwrap_or(f64::INFINITY) * (100_000.0 / events) < 1000.0
        }),
        figure: replay_row
            .map(|r| format!("{}: {:.0} ms (bare relay {:.0} ms){}", r.name, r.value.unwrap_or(0.0), r.baseline.unwrap_or(0.0),
                if r.name.contains("100,000") { "" } else { ", scaled linearly to 100,000" }))
            .unwrap_or_default(),
        bound: "reading the log page by page from SQLite and writing one WebSocket frame per event at the pace the client reads".into(),
    });
    // Ledger flush at least half the raw insert rate.
    let ledger_rows: Vec<_> = report
        .section("ledger_flush")
        .map(|s| {
            s.rows
                .iter()
                .filter(|r| r.ratio.is_some() && r.baseline_name.ends_with(ledger::SAME_TABLES))
                .collect()
        })
        .unwrap_or_default();
    goals.push(Goal {
        goal: "ledger flush at least half the raw insert rate".into(),
        met: (!ledger_rows.is_empty()).then(|| ledger_rows.iter().all(|r| r.ratio.unwrap_or(0.0) >= 0.5)),
        figure: ledger_rows
            .iter()
            .map(|r| format!("{}: {:.0}/s = {:.2}× raw", r.name, r.value.unwrap_or(0.0), r.ratio.unwrap_or(0.0)))
            .collect::<Vec<_>>()
            .join("; "),
        bound: "the adapter's own work over a raw write of the same rows into the same tables: encoding each event's JSON and the run row's ON CONFLICT check. Both sides pay the per-row foreign-key check of agent_run_events, which in Postgres halves a raw COPY (see the informational row; decision 0004)".into(),
    });
    // Control-plane share of session start under 5 ms p50.
    let share = row(report, "session_start", "control-plane share p50");
    goals.push(Goal {
        goal: "control-plane share of session start under 5 ms p50".into(),
        met: share.map(|r| r.value.unwrap_or(f64::INFINITY) < 5.0),
        figure: share
            .map(|r| format!("{:.2} ms", r.value.unwrap_or(0.0)))
            .unwrap_or_default(),
        bound: start::BOUND.into(),
    });
    goals
}
