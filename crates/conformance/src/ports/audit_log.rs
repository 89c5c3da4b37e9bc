//! Contract cases, fault catalog and `Faulty` wrapper for `AuditLog`. Its disruption cases live in
//! the session lifecycle, not here.

use super::identity_store::{at, new_org_id, new_user_id, tenant};
use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, Faulty};
use crate::harness::{self, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, ok};
use async_trait::async_trait;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchboard_adapters::jsonl_audit::JsonLinesAuditLog;
use switchboard_adapters::sql::scratch::{postgres_gate, ScratchDir, ScratchPostgres};
use switchboard_adapters::sql::{
    connect_sqlite, migrate_postgres, migrate_sqlite, PgAuditLog, SqliteAuditLog,
};
use switchboard_core::audit::{AuditAction, AuditEntry, AuditOutcome};
use switchboard_core::tenancy::TenantContext;
use switchboard_core::OrgId;
use switchboard_fakes::audit_log::InMemoryAuditLog;
use switchboard_ports::record::{AuditLog, AuditLogError};
use switchboard_ports::PortId;

/// A fresh, empty audit log, and the temp dir it writes to (if any), removed when the case ends.
pub struct Fixture {
    pub log: Arc<dyn AuditLog>,
    pub temp_dir: Option<TempDir>,
    /// The scratch database the log lives in, kept alive for the whole case (None otherwise).
    pub scratch: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// A directory removed (with its contents) when dropped.
pub struct TempDir(PathBuf);

static TEMP_DIRS: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    /// A fresh, empty directory under the system temp dir, unique to this process and call.
    pub fn new(purpose: &str) -> Result<TempDir, String> {
        let n = TEMP_DIRS.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("switchboard-{purpose}-{}-{n}", std::process::id()));
        // A leftover from a crashed run with a recycled pid must not leak into this fixture.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn entry(
    org: Option<&OrgId>,
    secs: u64,
    action: AuditAction,
    target: &str,
    outcome: AuditOutcome,
) -> AuditEntry {
    AuditEntry {
        at: at(secs),
        org: org.cloned(),
        actor: Some(new_user_id()),
        action,
        target: target.to_string(),
        outcome,
    }
}

/// A mix of actions for `org`, one per second from `from`.
fn entries(org: &OrgId, from: u64, n: u64) -> Vec<AuditEntry> {
    let actions = [
        AuditAction::Login,
        AuditAction::ApiKeyCreated,
        AuditAction::CredentialWritten,
        AuditAction::CrossTenantDenied,
        AuditAction::SessionCreated,
    ];
    (0..n)
        .map(|i| {
            let outcome = if i % 3 == 2 {
                AuditOutcome::Denied
            } else {
                AuditOutcome::Allowed
            };
            entry(
                Some(org),
                from + i,
                actions[i as usize % actions.len()],
                &format!("target-{i} \"quoted\" ✓"),
                outcome,
            )
        })
        .collect()
}

fn newest_first(v: &[AuditEntry]) -> Vec<AuditEntry> {
    v.iter().rev().cloned().collect()
}

/// One case per `# Contract` bullet of `AuditLog`.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "append_then_list",
            run: |f| Box::pin(append_then_list(f)),
        },
        Case {
            name: "tenant_isolation",
            run: |f| Box::pin(tenant_isolation(f)),
        },
        Case {
            name: "entries_are_immutable",
            run: |f| Box::pin(entries_are_immutable(f)),
        },
    ]
}

async fn append_then_list(f: Fixture) -> CaseResult {
    let org = new_org_id();
    let t = tenant(&org);
    let written = entries(&org, 10, 6);
    for e in &written {
        ok!(f.log.append(e).await);
    }
    ensure_eq!(
        ok!(f.log.list(&t, 100).await),
        newest_first(&written),
        "every entry, newest first"
    );
    ensure_eq!(
        ok!(f.log.list(&t, 2).await),
        newest_first(&written[4..]),
        "at most limit, the newest"
    );
    ensure!(
        ok!(f.log.list(&t, 0).await).is_empty(),
        "a limit of 0 lists nothing"
    );
    Ok(())
}

async fn tenant_isolation(f: Fixture) -> CaseResult {
    let (a, b) = (new_org_id(), new_org_id());
    let (ea, eb) = (entries(&a, 10, 3), entries(&b, 11, 3));
    for (x, y) in ea.iter().zip(&eb) {
        ok!(f.log.append(x).await);
        ok!(f.log.append(y).await);
    }
    // An entry with no org (a failed login for an unknown email) belongs to no tenant.
    ok!(f
        .log
        .append(&entry(
            None,
            12,
            AuditAction::LoginFailed,
            "nobody@example.com",
            AuditOutcome::Denied
        ))
        .await);

    ensure_eq!(
        ok!(f.log.list(&tenant(&a), 100).await),
        newest_first(&ea),
        "org A sees only its entries"
    );
    ensure_eq!(
        ok!(f.log.list(&tenant(&b), 100).await),
        newest_first(&eb),
        "org B sees only its entries"
    );
    ensure!(
        ok!(f.log.list(&tenant(&new_org_id()), 100).await).is_empty(),
        "a new org sees nothing"
    );
    Ok(())
}

async fn entries_are_immutable(f: Fixture) -> CaseResult {
    let org = new_org_id();
    let t: TenantContext = tenant(&org);
    let first = entries(&org, 10, 3);
    for e in &first {
        ok!(f.log.append(e).await);
    }
    let before = ok!(f.log.list(&t, 100).await);
    ensure_eq!(before, newest_first(&first));

    // Later entries about the same targets, with other outcomes, must not rewrite the earlier ones.
    let later: Vec<AuditEntry> = first
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let outcome = if e.outcome == AuditOutcome::Allowed {
                AuditOutcome::Denied
            } else {
                AuditOutcome::Allowed
            };
            AuditEntry {
                at: at(20 + i as u64),
                outcome,
                ..e.clone()
            }
        })
        .collect();
    for e in &later {
        ok!(f.log.append(e).await);
    }
    let after = ok!(f.log.list(&t, 100).await);
    ensure_eq!(after.len(), 6, "appends add entries");
    ensure_eq!(
        after[3..].to_vec(),
        before,
        "the earlier entries are unchanged"
    );
    ensure_eq!(after[..3].to_vec(), newest_first(&later));
    Ok(())
}

/// Every implementation of `AuditLog`: the fake, the JSON lines file, and the log on SQLite and on
/// Postgres (each fixture on its own scratch database).
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(Fixture {
                log: Arc::new(InMemoryAuditLog::new()),
                temp_dir: None,
                scratch: None,
            })
        }),
        Implementation::new("jsonl", ImplKind::Adapter, || async {
            let dir = TempDir::new("jsonl-audit")?;
            let log = JsonLinesAuditLog::open(dir.path().join("audit.jsonl"))
                .await
                .map_err(|e| e.to_string())?;
            Ok(Fixture {
                log: Arc::new(log),
                temp_dir: Some(dir),
                scratch: None,
            })
        }),
        Implementation::new("sqlite", ImplKind::Adapter, || async {
            let dir = ScratchDir::create("sb-audit")?;
            let pool = connect_sqlite(&dir.join("app.db"), 4)
                .await
                .map_err(|e| e.to_string())?;
            migrate_sqlite(&pool).await.map_err(|e| e.to_string())?;
            Ok(Fixture {
                log: Arc::new(SqliteAuditLog::new(pool)),
                temp_dir: None,
                scratch: Some(Arc::new(dir)),
            })
        }),
        Implementation::new("postgres", ImplKind::Adapter, || async {
            let db = ScratchPostgres::create().await?;
            let pool = db.pool(4).await?;
            migrate_postgres(&pool).await.map_err(|e| e.to_string())?;
            Ok(Fixture {
                log: Arc::new(PgAuditLog::new(pool)),
                temp_dir: None,
                scratch: Some(Arc::new(db)),
            })
        })
        .gated(postgres_gate),
    ]
}

/// The fault catalog of `AuditLog`.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "append",
        outcome: "nothing is written; the server logs the lost entry, and the audited action's own outcome (a denial stays a denial) is unchanged",
    },
    CatalogEntry { fault: Fault::Timeout, op: "append", outcome: "the caller is not held up; the lost entry is logged and the audited action's outcome is unchanged" },
    CatalogEntry { fault: Fault::Unavailable, op: "list", outcome: "the audit listing answers 503 and nothing is changed" },
    CatalogEntry { fault: Fault::Corrupt, op: "list", outcome: "the audit listing fails with an internal error rather than returning damaged entries" },
];

#[async_trait]
impl AuditLog for Faulty<dyn AuditLog> {
    async fn append(&self, entry: &AuditEntry) -> Result<(), AuditLogError> {
        self.call("append", || self.inner.append(entry)).await
    }
    async fn list(
        &self,
        tenant: &TenantContext,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditLogError> {
        self.call("list", || self.inner.list(tenant, limit)).await
    }
}

/// The suite of `AuditLog`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::AuditLog, cases(), implementations(), CATALOG)
}

/// Runs every contract case against an implementation: the adapter author's entry point.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    Report::run(harness::trials(
        PortId::AuditLog,
        &Implementation::new(name, ImplKind::Adapter, make),
        &cases(),
    ))
}

/// None here: the log's faults are exercised through the session lifecycle, by the disruption suite.
pub fn disruptions() -> Vec<DisruptionCase> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log that lists oldest first.
    struct OldestFirst(InMemoryAuditLog);

    #[async_trait]
    impl AuditLog for OldestFirst {
        async fn append(&self, entry: &AuditEntry) -> Result<(), AuditLogError> {
            self.0.append(entry).await
        }
        async fn list(
            &self,
            tenant: &TenantContext,
            limit: usize,
        ) -> Result<Vec<AuditEntry>, AuditLogError> {
            let mut v = self.0.list(tenant, usize::MAX).await?;
            v.reverse();
            v.truncate(limit);
            Ok(v)
        }
    }

    #[test]
    fn check_reports_a_log_listing_oldest_first() {
        let report = check("oldest_first", || async {
            Ok(Fixture {
                log: Arc::new(OldestFirst(InMemoryAuditLog::new())),
                temp_dir: None,
                scratch: None,
            })
        });
        let failed: Vec<&str> = report.failures().iter().map(|(n, _)| *n).collect();
        assert!(
            failed.contains(&"audit_log::oldest_first::append_then_list"),
            "{failed:?}"
        );
    }

    #[test]
    fn jsonl_fixtures_leave_nothing_behind() {
        let dir = TempDir::new("jsonl-audit-cleanup").unwrap();
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("audit.jsonl"), b"{}\n").unwrap();
        assert!(path.exists());
        drop(dir);
        assert!(!path.exists());
    }
}
