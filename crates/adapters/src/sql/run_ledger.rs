//! `SqliteRunLedger` and `PgRunLedger`: the run ledger in the tables `agent_runs` (one row per run)
//! and `agent_run_events` (one row per event), schema `0003_run_ledger.sql`.
//!
//! Writing: `record` runs in one transaction. It inserts the run row with `ON CONFLICT DO NOTHING`;
//! only when that inserted a row does it insert the events, in batches (multi-row `VALUES` of
//! [`SQLITE_EVENT_BATCH`] rows on SQLite, one `COPY … FROM STDIN` streamed in chunks of at most
//! [`PG_COPY_CHUNK_BYTES`] on Postgres), so a run of 10,000 events costs a few dozen statements on
//! SQLite and one on Postgres, not 10,000 round trips. Then it commits.
//! A failure anywhere (a dead connection, a full disk, a dropped future) rolls the whole transaction
//! back: a run is either recorded with every event or not at all, and a retry records it once. A
//! second `record` of an (org, run id) already there answers `AlreadyRecorded` and writes nothing
//! (concurrent records of one run: the loser waits for the winner's commit, then sees the row).
//! Two events with one seq make the run `Invalid` before anything is written, as in the fake.
//!
//! Reading: every query filters by the tenant's org (the primary key starts with it), so one org
//! never reads another's run, even by naming its run id. Recorded runs are never changed, so `get`
//! reads the run row and then its events without a shared snapshot.
//!
//! Storage: times are milliseconds since the epoch; enums are stored as their wire names; each
//! event is stored as its whole envelope's JSON (plus `type`, `at`, `critical` for queries); a
//! value that no longer decodes reads back as `Corrupt`, never as a damaged run.

use super::errors::to_port;
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use switchboard_core::protocol::events::{ErrorBody, EventEnvelope, TerminalStatus, Usage};
use switchboard_core::run::RunRecord;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{ApiKeyId, ModelRef, OrgId, RunId, SessionId, Timestamp, UserId};
use switchboard_ports::record::{Recorded, RunLedger, RunLedgerError, RunQuery};

/// Events per multi-row `INSERT` on SQLite: 7 bound values a row keeps a statement far below
/// SQLite's 32,766 variables.
pub const SQLITE_EVENT_BATCH: usize = 500;

/// Largest piece of the events' `COPY` text sent to Postgres at once.
pub const PG_COPY_CHUNK_BYTES: usize = 1 << 20;

/// Appends one field in Postgres `COPY` text format (backslash, tab, newline and carriage return
/// escaped; the other characters as they are).
pub fn copy_field(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

impl EventColumns {
    /// The events as `COPY agent_run_events (org_id, run_id, seq, type, at, critical, json)` text
    /// rows.
    fn copy_text(&self, org_id: &str, run_id: &str) -> String {
        use std::fmt::Write;
        let mut prefix = String::new();
        copy_field(&mut prefix, org_id);
        prefix.push('\t');
        copy_field(&mut prefix, run_id);
        prefix.push('\t');
        let size: usize = self.json.iter().map(|j| j.len() + prefix.len() + 48).sum();
        let mut out = String::with_capacity(size);
        for i in 0..self.len() {
            out.push_str(&prefix);
            let _ = write!(out, "{}\t", self.seq[i]);
            copy_field(&mut out, &self.kind[i]);
            let _ = write!(
                out,
                "\t{}\t{}\t",
                self.at[i],
                if self.critical[i] { 't' } else { 'f' }
            );
            copy_field(&mut out, &self.json[i]);
            out.push('\n');
        }
        out
    }
}

/// The columns of `agent_runs` as every query reads them (`error` as text on both engines).
const RUN_COLUMNS_READ: &str = "org_id, run_id, session_id, user_id, api_key_id, model, provider, status, queued_at, \
     started_at, ended_at, input_tokens, output_tokens, cost_micros, CAST(error AS TEXT) AS error, event_count";

// ---------------------------------------------------------------------------------------------
// Encoding shared by both engines.
// ---------------------------------------------------------------------------------------------

/// A run as the `agent_runs` row holds it.
struct RunRow {
    org_id: String,
    run_id: String,
    session_id: String,
    user_id: String,
    api_key_id: Option<String>,
    model: String,
    provider: String,
    status: String,
    queued_at: i64,
    started_at: Option<i64>,
    ended_at: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_micros: i64,
    error: Option<String>,
    event_count: i64,
}

/// A run's events as `agent_run_events` columns, in seq order.
#[derive(Default)]
struct EventColumns {
    seq: Vec<i64>,
    kind: Vec<String>,
    at: Vec<i64>,
    critical: Vec<bool>,
    json: Vec<String>,
}

impl EventColumns {
    fn len(&self) -> usize {
        self.seq.len()
    }
}

fn invalid(what: impl std::fmt::Display) -> RunLedgerError {
    RunLedgerError::Invalid(what.to_string())
}

fn corrupt(what: impl std::fmt::Display) -> RunLedgerError {
    RunLedgerError::Corrupt(what.to_string())
}

/// A count or time that must fit a signed 64-bit column.
fn to_i64(value: u64, what: &str) -> Result<i64, RunLedgerError> {
    i64::try_from(value).map_err(|_| {
        invalid(format!(
            "{what} {value} does not fit the ledger (at most {})",
            i64::MAX
        ))
    })
}

fn from_i64(value: i64, what: &str) -> Result<u64, RunLedgerError> {
    u64::try_from(value).map_err(|_| corrupt(format!("stored {what} {value} is negative")))
}

/// The wire name of a unit enum (`"timed_out"`).
fn token<T: Serialize>(value: &T) -> Result<String, RunLedgerError> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(other) => Err(invalid(format!("expected a name, got {other}"))),
        Err(e) => Err(invalid(e)),
    }
}

fn from_token<T: DeserializeOwned>(s: &str, what: &str) -> Result<T, RunLedgerError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|e| corrupt(format!("stored {what} {s:?}: {e}")))
}

fn parse_id<T>(
    s: String,
    what: &str,
    parse: impl FnOnce(String) -> Result<T, switchboard_core::ids::InvalidId>,
) -> Result<T, RunLedgerError> {
    parse(s).map_err(|e| corrupt(format!("stored {what}: {e}")))
}

/// Refuses a run whose events share a seq (as the fake does) and returns its events in seq order.
fn events_in_seq_order(run: &RunRecord) -> Result<Vec<&EventEnvelope>, RunLedgerError> {
    let mut events: Vec<&EventEnvelope> = run.events.iter().collect();
    events.sort_by_key(|e| e.seq);
    let mut seen = HashSet::with_capacity(events.len());
    if let Some(dup) = events.iter().find(|e| !seen.insert(e.seq)) {
        return Err(invalid(format!(
            "run {} has two events with seq {}",
            run.run_id, dup.seq
        )));
    }
    Ok(events)
}

fn encode(run: &RunRecord) -> Result<(RunRow, EventColumns), RunLedgerError> {
    let events = events_in_seq_order(run)?;
    let row = RunRow {
        org_id: run.org_id.to_string(),
        run_id: run.run_id.to_string(),
        session_id: run.session_id.to_string(),
        user_id: run.user_id.to_string(),
        api_key_id: run.api_key_id.as_ref().map(ToString::to_string),
        model: run.model.to_string(),
        provider: run.provider.clone(),
        status: token(&run.status)?,
        queued_at: to_i64(run.queued_at.as_millis(), "queued_at")?,
        started_at: run
            .started_at
            .map(|t| to_i64(t.as_millis(), "started_at"))
            .transpose()?,
        ended_at: to_i64(run.ended_at.as_millis(), "ended_at")?,
        input_tokens: to_i64(run.usage.input_tokens, "input_tokens")?,
        output_tokens: to_i64(run.usage.output_tokens, "output_tokens")?,
        cost_micros: to_i64(run.cost_micros, "cost_micros")?,
        error: run
            .error
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(invalid)?,
        event_count: to_i64(run.event_count, "event_count")?,
    };
    let mut columns = EventColumns::default();
    for e in events {
        columns.seq.push(to_i64(e.seq, "event seq")?);
        columns.kind.push(e.event.type_name().to_string());
        columns.at.push(to_i64(e.at.as_millis(), "event time")?);
        columns.critical.push(e.critical);
        columns
            .json
            .push(serde_json::to_string(e).map_err(invalid)?);
    }
    Ok((row, columns))
}

impl RunRow {
    /// Reads the `RUN_COLUMNS_READ` of a row of either engine.
    fn read<R>(row: &R) -> Result<RunRow, sqlx::Error>
    where
        R: sqlx::Row,
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(RunRow {
            org_id: row.try_get("org_id")?,
            run_id: row.try_get("run_id")?,
            session_id: row.try_get("session_id")?,
            user_id: row.try_get("user_id")?,
            api_key_id: row.try_get("api_key_id")?,
            model: row.try_get("model")?,
            provider: row.try_get("provider")?,
            status: row.try_get("status")?,
            queued_at: row.try_get("queued_at")?,
            started_at: row.try_get("started_at")?,
            ended_at: row.try_get("ended_at")?,
            input_tokens: row.try_get("input_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            cost_micros: row.try_get("cost_micros")?,
            error: row.try_get("error")?,
            event_count: row.try_get("event_count")?,
        })
    }

    /// The run this row holds, with `events`.
    fn into_record(self, events: Vec<EventEnvelope>) -> Result<RunRecord, RunLedgerError> {
        let time = |ms: i64, what: &str| from_i64(ms, what).map(Timestamp::from_millis);
        Ok(RunRecord {
            run_id: parse_id(self.run_id, "run id", RunId::parse)?,
            session_id: parse_id(self.session_id, "session id", SessionId::parse)?,
            org_id: parse_id(self.org_id, "org id", OrgId::parse)?,
            user_id: parse_id(self.user_id, "user id", UserId::parse)?,
            api_key_id: self
                .api_key_id
                .map(|k| parse_id(k, "api key id", ApiKeyId::parse))
                .transpose()?,
            model: ModelRef::parse(&self.model)
                .map_err(|e| corrupt(format!("stored model {:?}: {e}", self.model)))?,
            provider: self.provider,
            status: from_token::<TerminalStatus>(&self.status, "status")?,
            queued_at: time(self.queued_at, "queued_at")?,
            started_at: self.started_at.map(|t| time(t, "started_at")).transpose()?,
            ended_at: time(self.ended_at, "ended_at")?,
            usage: Usage {
                input_tokens: from_i64(self.input_tokens, "input_tokens")?,
                output_tokens: from_i64(self.output_tokens, "output_tokens")?,
            },
            cost_micros: from_i64(self.cost_micros, "cost_micros")?,
            error: self
                .error
                .map(|e| {
                    serde_json::from_str::<ErrorBody>(&e)
                        .map_err(|err| corrupt(format!("stored run error: {err}")))
                })
                .transpose()?,
            event_count: from_i64(self.event_count, "event_count")?,
            events,
        })
    }
}

/// An event read back: its envelope JSON must parse and carry the seq of its row.
fn decode_event(seq: i64, json: &str) -> Result<EventEnvelope, RunLedgerError> {
    let event: EventEnvelope =
        serde_json::from_str(json).map_err(|e| corrupt(format!("stored event {seq}: {e}")))?;
    if i64::try_from(event.seq).ok() != Some(seq) {
        return Err(corrupt(format!(
            "stored event in row {seq} says seq {}",
            event.seq
        )));
    }
    Ok(event)
}

/// `query.limit` as a SQL `LIMIT`.
fn limit(query: &RunQuery) -> i64 {
    i64::try_from(query.limit).unwrap_or(i64::MAX)
}

/// The `list` query (its placeholders made by `placeholder(n)`, binds in the order org, session,
/// API key, the returned times, limit) and the time bounds to bind.
fn list_sql(
    query: &RunQuery,
    placeholder: impl Fn(usize) -> String,
) -> Result<(String, Vec<i64>), RunLedgerError> {
    let mut sql = format!(
        "SELECT {RUN_COLUMNS_READ} FROM agent_runs WHERE org_id = {}",
        placeholder(1)
    );
    let mut n = 1;
    let mut next = |column: &str, op: &str, sql: &mut String| {
        n += 1;
        sql.push_str(&format!(" AND {column} {op} {}", placeholder(n)));
    };
    if query.session_id.is_some() {
        next("session_id", "=", &mut sql);
    }
    if query.api_key_id.is_some() {
        next("api_key_id", "=", &mut sql);
    }
    let mut times = Vec::new();
    if let Some(since) = query.since {
        next("ended_at", ">=", &mut sql);
        times.push(to_i64(since.as_millis(), "since")?);
    }
    if let Some(until) = query.until {
        next("ended_at", "<", &mut sql);
        times.push(to_i64(until.as_millis(), "until")?);
    }
    n += 1;
    sql.push_str(&format!(
        " ORDER BY ended_at DESC, run_id DESC LIMIT {}",
        placeholder(n)
    ));
    Ok((sql, times))
}

// ---------------------------------------------------------------------------------------------
// SQLite.
// ---------------------------------------------------------------------------------------------

/// The run ledger in a SQLite database (WAL), migrated with [`super::migrate_sqlite`].
pub struct SqliteRunLedger {
    pool: sqlx::SqlitePool,
    statements: AtomicU64,
}

impl SqliteRunLedger {
    pub fn new(pool: sqlx::SqlitePool) -> Self {
        SqliteRunLedger {
            pool,
            statements: AtomicU64::new(0),
        }
    }

    /// Statements this ledger has sent to the database (`BEGIN` and `COMMIT` included): the hook
    /// that shows a big run is written in batches, not row by row.
    pub fn statements_issued(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    fn counted(&self, n: u64) {
        self.statements.fetch_add(n, Ordering::Relaxed);
    }

    /// The multi-row insert of `rows` events.
    fn events_insert_sql(rows: usize) -> String {
        let mut sql = String::from(
            "INSERT INTO agent_run_events (org_id, run_id, seq, type, at, critical, json) VALUES ",
        );
        for i in 0..rows {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str("(?, ?, ?, ?, ?, ?, ?)");
        }
        sql
    }
}

#[async_trait]
impl RunLedger for SqliteRunLedger {
    async fn record(&self, run: &RunRecord) -> Result<Recorded, RunLedgerError> {
        let (row, events) = encode(run)?;
        let fail = |e| to_port::<RunLedgerError>("recording a run", e);
        self.counted(1);
        // IMMEDIATE: take the write lock up front (waiting out the busy timeout) rather than
        // failing an upgrade half-way.
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(fail)?;
        self.counted(1);
        let inserted = sqlx::query(
            "INSERT INTO agent_runs (org_id, run_id, session_id, user_id, api_key_id, model, provider, status, queued_at, \
             started_at, ended_at, input_tokens, output_tokens, cost_micros, error, event_count) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (org_id, run_id) DO NOTHING",
        )
        .bind(&row.org_id)
        .bind(&row.run_id)
        .bind(&row.session_id)
        .bind(&row.user_id)
        .bind(&row.api_key_id)
        .bind(&row.model)
        .bind(&row.provider)
        .bind(&row.status)
        .bind(row.queued_at)
        .bind(row.started_at)
        .bind(row.ended_at)
        .bind(row.input_tokens)
        .bind(row.output_tokens)
        .bind(row.cost_micros)
        .bind(&row.error)
        .bind(row.event_count)
        .execute(&mut *tx)
        .await
        .map_err(fail)?
        .rows_affected();
        if inserted == 0 {
            // Dropping the transaction rolls it back; it wrote nothing anyway.
            return Ok(Recorded::AlreadyRecorded);
        }
        let mut start = 0;
        while start < events.len() {
            let end = (start + SQLITE_EVENT_BATCH).min(events.len());
            let sql = Self::events_insert_sql(end - start);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for i in start..end {
                q = q
                    .bind(&row.org_id)
                    .bind(&row.run_id)
                    .bind(events.seq[i])
                    .bind(&events.kind[i])
                    .bind(events.at[i])
                    .bind(events.critical[i])
                    .bind(&events.json[i]);
            }
            self.counted(1);
            q.execute(&mut *tx).await.map_err(fail)?;
            start = end;
        }
        self.counted(1);
        tx.commit().await.map_err(fail)?;
        Ok(Recorded::Inserted)
    }

    async fn get(&self, tenant: &TenantContext, run: &RunId) -> Result<RunRecord, RunLedgerError> {
        let fail = |e| to_port::<RunLedgerError>("reading a run", e);
        let org = tenant.org().as_str();
        self.counted(1);
        let found = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS_READ} FROM agent_runs WHERE org_id = ? AND run_id = ?"
        )))
        .bind(org)
        .bind(run.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(fail)?
        .ok_or_else(|| RunLedgerError::NotFound(format!("run {run}")))?;
        let head = RunRow::read(&found).map_err(fail)?;
        self.counted(1);
        let rows = sqlx::query(
            "SELECT seq, json FROM agent_run_events WHERE org_id = ? AND run_id = ? ORDER BY seq",
        )
        .bind(org)
        .bind(run.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(fail)?;
        let mut events = Vec::with_capacity(rows.len());
        for r in &rows {
            use sqlx::Row;
            let seq: i64 = r.try_get("seq").map_err(fail)?;
            let json: String = r.try_get("json").map_err(fail)?;
            events.push(decode_event(seq, &json)?);
        }
        head.into_record(events)
    }

    async fn list(
        &self,
        tenant: &TenantContext,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, RunLedgerError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let fail = |e| to_port::<RunLedgerError>("listing runs", e);
        let (sql, times) = list_sql(query, |_| "?".to_string())?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.org().as_str());
        if let Some(s) = &query.session_id {
            q = q.bind(s.as_str());
        }
        if let Some(k) = &query.api_key_id {
            q = q.bind(k.as_str());
        }
        for t in times {
            q = q.bind(t);
        }
        self.counted(1);
        let rows = q
            .bind(limit(query))
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?;
        rows.iter()
            .map(|r| RunRow::read(r).map_err(fail)?.into_record(Vec::new()))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Postgres.
// ---------------------------------------------------------------------------------------------

/// The run ledger in Postgres, migrated with [`super::migrate_postgres`].
pub struct PgRunLedger {
    pool: sqlx::PgPool,
    statements: AtomicU64,
}

impl PgRunLedger {
    pub fn new(pool: sqlx::PgPool) -> Self {
        PgRunLedger {
            pool,
            statements: AtomicU64::new(0),
        }
    }

    /// Statements this ledger has sent to the database (`BEGIN` and `COMMIT` included): the hook
    /// that shows a big run is written in batches, not row by row.
    pub fn statements_issued(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    fn counted(&self, n: u64) {
        self.statements.fetch_add(n, Ordering::Relaxed);
    }
}

#[async_trait]
impl RunLedger for PgRunLedger {
    async fn record(&self, run: &RunRecord) -> Result<Recorded, RunLedgerError> {
        let (row, events) = encode(run)?;
        let fail = |e| to_port::<RunLedgerError>("recording a run", e);
        self.counted(1);
        let mut tx = self.pool.begin().await.map_err(fail)?;
        self.counted(1);
        let inserted = sqlx::query(
            "INSERT INTO agent_runs (org_id, run_id, session_id, user_id, api_key_id, model, provider, status, queued_at, \
             started_at, ended_at, input_tokens, output_tokens, cost_micros, error, event_count) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::json, $16) \
             ON CONFLICT (org_id, run_id) DO NOTHING",
        )
        .bind(&row.org_id)
        .bind(&row.run_id)
        .bind(&row.session_id)
        .bind(&row.user_id)
        .bind(&row.api_key_id)
        .bind(&row.model)
        .bind(&row.provider)
        .bind(&row.status)
        .bind(row.queued_at)
        .bind(row.started_at)
        .bind(row.ended_at)
        .bind(row.input_tokens)
        .bind(row.output_tokens)
        .bind(row.cost_micros)
        .bind(&row.error)
        .bind(row.event_count)
        .execute(&mut *tx)
        .await
        .map_err(fail)?
        .rows_affected();
        if inserted == 0 {
            return Ok(Recorded::AlreadyRecorded);
        }
        if !events.seq.is_empty() {
            let text = events.copy_text(&row.org_id, &row.run_id);
            self.counted(1);
            let mut copy = tx
                .copy_in_raw(
                    "COPY agent_run_events (org_id, run_id, seq, type, at, critical, json) FROM STDIN",
                )
                .await
                .map_err(fail)?;
            for chunk in text.as_bytes().chunks(PG_COPY_CHUNK_BYTES) {
                copy.send(chunk).await.map_err(fail)?;
            }
            copy.finish().await.map_err(fail)?;
        }
        self.counted(1);
        tx.commit().await.map_err(fail)?;
        Ok(Recorded::Inserted)
    }

    async fn get(&self, tenant: &TenantContext, run: &RunId) -> Result<RunRecord, RunLedgerError> {
        let fail = |e| to_port::<RunLedgerError>("reading a run", e);
        let org = tenant.org().as_str();
        self.counted(1);
        let found = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS_READ} FROM agent_runs WHERE org_id = $1 AND run_id = $2"
        )))
        .bind(org)
        .bind(run.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(fail)?
        .ok_or_else(|| RunLedgerError::NotFound(format!("run {run}")))?;
        let head = RunRow::read(&found).map_err(fail)?;
        self.counted(1);
        let rows = sqlx::query("SELECT seq, json::text AS json FROM agent_run_events WHERE org_id = $1 AND run_id = $2 ORDER BY seq")
            .bind(org)
            .bind(run.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?;
        let mut events = Vec::with_capacity(rows.len());
        for r in &rows {
            use sqlx::Row;
            let seq: i64 = r.try_get("seq").map_err(fail)?;
            let json: String = r.try_get("json").map_err(fail)?;
            events.push(decode_event(seq, &json)?);
        }
        head.into_record(events)
    }

    async fn list(
        &self,
        tenant: &TenantContext,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, RunLedgerError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let fail = |e| to_port::<RunLedgerError>("listing runs", e);
        let (sql, times) = list_sql(query, |n| format!("${n}"))?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant.org().as_str());
        if let Some(s) = &query.session_id {
            q = q.bind(s.as_str());
        }
        if let Some(k) = &query.api_key_id {
            q = q.bind(k.as_str());
        }
        for t in times {
            q = q.bind(t);
        }
        self.counted(1);
        let rows = q
            .bind(limit(query))
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?;
        rows.iter()
            .map(|r| RunRow::read(r).map_err(fail)?.into_record(Vec::new()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_sql_numbers_its_placeholders_in_bind_order() {
        let q = RunQuery {
            session_id: Some(SessionId::parse("s").unwrap()),
            api_key_id: Some(ApiKeyId::parse("k").unwrap()),
            since: Some(Timestamp::from_millis(1)),
            until: Some(Timestamp::from_millis(2)),
            limit: 3,
        };
        let (sql, times) = list_sql(&q, |n| format!("${n}")).unwrap();
        assert!(sql.ends_with(
            "WHERE org_id = $1 AND session_id = $2 AND api_key_id = $3 AND ended_at >= $4 AND ended_at < $5 ORDER BY ended_at DESC, run_id DESC LIMIT $6"
        ), "{sql}");
        assert_eq!(times, vec![1, 2]);
        let (bare, none) = list_sql(
            &RunQuery {
                limit: 1,
                ..RunQuery::default()
            },
            |n| format!("${n}"),
        )
        .unwrap();
        assert!(
            bare.ends_with("WHERE org_id = $1 ORDER BY ended_at DESC, run_id DESC LIMIT $2"),
            "{bare}"
        );
        assert!(none.is_empty());
    }

    #[test]
    fn a_stored_event_must_carry_its_rows_seq() {
        let e = EventEnvelope {
            seq: 7,
            run_id: None,
            at: Timestamp::EPOCH,
            critical: false,
            event: switchboard_core::protocol::events::Event::MessageDelta { text: "x".into() },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(decode_event(7, &json).unwrap(), e);
        assert!(matches!(
            decode_event(8, &json),
            Err(RunLedgerError::Corrupt(_))
        ));
        assert!(matches!(
            decode_event(7, "{not json"),
            Err(RunLedgerError::Corrupt(_))
        ));
    }
}
