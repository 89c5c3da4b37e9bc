//! Record plane: durable run history (`RunLedger`), org-wide status stream (`EventBus`) and
//! security-relevant actions (`AuditLog`).

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use switchboard_core::audit::AuditEntry;
use switchboard_core::run::RunRecord;
use switchboard_core::session::OrgEvent;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{ApiKeyId, RunId, SessionId, Timestamp};

crate::port_error!(
    /// Errors of [`RunLedger`].
    RunLedgerError,
    "run ledger"
);
crate::port_error!(
    /// Errors of [`EventBus`].
    EventBusError,
    "event bus"
);
crate::port_error!(
    /// Errors of [`AuditLog`].
    AuditLogError,
    "audit log"
);

/// Whether `record` wrote the run or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recorded {
    Inserted,
    AlreadyRecorded,
}

/// A query over a tenant's runs. Results are newest first (by `ended_at`, then run id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunQuery {
    pub session_id: Option<SessionId>,
    pub api_key_id: Option<ApiKeyId>,
    /// Runs that ended at or after this time.
    pub since: Option<Timestamp>,
    /// Runs that ended before this time.
    pub until: Option<Timestamp>,
    pub limit: usize,
}

/// Durable run history.
///
/// # Contract
/// - `record_then_get`: a recorded run reads back equal, with its events in seq order.
/// - `record_is_idempotent`: recording the same run id again is `AlreadyRecorded` and changes
///   nothing (no duplicate in `list`).
/// - `tenant_isolation`: another tenant's `get` is `NotFound` and its `list` never shows the run.
/// - `list_filters`: `list` filters by session, API key and time, newest first, at most `limit`, and
///   returns summaries (no events).
/// - `large_run_round_trip`: a run with 10,000 events records and reads back intact.
#[async_trait]
pub trait RunLedger: Send + Sync {
    async fn record(&self, run: &RunRecord) -> Result<Recorded, RunLedgerError>;
    async fn get(&self, tenant: &TenantContext, run: &RunId) -> Result<RunRecord, RunLedgerError>;
    async fn list(
        &self,
        tenant: &TenantContext,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, RunLedgerError>;
}

/// An org-wide stream of session status changes, for dashboards.
///
/// # Contract
/// - `subscriber_receives_published`: a subscriber receives events published after it subscribed,
///   in order.
/// - `tenant_isolation`: a subscriber never receives another org's events.
/// - `many_subscribers`: every subscriber of an org receives each event.
#[async_trait]
pub trait EventBus: Send + Sync {
    async fn publish(&self, event: &OrgEvent) -> Result<(), EventBusError>;
    async fn subscribe(
        &self,
        tenant: &TenantContext,
    ) -> Result<BoxStream<'static, OrgEvent>, EventBusError>;
}

/// Security-relevant actions.
///
/// # Contract
/// - `append_then_list`: appended entries are listed for their org, newest first, at most `limit`.
/// - `tenant_isolation`: an org never lists another org's entries.
/// - `entries_are_immutable`: appending never changes earlier entries.
#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn append(&self, entry: &AuditEntry) -> Result<(), AuditLogError>;
    async fn list(
        &self,
        tenant: &TenantContext,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditLogError>;
}
