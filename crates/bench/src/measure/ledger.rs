//! Ledger flush (figure 5): runs of 10,000 events recorded through the real `RunLedger` adapters
//! (`SqliteRunLedger`, `PgRunLedger` when `DATABASE_URL` is set), events per second. Baseline: the
//! same rows, already encoded, written raw into a table of the same columns and keys, in one
//! transaction per run: a multi-row `INSERT` on SQLite, a `COPY … FROM STDIN` on Postgres.

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

async fn raw_sqlite(pool: &sqlx::SqlitePool, runs: &[RunRecord]) -> Result<f64, String> {
    sqlx::raw_sql(
        "CREATE TABLE raw_events (org_id TEXT NOT NULL, run_id TEXT NOT NULL, seq INTEGER NOT NULL, \
         type TEXT NOT NULL, at INTEGER NOT NULL, critical INTEGER NOT NULL, json TEXT NOT NULL, \
         PRIMARY KEY (org_id, run_id, seq)) WITHOUT ROWID",
    )
    .execute(pool)
    .await
    .map_err(|e| e.to_string())?;
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
        for chunk in rows.chunks(RAW_SQLITE_ROWS) {
            let mut sql = String::from(
                "INSERT INTO raw_events (org_id, run_id, seq, type, at, critical, json) VALUES ",
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

async fn raw_postgres(pool: &sqlx::PgPool, runs: &[RunRecord]) -> Result<f64, String> {
    sqlx::raw_sql("CREATE TABLE raw_events (LIKE agent_run_events INCLUDING ALL)")
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
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
        let mut copy = tx
            .copy_in_raw("COPY raw_events (org_id, run_id, seq, type, at, critical, json) FROM STDIN (FORMAT text)")
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

pub async fn measure(ctx: &Ctx) -> Result<Section, String> {
    let (events, count) = (ctx.sizes.ledger_run_events, ctx.sizes.ledger_runs);
    let runs: Vec<RunRecord> = (0..count).map(|i| run_record(i, events)).collect();
    let mut rows = Vec::new();

    progress("  SQLite");
    let dir = ctx.dir("ledger")?;
    let pool = connect_sqlite(&dir.join("ledger.db"), 4)
        .await
        .map_err(|e| e.to_string())?;
    migrate_sqlite(&pool).await.map_err(|e| e.to_string())?;
    let ledger = through_ledger(&SqliteRunLedger::new(pool.clone()), &runs).await?;
    let raw = raw_sqlite(&pool, &runs).await?;
    pool.close().await;
    rows.push(Row::new(
        format!(
            "SqliteRunLedger, runs of {} events",
            super::replay::group(events)
        ),
        "events/s",
        ledger,
        "raw multi-row INSERT, same rows",
        Some(raw),
    ));

    let name = format!(
        "PgRunLedger, runs of {} events",
        super::replay::group(events)
    );
    match postgres_gate() {
        Err(_) => rows.push(Row::not_run(name, "events/s", "no DATABASE_URL")),
        Ok(()) => {
            progress("  Postgres");
            let scratch = ScratchPostgres::create().await?;
            let pool = scratch.pool(4).await?;
            migrate_postgres(&pool).await.map_err(|e| e.to_string())?;
            let ledger = through_ledger(&PgRunLedger::new(pool.clone()), &runs).await?;
            let raw = raw_postgres(&pool, &runs).await?;
            pool.close().await;
            drop(scratch);
            rows.push(Row::new(
                name,
                "events/s",
                ledger,
                "raw COPY FROM STDIN, same rows",
                Some(raw),
            ));
        }
    }
    Ok(Section {
        id: "ledger_flush".into(),
        title: "Ledger flush (run records into the run ledger)".into(),
        rows,
        notes: vec![format!(
            "{count} runs of {events} events each; SQLite with the deployment's settings (WAL, synchronous = NORMAL); one transaction per run on both sides"
        )],
    })
}
