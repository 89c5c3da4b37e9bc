//! `InMemoryRunLedger`: durable run history kept in memory, idempotent on (org, run id).

use async_trait::async_trait;
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use switchboard_core::run::RunRecord;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{OrgId, RunId};
use switchboard_ports::record::{Recorded, RunLedger, RunLedgerError, RunQuery};

/// A run ledger in memory. A run is keyed by its org and run id; recording it again answers
/// `AlreadyRecorded` and keeps the first copy. Events are kept in seq order; two events with one
/// seq are `Invalid`.
#[derive(Default)]
pub struct InMemoryRunLedger {
    /// org → run id → run.
    runs: Mutex<BTreeMap<OrgId, BTreeMap<RunId, RunRecord>>>,
}

impl InMemoryRunLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many runs are recorded, across every org.
    pub fn len(&self) -> usize {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(BTreeMap::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a run matches a query's filters (not its limit).
pub fn matches_query(run: &RunRecord, query: &RunQuery) -> bool {
    query
        .session_id
        .as_ref()
        .is_none_or(|s| &run.session_id == s)
        && query
            .api_key_id
            .as_ref()
            .is_none_or(|k| run.api_key_id.as_ref() == Some(k))
        && query.since.is_none_or(|t| run.ended_at >= t)
        && query.until.is_none_or(|t| run.ended_at < t)
}

#[async_trait]
impl RunLedger for InMemoryRunLedger {
    async fn record(&self, run: &RunRecord) -> Result<Recorded, RunLedgerError> {
        let mut events = run.events.clone();
        events.sort_by_key(|e| e.seq);
        let mut seen = HashSet::with_capacity(events.len());
        if let Some(dup) = events.iter().find(|e| !seen.insert(e.seq)) {
            return Err(RunLedgerError::Invalid(format!(
                "run {} has two events with seq {}",
                run.run_id, dup.seq
            )));
        }
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let org = runs.entry(run.org_id.clone()).or_default();
        if org.contains_key(&run.run_id) {
            return Ok(Recorded::AlreadyRecorded);
        }
        org.insert(
            run.run_id.clone(),
            RunRecord {
                events,
                ..run.clone()
            },
        );
        Ok(Recorded::Inserted)
    }

    async fn get(&self, tenant: &TenantContext, run: &RunId) -> Result<RunRecord, RunLedgerError> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.get(tenant.org())
            .and_then(|org| org.get(run))
            .cloned()
            .ok_or_else(|| RunLedgerError::NotFound(format!("run {run}")))
    }

    /// Newest first by `ended_at`, then run id (descending); at most `query.limit` (0 lists none).
    async fn list(
        &self,
        tenant: &TenantContext,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, RunLedgerError> {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<&RunRecord> = runs
            .get(tenant.org())
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|r| matches_query(r, query))
            .collect();
        found.sort_by(|a, b| (b.ended_at, &b.run_id).cmp(&(a.ended_at, &a.run_id)));
        Ok(found
            .into_iter()
            .take(query.limit)
            .map(RunRecord::summary)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::protocol::events::{Event, EventEnvelope, TerminalStatus, Usage};
    use switchboard_core::{ModelRef, SessionId, Timestamp, UserId};

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::FutureExt::now_or_never(f).expect("in-memory fakes never wait")
    }

    fn run(seqs: &[u64]) -> RunRecord {
        RunRecord {
            run_id: RunId::parse("r1").unwrap(),
            session_id: SessionId::parse("s1").unwrap(),
            org_id: OrgId::parse("o1").unwrap(),
            user_id: UserId::parse("u1").unwrap(),
            api_key_id: None,
            model: ModelRef::parse("openai/gpt-5").unwrap(),
            provider: "openai".to_string(),
            status: TerminalStatus::Completed,
            queued_at: Timestamp::EPOCH,
            started_at: None,
            ended_at: Timestamp::from_millis(10),
            usage: Usage::default(),
            cost_micros: 0,
            error: None,
            event_count: seqs.len() as u64,
            events: seqs
                .iter()
                .map(|&seq| EventEnvelope {
                    seq,
                    run_id: None,
                    at: Timestamp::EPOCH,
                    critical: false,
                    event: Event::MessageDelta {
                        text: seq.to_string(),
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn events_are_kept_in_seq_order_and_duplicates_refused() {
        let ledger = InMemoryRunLedger::new();
        assert!(matches!(
            block_on(ledger.record(&run(&[1, 2, 2]))),
            Err(RunLedgerError::Invalid(_))
        ));
        assert!(ledger.is_empty(), "a refused run writes nothing");
        assert_eq!(
            block_on(ledger.record(&run(&[3, 1, 2]))).unwrap(),
            Recorded::Inserted
        );
        assert_eq!(ledger.len(), 1);
        let r = &ledger.runs.lock().unwrap()[&OrgId::parse("o1").unwrap()]
            [&RunId::parse("r1").unwrap()];
        assert_eq!(
            r.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn a_zero_limit_lists_nothing() {
        let ledger = InMemoryRunLedger::new();
        block_on(ledger.record(&run(&[1]))).unwrap();
        let tenant = switchboard_core::tenancy::Principal::from_verified_credential(
            OrgId::parse("o1").unwrap(),
            UserId::parse("u1").unwrap(),
            None,
            vec![],
        )
        .tenant();
        assert!(block_on(ledger.list(&tenant, &RunQuery::default()))
            .unwrap()
            .is_empty());
        assert_eq!(
            block_on(ledger.list(
                &tenant,
                &RunQuery {
                    limit: 5,
                    ..RunQuery::default()
                }
            ))
            .unwrap()
            .len(),
            1
        );
    }
}
