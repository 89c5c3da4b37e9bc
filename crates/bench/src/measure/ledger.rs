//! Ledger flush (figure 5): runs of 10,000 events recorded through the real `RunLedger` adapters
//! (`SqliteRunLedger`, `PgRunLedger` when `DATABASE_URL` is set), events per second. Baseline: the
//! same rows, already encoded, written raw into the same tables (the run's row, then its events,
//! under the same keys and foreign key), in one transaction per run: a multi-row `INSERT` on
//! SQLite, a `COPY … FROM STDIN` on Postgres. A second, informational baseline writes the events
//! into a copy of the events table without the foreign key, to show what that check costs
//! (decision 0004).

use super::{progress, Ctx};
use crate::report::{Row, Section};
use sqlx::Connection;
use std::time::{Duration, Instant};
use switchboard_adapters::sql::run_ledger::copy_field;
use switchboard_adapters::sql::scratch::{postgres_gate, ScratchPostgres};
use switchboard_adapters::sql::{
    connect_sqlite, migrate_postgres, migrate_sqlite, PgRunLedger, SqliteRunLedger,
};
use switchboard_core::model::ModelRef;
use switchboard_core::protocol::{Event, EventEnvelope, TerminalStatus, Usage};
use switchboard_core::run::RunRecord;
use switchboard_core::time::Timestamp;
use switchboard_core::{OrgId, RunId, SessionId, UserId};
use switchboard_ports::RunLedger;

/// Rows per multi-row `INSERT` of the raw SQLite baseline (7 values a row, as the ledger binds).
const RAW_SQLITE_ROWS: usize = 500;

/// A finished run of `events` message deltas.
pub fn run_record(index: usize, events: usize) -> RunRecord {
    let run_id =
        RunId::parse(format!("019a0000-0000-7000-8000-{index:012}")).expect("a valid run id");
    let at = Timestamp::from_millis(1_790_000_000_000);
    RunRecord {
        run_id: run_id.clone(),
        session_id: SessionId::parse("bench-session").expect("a valid session id"),
        org_id: OrgId::parse("bench-org").expect("a valid org id"),
        user_id: UserId::parse("bench-user").expect("a valid user id"),
        api_key_id: None,
        model: ModelRef::parse(crate::MODEL).expect("a valid model"),
        provider: "openai".into(),
        status: TerminalStatus::Completed,
        queued_at: at,
        started_at: Some(at),
        ended_at: at,
        usage: Usage {
            input_tokens: 1_000,
            output_tokens: 2_000,
        },
        cost_micros: 1_500,
        error: None,
        event_count: events as u64,
        events: (1..=events as u64)
            .map(|seq| EventEnvelope {
                seq,
                run_id: Some(run_id.clone()),
                at,
                critical: false,
                event: Event::MessageDelta {
                    text: crate::wire::delta_text(seq),
                },
            })
            .collect(),
    }
}

/// A run's event rows as the raw baselines write them: `(seq, type, at, critical, json)`.
fn raw_rows(run: &RunRecord) -> Vec<(i64, String, i64, bool, String)> {
    run.events
        .iter()
        .map(|e| {
            (
                e.seq as i64,
                e.event.type_name().to_string(),
                e.at.as_millis() as i64,
                e.critical,
                serde_json::to_string(e).expect("an event encodes"),
            )
        })
        .collect()
}

/// Events per second of recording `runs` through `ledger`.
async fn through_ledger(ledger: &dyn RunLedger, runs: &[RunRecord]) -> Result<f64, String> {
    let mut spent = Duration::ZERO;
    let mut events = 0usize;
    for run in runs {
        let began = Instant::now();
        ledger.record(run).await.map_err(|e| e.to_string())?;
        spent += began.elapsed();
        events += run.events.len();
    }
    Ok(events as f64 / spent.as_secs_f64())
}

/// Where a raw baseline writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RawTarget {
    /// The ledger's own tables: the run's row into `agent_runs`, its events into
    /// `agent_run_events` (foreign key checked per row, as for the adapter).
    SameTables,
    /// Only the events, into `raw_events`: the events table's columns and key, no foreign key.
    EventsWithoutForeignKey,
}

/// The run's `agent_runs` row, written raw (same values the adapter writes). `$n` placeholders
/// on Postgres, `?` on SQLite.
fn raw_run_insert(postgres: bool) -> String {
    let marks: Vec<String> = (1..=16)
        .map(|i| match (postgres, i) {
            (true, 15) => "$15::json".into(),
            (true, _) => format!("${i}"),
            (false, _) => "?".into(),
        })
        .collect();
    format!(
        "INSERT INTO agent_runs (org_id, run_id, session_id, user_id, api_key_id, model, provider, status, \
         queued_at, started_at, ended_at, input_tokens, output_tokens, cost_micros, error, event_count) \
         VALUES ({})",
        marks.join(", ")
    )
}

/// Binds [`raw_run_insert`]'s values for `run`.
macro_rules! bind_run {
    ($query:expr, $run:expr) => {{
        let run: &RunRecord = $run;
        $query
            .bind(run.org_id.to_string())
            .bind(run.run_id.to_string())
            .bind(run.session_id.to_string())
            .bind(run.user_id.to_string())
            .bind(None::<String>)
            .bind(run.model.to_string())
            .bind(run.provider.clone())
            .bind("completed")
            .bind(run.queued_at.as_millis() as i64)
            .bind(run.started_at.map(|t| t.as_millis() as i64))
            .bind(run.ended_at.as_millis() as i64)
            .bind(run.usage.input_tokens as i64)
            .bind(run.usage.output_tokens as i64)
            .bind(run.cost_micros as i64)
            .bind(None::<String>)
            .bind(run.event_count as i64)
    }};
}

async fn raw_sqlite(
    pool: &sqlx::SqlitePool,
    runs: &[RunRecord],
    target: RawTarget,
) -> Result<f64, String> {
    if target == RawTarget::EventsWithoutForeignKey {
        sqlx::raw_sql(
            "CREATE TABLE raw_events (org_id TEXT NOT NULL, run_id TEXT NOT NULL, \
             seq INTEGER NOT NULL CHECK (seq >= 0), type TEXT NOT NULL, at INTEGER NOT NULL, \
             critical INTEGER NOT NULL CHECK (critical IN (0, 1)), json TEXT NOT NULL, \
             PRIMARY KEY (org_id, run_id, seq)) WITHOUT ROWID",
        )
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
    }
    let table = match target {
        RawTarget::SameTables => "agent_run_events",
        RawTarget::EventsWithoutForeignKey => "raw_events",
    };
    let mut spent = Duration::ZERO;
    let mut events = 0usize;
    for run in runs {
        let rows = raw_rows(run);
        let (org, run_id) = (run.org_id.to_string(), run.run_id.to_string());
        let began = Instant::now();
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| e.to_string())?;
        if target == RawTarget::SameTables {
            bind_run!(sqlx::query(sqlx::AssertSqlSafe(raw_run_insert(false))), run)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
        }
        for chunk in rows.chunks(RAW_SQLITE_ROWS) {
            let mut sql = format!(
                "INSERT INTO {table} (org_id, run_id, seq, type, at, critical, json) VALUES "
            );
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 {
                    "(?, ?, ?, ?, ?, ?, ?)"
                } else {
                    ", (?, ?, ?, ?, ?, ?, ?)"
                });
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (seq, kind, at, critical, json) in chunk {
                q = q
                    .bind(&org)
                    .bind(&run_id)
                    .bind(*seq)
                    .bind(kind)
                    .bind(*at)
                    .bind(*critical)
                    .bind(json);
            }
            q.execute(&mut *tx).await.map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
        spent += began.elapsed();
        events += rows.len();
    }
    Ok(events as f64 / spent.as_secs_f64())
}

async fn raw_postgres(
    pool: &sqlx::PgPool,
    runs: &[RunRecord],
    target: RawTarget,
) -> Result<f64, String> {
    if target == RawTarget::EventsWithoutForeignKey {
        // LIKE … INCLUDING ALL copies columns, collations, checks and the key, never a foreign key.
        sqlx::raw_sql("CREATE TABLE raw_events (LIKE agent_run_events INCLUDING ALL)")
            .execute(pool)
            .await
            .map_err(|e| e.to_string())?;
    }
    let table = match target {
        RawTarget::SameTables => "agent_run_events",
        RawTarget::EventsWithoutForeignKey => "raw_events",
    };
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    let mut spent = Duration::ZERO;
    let mut events = 0usize;
    for run in runs {
        let rows = raw_rows(run);
        let (org, run_id) = (run.org_id.to_string(), run.run_id.to_string());
        let mut data = String::new();
        for (seq, kind, at, critical, json) in &rows {
            copy_field(&mut data, &org);
            data.push('\t');
            copy_field(&mut data, &run_id);
            data.push_str(&format!("\t{seq}\t"));
            copy_field(&mut data, kind);
            data.push_str(&format!("\t{at}\t{}\t", if *critical { 't' } else { 'f' }));
            copy_field(&mut data, json);
            data.push('\n');
        }
        let began = Instant::now();
        let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
        if target == RawTarget::SameTables {
            bind_run!(sqlx::query(sqlx::AssertSqlSafe(raw_run_insert(true))), run)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY {table} (org_id, run_id, seq, type, at, critical, json) FROM STDIN (FORMAT text)"
            ))
            .await
            .map_err(|e| e.to_string())?;
        copy.send(data.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        copy.finish().await.map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        spent += began.elapsed();
        events += rows.len();
    }
    Ok(events as f64 / spent.as_secs_f64())
}

/// The baseline rows' names; the goal is judged on [`SAME_TABLES`] rows only.
pub const SAME_TABLES: &str = "same rows into the same tables";
const WITHOUT_FK: &str = "same rows into a table without the foreign key (informational)";

pub async fn measure(ctx: &Ctx) -> Result<Section, String> {
    let (events, count) = (ctx.sizes.ledger_run_events, ctx.sizes.ledger_runs);
    let runs: Vec<RunRecord> = (0..count).map(|i| run_record(i, events)).collect();
    // The raw side writes into the same tables, so its runs need ids of their own.
    let raw_runs: Vec<RunRecord> = (count..2 * count).map(|i| run_record(i, events)).collect();
    let mut rows = Vec::new();
    let size = super::replay::group(events);

    progress("  SQLite");
    let dir = ctx.dir("ledger")?;
    let pool = connect_sqlite(&dir.join("ledger.db"), 4)
        .await
        .map_err(|e| e.to_string())?;
    migrate_sqlite(&pool).await.map_err(|e| e.to_string())?;
    let ledger = through_ledger(&SqliteRunLedger::new(pool.clone()), &runs).await?;
    let raw = raw_sqlite(&pool, &raw_runs, RawTarget::SameTables).await?;
    let raw_no_fk = raw_sqlite(&pool, &runs, RawTarget::EventsWithoutForeignKey).await?;
    pool.close().await;
    let name = format!("SqliteRunLedger, runs of {size} events");
    rows.push(Row::new(
        &name,
        "events/s",
        ledger,
        &format!("raw multi-row INSERT, {SAME_TABLES}"),
        Some(raw),
    ));
    rows.push(Row::new(
        &name,
        "events/s",
        ledger,
        &format!("raw multi-row INSERT, {WITHOUT_FK}"),
        Some(raw_no_fk),
    ));

    let name = format!("PgRunLedger, runs of {size} events");
    match postgres_gate() {
        Err(_) => rows.push(Row::not_run(name, "events/s", "no DATABASE_URL")),
        Ok(()) => {
            progress("  Postgres");
            let scratch = ScratchPostgres::create().await?;
            let pool = scratch.pool(4).await?;
            migrate_postgres(&pool).await.map_err(|e| e.to_string())?;
            let ledger = through_ledger(&PgRunLedger::new(pool.clone()), &runs).await?;
            let raw = raw_postgres(&pool, &raw_runs, RawTarget::SameTables).await?;
            let raw_no_fk = raw_postgres(&pool, &runs, RawTarget::EventsWithoutForeignKey).await?;
            pool.close().await;
            drop(scratch);
            rows.push(Row::new(
                &name,
                "events/s",
                ledger,
                &format!("raw COPY FROM STDIN, {SAME_TABLES}"),
                Some(raw),
            ));
            rows.push(Row::new(
                &name,
                "events/s",
                ledger,
                &format!("raw COPY FROM STDIN, {WITHOUT_FK}"),
                Some(raw_no_fk),
            ));
        }
    }
    Ok(Section {
        id: "ledger_flush".into(),
        title: "Ledger flush (run records into the run ledger)".into(),
        rows,
        notes: vec![format!(
            "{count} runs of {events} events each; SQLite with the deployment's settings (WAL, synchronous = NORMAL); one transaction per run on both sides; the goal is judged against the same-tables baseline (decision 0004)"
        )],
    })
}
