//! `InMemoryAuditLog`: an append-only list of security-relevant actions kept in memory.

use async_trait::async_trait;
use std::sync::Mutex;
use switchboard_core::audit::AuditEntry;
use switchboard_core::tenancy::TenantContext;
use switchboard_ports::record::{AuditLog, AuditLogError};

/// An audit log in memory: append-only (nothing is ever changed or removed). Entries without an
/// org (e.g. a failed login for an unknown user) are kept but never listed to a tenant.
#[derive(Default)]
pub struct InMemoryAuditLog {
    entries: Mutex<Vec<AuditEntry>>,
}

impl InMemoryAuditLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every entry, of every org, in append order (for tests and the operator).
    pub fn all(&self) -> Vec<AuditEntry> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The tenant's entries, newest first by `at` (later appends first among equal times), at most
/// `limit`. `entries` is in append order.
pub fn newest_first<'a>(
    entries: impl DoubleEndedIterator<Item = &'a AuditEntry>,
    tenant: &TenantContext,
    limit: usize,
) -> Vec<AuditEntry> {
    let mut mine: Vec<&AuditEntry> = entries
        .rev()
        .filter(|e| e.org.as_ref() == Some(tenant.org()))
        .collect();
    // Stable: among equal times, the reversed append order (newest append first) is kept.
    mine.sort_by_key(|e| std::cmp::Reverse(e.at));
    mine.into_iter().take(limit).cloned().collect()
}

#[async_trait]
impl AuditLog for InMemoryAuditLog {
    async fn append(&self, entry: &AuditEntry) -> Result<(), AuditLogError> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry.clone());
        Ok(())
    }

    async fn list(
        &self,
        tenant: &TenantContext,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditLogError> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Ok(newest_first(entries.iter(), tenant, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::audit::{AuditAction, AuditOutcome};
    use switchboard_core::tenancy::Principal;
    use switchboard_core::{OrgId, Timestamp, UserId};

    fn entry(org: &str, ms: u64, target: &str) -> AuditEntry {
        AuditEntry {
            at: Timestamp::from_millis(ms),
            org: Some(OrgId::parse(org).unwrap()),
            actor: None,
            action: AuditAction::Login,
            target: target.to_string(),
            outcome: AuditOutcome::Allowed,
        }
    }

    #[test]
    fn newest_first_by_time_then_by_later_append() {
        let tenant = Principal::from_verified_credential(
            OrgId::parse("o1").unwrap(),
            UserId::parse("u").unwrap(),
            None,
            vec![],
        )
        .tenant();
        let all = [
            entry("o1", 5, "a"),
            entry("o1", 1, "b"),
            entry("o2", 9, "c"),
            entry("o1", 5, "d"),
        ];
        let got = newest_first(all.iter(), &tenant, 10);
        assert_eq!(
            got.iter().map(|e| e.target.as_str()).collect::<Vec<_>>(),
            vec!["d", "a", "b"]
        );
        assert_eq!(newest_first(all.iter(), &tenant, 1).len(), 1);
    }
}
