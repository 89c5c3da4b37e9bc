//! Decorators that count what passes through a port for `/metrics`, without touching the ports
//! crate: [`MeteredSessionStore`] (events relayed, ledger outbox depth) and [`MeteredRunLedger`]
//! (run outcomes by status). They forward every call unchanged, answers and errors alike.
//!
//! Metrics go to the process-wide `metrics` recorder (see `serve::metrics_handle`):
//! - `switchboard_events_relayed_total`: sequenced events committed to session stores. Every such
//!   event is fanned out to the session's attached clients and replayable, so this counts the
//!   events the server relays.
//! - `switchboard_ledger_outbox_depth`: finished runs waiting in session outboxes for the run
//!   ledger. Counted from the commits and loads this process has seen: a run left in an outbox by
//!   a previous process counts from the moment its session is loaded again.
//! - `switchboard_run_outcomes_total{status}`: runs newly recorded in the ledger, by terminal
//!   status (`completed`, `failed`, `cancelled`, `timed_out`); a re-recorded run counts once.
//! - `switchboard_ledger_record_failures_total{class}`: ledger writes that failed, by error class.

use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use switchboard_core::protocol::EventEnvelope;
use switchboard_core::run::RunRecord;
use switchboard_core::session::{Commit, Persisted};
use switchboard_core::tenancy::{SessionKey, TenantContext};
use switchboard_core::{OrgId, RunId, SessionId};
use switchboard_ports::record::{Recorded, RunQuery};
use switchboard_ports::session::SessionStoreError;
use switchboard_ports::{Classify, RunLedger, RunLedgerError, SessionStore};

/// Counter: events committed to session stores.
pub const EVENTS_RELAYED: &str = "switchboard_events_relayed_total";
/// Gauge: runs waiting in outboxes for the ledger.
pub const OUTBOX_DEPTH: &str = "switchboard_ledger_outbox_depth";
/// Counter: runs recorded in the ledger, by `status`.
pub const RUN_OUTCOMES: &str = "switchboard_run_outcomes_total";
/// Counter: failed ledger writes, by `class`.
pub const LEDGER_FAILURES: &str = "switchboard_ledger_record_failures_total";

/// Registers the help text of these metrics with the recorder (idempotent).
pub fn describe() {
    metrics::describe_counter!(
        EVENTS_RELAYED,
        "Sequenced session events committed and relayed to clients."
    );
    metrics::describe_gauge!(
        OUTBOX_DEPTH,
        "Finished runs waiting in session outboxes for the run ledger."
    );
    metrics::describe_counter!(
        RUN_OUTCOMES,
        "Runs recorded in the run ledger, by terminal status."
    );
    metrics::describe_counter!(
        LEDGER_FAILURES,
        "Run ledger writes that failed, by error class."
    );
}

/// A [`SessionStore`] that counts committed events and tracks the outbox.
pub struct MeteredSessionStore {
    inner: Arc<dyn SessionStore>,
    outbox: Mutex<HashSet<(SessionKey, RunId)>>,
}

impl MeteredSessionStore {
    pub fn new(inner: Arc<dyn SessionStore>) -> Self {
        MeteredSessionStore {
            inner,
            outbox: Mutex::new(HashSet::new()),
        }
    }

    /// Runs this store has seen enter an outbox and not yet leave it.
    pub fn outbox_depth(&self) -> usize {
        self.outbox.lock().unwrap().len()
    }

    fn outbox_add<'a>(&self, key: &SessionKey, runs: impl Iterator<Item = &'a RunId>) {
        let mut outbox = self.outbox.lock().unwrap();
        for run in runs {
            if outbox.insert((key.clone(), run.clone())) {
                metrics::gauge!(OUTBOX_DEPTH).increment(1.0);
            }
        }
    }

    fn outbox_remove<'a>(&self, key: &SessionKey, runs: impl Iterator<Item = &'a RunId>) {
        let mut outbox = self.outbox.lock().unwrap();
        for run in runs {
            if outbox.remove(&(key.clone(), run.clone())) {
                metrics::gauge!(OUTBOX_DEPTH).decrement(1.0);
            }
        }
    }
}

impl Drop for MeteredSessionStore {
    fn drop(&mut self) {
        // The process-wide gauge must not keep counting a store that is gone.
        let left = self.outbox.get_mut().map(|o| o.len()).unwrap_or(0);
        if left > 0 {
            metrics::gauge!(OUTBOX_DEPTH).decrement(left as f64);
        }
    }
}

#[async_trait]
impl SessionStore for MeteredSessionStore {
    async fn commit(&self, key: &SessionKey, commit: &Commit) -> Result<(), SessionStoreError> {
        self.inner.commit(key, commit).await?;
        if !commit.events.is_empty() {
            metrics::counter!(EVENTS_RELAYED).increment(commit.events.len() as u64);
        }
        self.outbox_add(key, commit.outbox_put.iter().map(|r: &RunRecord| &r.run_id));
        self.outbox_remove(key, commit.outbox_remove.iter());
        Ok(())
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Persisted>, SessionStoreError> {
        let loaded = self.inner.load(key).await?;
        if let Some(persisted) = &loaded {
            self.outbox_add(key, persisted.outbox.iter().map(|r| &r.run_id));
        }
        Ok(loaded)
    }

    async fn events(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, SessionStoreError> {
        self.inner.events(key, after, limit).await
    }

    async fn list(&self, org: &OrgId) -> Result<Vec<SessionId>, SessionStoreError> {
        self.inner.list(org).await
    }
}

/// A [`RunLedger`] that counts run outcomes and failed writes.
pub struct MeteredRunLedger {
    inner: Arc<dyn RunLedger>,
}

impl MeteredRunLedger {
    pub fn new(inner: Arc<dyn RunLedger>) -> Self {
        MeteredRunLedger { inner }
    }
}

/// The wire name of a terminal status (`timed_out`).
fn status_label(run: &RunRecord) -> String {
    match serde_json::to_value(run.status) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".to_string(),
    }
}

#[async_trait]
impl RunLedger for MeteredRunLedger {
    async fn record(&self, run: &RunRecord) -> Result<Recorded, RunLedgerError> {
        match self.inner.record(run).await {
            Ok(recorded) => {
                if recorded == Recorded::Inserted {
                    metrics::counter!(RUN_OUTCOMES, "status" => status_label(run)).increment(1);
                }
                Ok(recorded)
            }
            Err(e) => {
                metrics::counter!(LEDGER_FAILURES, "class" => e.class().code()).increment(1);
                Err(e)
            }
        }
    }

    async fn get(&self, tenant: &TenantContext, run: &RunId) -> Result<RunRecord, RunLedgerError> {
        self.inner.get(tenant, run).await
    }

    async fn list(
        &self,
        tenant: &TenantContext,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, RunLedgerError> {
        self.inner.list(tenant, query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_fakes::session_store::InMemorySessionStore;

    #[tokio::test(flavor = "current_thread")]
    async fn forwards_and_tracks_nothing_for_an_empty_store() {
        let store = MeteredSessionStore::new(Arc::new(InMemorySessionStore::new()));
        let key = SessionKey::from_host_storage(
            OrgId::parse("org_m").unwrap(),
            SessionId::parse("ses_m").unwrap(),
        );
        assert!(store.load(&key).await.unwrap().is_none());
        assert!(store.events(&key, 0, 10).await.unwrap().is_empty());
        assert_eq!(store.outbox_depth(), 0);
        store.outbox_add(
            &key,
            [
                RunId::parse("run_a").unwrap(),
                RunId::parse("run_a").unwrap(),
            ]
            .iter(),
        );
        assert_eq!(
            store.outbox_depth(),
            1,
            "the same run enters the outbox once"
        );
        store.outbox_remove(&key, [RunId::parse("run_a").unwrap()].iter());
        assert_eq!(store.outbox_depth(), 0);
    }
}
