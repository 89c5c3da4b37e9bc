//! Contract cases, fault catalog and `Faulty` wrapper for `RunLedger`. Its disruption cases live in
//! the session lifecycle (the ledger outbox), not here.

use super::identity_store::{at, new_org_id, tenant, unique};
use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, Faulty};
use crate::harness::{self, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use switchboard_adapters::sql::scratch::{postgres_gate, ScratchDir, ScratchPostgres};
use switchboard_adapters::sql::{
    connect_sqlite, migrate_postgres, migrate_sqlite, PgRunLedger, SqliteRunLedger,
};
use switchboard_core::protocol::events::{
    ErrorBody, Event, EventEnvelope, TerminalStatus, ToolStatus, Usage,
};
use switchboard_core::run::RunRecord;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{ApiKeyId, CallId, ErrorClass, ModelRef, OrgId, RunId, SessionId, UserId};
use switchboard_fakes::run_ledger::InMemoryRunLedger;
use switchboard_ports::record::{Recorded, RunLedger, RunLedgerError, RunQuery};
use switchboard_ports::PortId;

/// A fresh, empty ledger.
pub struct Fixture {
    pub ledger: Arc<dyn RunLedger>,
    /// The scratch database the ledger lives in, kept alive for the whole case (None for the fake).
    pub scratch: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// The events of a run: `run.started`, `n - 2` deltas and tool calls, then `execution_complete`.
fn events(run: &RunId, n: usize, first_at: u64) -> Vec<EventEnvelope> {
    (0..n)
        .map(|i| {
            let event = match i {
                0 => Event::RunStarted {},
                _ if i + 1 == n => Event::ExecutionComplete {
                    status: TerminalStatus::Completed,
                    stop_reason: Some("end_turn".to_string()),
                    usage: Usage {
                        input_tokens: 1200,
                        output_tokens: 340,
                    },
                    cost_micros: 8_700,
                    error: None,
                },
                _ if i % 7 == 3 => Event::ToolCall {
                    call_id: CallId::parse(format!("call-{i}")).expect("a valid call id"),
                    name: "bash".to_string(),
                    input: json!({"command": format!("echo {i}"), "nested": {"n": i, "ok": true}}),
                },
                _ if i % 7 == 4 => Event::ToolResult {
                    call_id: CallId::parse(format!("call-{}", i - 1)).expect("a valid call id"),
                    status: ToolStatus::Ok,
                    output: json!({"stdout": format!("{}\n", i - 1)}),
                },
                _ => Event::MessageDelta {
                    text: format!("chunk {i} — ünïcødé ✓ \"quoted\"\n"),
                },
            };
            let critical = event.is_critical();
            EventEnvelope {
                seq: i as u64 + 1,
                run_id: Some(run.clone()),
                at: at(first_at + i as u64 / 100),
                critical,
                event,
            }
        })
        .collect()
}

struct RunSpec<'a> {
    org: &'a OrgId,
    run_id: RunId,
    session: &'a SessionId,
    api_key: Option<&'a ApiKeyId>,
    ended_at: u64,
    events: usize,
}

fn run(spec: RunSpec<'_>) -> RunRecord {
    let events = events(&spec.run_id, spec.events, spec.ended_at.saturating_sub(5));
    RunRecord {
        run_id: spec.run_id,
        session_id: spec.session.clone(),
        org_id: spec.org.clone(),
        user_id: UserId::parse("user-ledger").expect("a valid user id"),
        api_key_id: spec.api_key.cloned(),
        model: ModelRef::parse("anthropic/claude-sonnet-4").expect("a valid model ref"),
        provider: "anthropic".to_string(),
        status: TerminalStatus::Completed,
        queued_at: at(spec.ended_at.saturating_sub(10)),
        started_at: Some(at(spec.ended_at.saturating_sub(5))),
        ended_at: at(spec.ended_at),
        usage: Usage {
            input_tokens: 1200,
            output_tokens: 340,
        },
        cost_micros: 8_700,
        error: None,
        event_count: events.len() as u64,
        events,
    }
}

fn new_run_id() -> RunId {
    RunId::parse(unique("run")).expect("a valid run id")
}

fn new_session_id() -> SessionId {
    SessionId::parse(unique("session")).expect("a valid session id")
}

fn all(limit: usize) -> RunQuery {
    RunQuery {
        limit,
        ..RunQuery::default()
    }
}

async fn listed_ids(
    ledger: &dyn RunLedger,
    t: &TenantContext,
    q: &RunQuery,
) -> Result<Vec<RunId>, String> {
    Ok(ok!(ledger.list(t, q).await)
        .into_iter()
        .map(|r| r.run_id)
        .collect())
}

/// One case per `# Contract` bullet of `RunLedger`.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "record_then_get",
            run: |f| Box::pin(record_then_get(f)),
        },
        Case {
            name: "record_is_idempotent",
            run: |f| Box::pin(record_is_idempotent(f)),
        },
        Case {
            name: "tenant_isolation",
            run: |f| Box::pin(tenant_isolation(f)),
        },
        Case {
            name: "list_filters",
            run: |f| Box::pin(list_filters(f)),
        },
        Case {
            name: "large_run_round_trip",
            run: |f| Box::pin(large_run_round_trip(f)),
        },
    ]
}

async fn record_then_get(f: Fixture) -> CaseResult {
    let org = new_org_id();
    let session = new_session_id();
    let key = ApiKeyId::parse(unique("key")).expect("a valid key id");
    let mut r = run(RunSpec {
        org: &org,
        run_id: new_run_id(),
        session: &session,
        api_key: Some(&key),
        ended_at: 100,
        events: 12,
    });
    r.status = TerminalStatus::Failed;
    r.error = Some(ErrorBody::new(
        "agent_crashed",
        "the agent exited with status 137",
    ));
    let plain = run(RunSpec {
        org: &org,
        run_id: new_run_id(),
        session: &session,
        api_key: None,
        ended_at: 90,
        events: 0,
    });

    ensure_eq!(ok!(f.ledger.record(&r).await), Recorded::Inserted);
    ensure_eq!(ok!(f.ledger.record(&plain).await), Recorded::Inserted);
    let got = ok!(f.ledger.get(&tenant(&org), &r.run_id).await);
    ensure!(
        got.events.windows(2).all(|w| w[0].seq < w[1].seq),
        "events come back in seq order"
    );
    ensure_eq!(got, r, "the run reads back equal");
    ensure_eq!(
        ok!(f.ledger.get(&tenant(&org), &plain.run_id).await),
        plain,
        "a run without events or key reads back equal"
    );
    expect_class!(
        f.ledger.get(&tenant(&org), &new_run_id()).await,
        ErrorClass::NotFound
    );
    Ok(())
}

async fn record_is_idempotent(f: Fixture) -> CaseResult {
    let org = new_org_id();
    let session = new_session_id();
    let first = run(RunSpec {
        org: &org,
        run_id: new_run_id(),
        session: &session,
        api_key: None,
        ended_at: 100,
        events: 5,
    });
    ensure_eq!(ok!(f.ledger.record(&first).await), Recorded::Inserted);
    ensure_eq!(
        ok!(f.ledger.record(&first).await),
        Recorded::AlreadyRecorded
    );

    let mut changed = first.clone();
    changed.cost_micros += 1;
    changed.status = TerminalStatus::Cancelled;
    changed.events.truncate(2);
    changed.event_count = 2;
    ensure_eq!(
        ok!(f.ledger.record(&changed).await),
        Recorded::AlreadyRecorded
    );

    ensure_eq!(
        ok!(f.ledger.get(&tenant(&org), &first.run_id).await),
        first,
        "the first copy stands"
    );
    ensure_eq!(
        listed_ids(&*f.ledger, &tenant(&org), &all(100)).await?,
        vec![first.run_id.clone()],
        "listed once"
    );
    Ok(())
}

async fn tenant_isolation(f: Fixture) -> CaseResult {
    let (org_a, org_b) = (new_org_id(), new_org_id());
    let session = new_session_id();
    let a = run(RunSpec {
        org: &org_a,
        run_id: new_run_id(),
        session: &session,
        api_key: None,
        ended_at: 100,
        events: 3,
    });
    let b = run(RunSpec {
        org: &org_b,
        run_id: new_run_id(),
        session: &new_session_id(),
        api_key: None,
        ended_at: 100,
        events: 3,
    });
    ok!(f.ledger.record(&a).await);
    ok!(f.ledger.record(&b).await);

    expect_class!(
        f.ledger.get(&tenant(&org_b), &a.run_id).await,
        ErrorClass::NotFound
    );
    expect_class!(
        f.ledger.get(&tenant(&org_a), &b.run_id).await,
        ErrorClass::NotFound
    );
    ensure_eq!(
        listed_ids(&*f.ledger, &tenant(&org_b), &all(100)).await?,
        vec![b.run_id.clone()],
        "org B lists only its run"
    );
    let by_session = RunQuery {
        session_id: Some(session.clone()),
        ..all(100)
    };
    ensure!(
        listed_ids(&*f.ledger, &tenant(&org_b), &by_session)
            .await?
            .is_empty(),
        "naming A's session does not reach A's runs"
    );
    ensure_eq!(
        listed_ids(&*f.ledger, &tenant(&org_a), &by_session).await?,
        vec![a.run_id.clone()]
    );
    ensure!(
        listed_ids(&*f.ledger, &tenant(&new_org_id()), &all(100))
            .await?
            .is_empty(),
        "a new org lists nothing"
    );
    Ok(())
}

async fn list_filters(f: Fixture) -> CaseResult {
    let org = new_org_id();
    let (s1, s2) = (new_session_id(), new_session_id());
    let k1 = ApiKeyId::parse(unique("key")).expect("a valid key id");
    let k2 = ApiKeyId::parse(unique("key")).expect("a valid key id");
    let prefix = unique("run");
    let id = |s: &str| RunId::parse(format!("{prefix}-{s}")).expect("a valid run id");
    let r1 = run(RunSpec {
        org: &org,
        run_id: id("a"),
        session: &s1,
        api_key: Some(&k1),
        ended_at: 10,
        events: 4,
    });
    let r2 = run(RunSpec {
        org: &org,
        run_id: id("b"),
        session: &s1,
        api_key: None,
        ended_at: 20,
        events: 4,
    });
    let r3 = run(RunSpec {
        org: &org,
        run_id: id("c"),
        session: &s2,
        api_key: Some(&k1),
        ended_at: 30,
        events: 4,
    });
    let r4 = run(RunSpec {
        org: &org,
        run_id: id("d"),
        session: &s2,
        api_key: Some(&k1),
        ended_at: 30,
        events: 4,
    });
    let r5 = run(RunSpec {
        org: &org,
        run_id: id("e"),
        session: &s1,
        api_key: Some(&k2),
        ended_at: 40,
        events: 4,
    });
    // Recorded out of order: the ledger sorts, not the caller.
    for r in [&r3, &r1, &r5, &r2, &r4] {
        ok!(f.ledger.record(r).await);
    }
    // Another org's run matching every filter must never appear.
    ok!(f
        .ledger
        .record(&run(RunSpec {
            org: &new_org_id(),
            run_id: id("z"),
            session: &s1,
            api_key: Some(&k1),
            ended_at: 25,
            events: 1
        }))
        .await);

    let t = tenant(&org);
    let everything = ok!(f.ledger.list(&t, &all(100)).await);
    let want: Vec<RunRecord> = [&r5, &r4, &r3, &r2, &r1]
        .iter()
        .map(|r| r.summary())
        .collect();
    ensure_eq!(
        everything,
        want,
        "newest first (ties by run id, descending), as summaries"
    );
    ensure!(
        everything
            .iter()
            .all(|r| r.events.is_empty() && r.event_count == 4),
        "summaries have no events but keep event_count"
    );

    let ids = |v: &[&RunRecord]| v.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>();
    let q = |f: fn(&mut RunQuery)| {
        let mut q = all(100);
        f(&mut q);
        q
    };
    let by_s1 = RunQuery {
        session_id: Some(s1.clone()),
        ..all(100)
    };
    ensure_eq!(
        listed_ids(&*f.ledger, &t, &by_s1).await?,
        ids(&[&r5, &r2, &r1]),
        "by session"
    );
    let by_k1 = RunQuery {
        api_key_id: Some(k1.clone()),
        ..all(100)
    };
    ensure_eq!(
        listed_ids(&*f.ledger, &t, &by_k1).await?,
        ids(&[&r4, &r3, &r1]),
        "by API key"
    );
    ensure_eq!(
        listed_ids(&*f.ledger, &t, &q(|q| q.since = Some(at(20)))).await?,
        ids(&[&r5, &r4, &r3, &r2]),
        "since is inclusive"
    );
    ensure_eq!(
        listed_ids(&*f.ledger, &t, &q(|q| q.until = Some(at(30)))).await?,
        ids(&[&r2, &r1]),
        "until is exclusive"
    );
    ensure_eq!(
        listed_ids(
            &*f.ledger,
            &t,
            &q(|q| {
                q.since = Some(at(20));
                q.until = Some(at(40));
            })
        )
        .await?,
        ids(&[&r4, &r3, &r2]),
        "a time window"
    );
    ensure_eq!(
        listed_ids(&*f.ledger, &t, &all(2)).await?,
        ids(&[&r5, &r4]),
        "at most limit"
    );
    let combined = RunQuery {
        session_id: Some(s2.clone()),
        api_key_id: Some(k1.clone()),
        limit: 1,
        ..RunQuery::default()
    };
    ensure_eq!(
        listed_ids(&*f.ledger, &t, &combined).await?,
        ids(&[&r4]),
        "filters combine with the limit"
    );
    let none = RunQuery {
        session_id: Some(s2.clone()),
        api_key_id: Some(k2.clone()),
        ..all(100)
    };
    ensure!(
        listed_ids(&*f.ledger, &t, &none).await?.is_empty(),
        "no run matches both"
    );
    Ok(())
}

async fn large_run_round_trip(f: Fixture) -> CaseResult {
    let org = new_org_id();
    let big = run(RunSpec {
        org: &org,
        run_id: new_run_id(),
        session: &new_session_id(),
        api_key: None,
        ended_at: 500,
        events: 10_000,
    });
    ensure_eq!(big.events.len(), 10_000);
    ensure_eq!(ok!(f.ledger.record(&big).await), Recorded::Inserted);
    let got = ok!(f.ledger.get(&tenant(&org), &big.run_id).await);
    ensure_eq!(got.events.len(), 10_000, "every event comes back");
    ensure!(
        got.events
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1),
        "events in seq order with no gap"
    );
    ensure!(got == big, "the large run reads back equal");
    let listed = ok!(f.ledger.list(&tenant(&org), &all(10)).await);
    ensure_eq!(listed, vec![big.summary()], "listed as a summary");
    Ok(())
}

/// Every implementation of `RunLedger`: the fake, and the ledger on SQLite and on Postgres (each
/// fixture on its own scratch database).
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(Fixture {
                ledger: Arc::new(InMemoryRunLedger::new()),
                scratch: None,
            })
        }),
        Implementation::new("sqlite", ImplKind::Adapter, || async {
            let dir = ScratchDir::create("sb-ledger")?;
            let pool = connect_sqlite(&dir.join("app.db"), 4)
                .await
                .map_err(|e| e.to_string())?;
            migrate_sqlite(&pool).await.map_err(|e| e.to_string())?;
            Ok(Fixture {
                ledger: Arc::new(SqliteRunLedger::new(pool)),
                scratch: Some(Arc::new(dir)),
            })
        }),
        Implementation::new("postgres", ImplKind::Adapter, || async {
            let db = ScratchPostgres::create().await?;
            let pool = db.pool(4).await?;
            migrate_postgres(&pool).await.map_err(|e| e.to_string())?;
            Ok(Fixture {
                ledger: Arc::new(PgRunLedger::new(pool)),
                scratch: Some(Arc::new(db)),
            })
        })
        .gated(postgres_gate),
    ]
}

/// The fault catalog of `RunLedger`.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry { fault: Fault::Unavailable, op: "record", outcome: "the run stays in the session's outbox and is recorded exactly once after the ledger heals" },
    CatalogEntry { fault: Fault::Timeout, op: "record", outcome: "the run stays in the outbox and is retried with backoff; it is recorded exactly once" },
    CatalogEntry {
        fault: Fault::LostAnswer,
        op: "record",
        outcome: "the run was written; the outbox retry gets AlreadyRecorded and drops it, so the run is recorded exactly once",
    },
    CatalogEntry { fault: Fault::Slow, op: "record", outcome: "the session's stream is not blocked; the run is recorded once the call returns" },
    CatalogEntry { fault: Fault::Unavailable, op: "get", outcome: "GET /v1/runs/{id} answers 503 and nothing is changed" },
    CatalogEntry { fault: Fault::Corrupt, op: "get", outcome: "GET /v1/runs/{id} fails with an internal error rather than returning a damaged run" },
    CatalogEntry { fault: Fault::Unavailable, op: "list", outcome: "GET /v1/runs answers 503 and nothing is changed" },
    CatalogEntry { fault: Fault::Timeout, op: "list", outcome: "GET /v1/runs answers with a timeout error and nothing is changed" },
];

#[async_trait]
impl RunLedger for Faulty<dyn RunLedger> {
    async fn record(&self, run: &RunRecord) -> Result<Recorded, RunLedgerError> {
        self.call("record", || self.inner.record(run)).await
    }
    async fn get(&self, tenant: &TenantContext, run: &RunId) -> Result<RunRecord, RunLedgerError> {
        self.call("get", || self.inner.get(tenant, run)).await
    }
    async fn list(
        &self,
        tenant: &TenantContext,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, RunLedgerError> {
        self.call("list", || self.inner.list(tenant, query)).await
    }
}

/// The suite of `RunLedger`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::RunLedger, cases(), implementations(), CATALOG)
}

/// Runs every contract case against an implementation: the adapter author's entry point.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    Report::run(harness::trials(
        PortId::RunLedger,
        &Implementation::new(name, ImplKind::Adapter, make),
        &cases(),
    ))
}

/// None here: the ledger's faults are exercised through the session lifecycle's outbox, by the
/// disruption suite.
pub fn disruptions() -> Vec<DisruptionCase> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger that overwrites on every record and lists in insertion order with full events.
    #[derive(Default)]
    struct Sloppy(std::sync::Mutex<Vec<RunRecord>>);

    #[async_trait]
    impl RunLedger for Sloppy {
        async fn record(&self, run: &RunRecord) -> Result<Recorded, RunLedgerError> {
            let mut runs = self.0.lock().unwrap();
            runs.retain(|r| r.run_id != run.run_id);
            runs.push(run.clone());
            Ok(Recorded::Inserted)
        }
        async fn get(
            &self,
            tenant: &TenantContext,
            run: &RunId,
        ) -> Result<RunRecord, RunLedgerError> {
            let runs = self.0.lock().unwrap();
            runs.iter()
                .find(|r| &r.run_id == run && &r.org_id == tenant.org())
                .cloned()
                .ok_or_else(|| RunLedgerError::NotFound(run.to_string()))
        }
        async fn list(
            &self,
            tenant: &TenantContext,
            query: &RunQuery,
        ) -> Result<Vec<RunRecord>, RunLedgerError> {
            let runs = self.0.lock().unwrap();
            Ok(runs
                .iter()
                .filter(|r| &r.org_id == tenant.org())
                .take(query.limit)
                .cloned()
                .collect())
        }
    }

    #[test]
    fn check_reports_a_ledger_that_is_not_idempotent_and_does_not_sort() {
        let report = check("sloppy", || async {
            Ok(Fixture {
                ledger: Arc::new(Sloppy::default()),
                scratch: None,
            })
        });
        let failed: Vec<&str> = report.failures().iter().map(|(n, _)| *n).collect();
        assert!(
            failed.contains(&"run_ledger::sloppy::record_is_idempotent"),
            "{failed:?}"
        );
        assert!(
            failed.contains(&"run_ledger::sloppy::list_filters"),
            "{failed:?}"
        );
    }
}
