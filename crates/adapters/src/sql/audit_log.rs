//! `SqliteAuditLog` and `PgAuditLog`: the audit log in the table `audit_log`, schema
//! `0004_audit.sql`.
//!
//! One `INSERT` per entry (a single row: atomic on its own); the row id, assigned at insert, orders
//! entries appended at the same millisecond, so `list` is newest first by time, later appends first
//! among equal times, as in the fake. Entries are never changed: the adapter issues no `UPDATE` and
//! the schema refuses one with a trigger. Entries without an org are kept but never listed, and
//! `list` filters by the tenant's org.

use super::errors::to_port;
use async_trait::async_trait;
use switchboard_core::audit::{AuditAction, AuditEntry, AuditOutcome};
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{OrgId, Timestamp, UserId};
use switchboard_ports::record::{AuditLog, AuditLogError};

/// An entry as the `audit_log` row holds it.
struct AuditRow {
    at: i64,
    org_id: Option<String>,
    actor: Option<String>,
    action: String,
    target: String,
    outcome: String,
}

fn wire_name<T: serde::Serialize>(value: &T) -> Result<String, AuditLogError> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        other => Err(AuditLogError::Invalid(format!(
            "expected a name, got {other:?}"
        ))),
    }
}

fn from_wire_name<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, AuditLogError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|e| AuditLogError::Corrupt(format!("stored audit {what} {s:?}: {e}")))
}

impl AuditRow {
    fn encode(entry: &AuditEntry) -> Result<AuditRow, AuditLogError> {
        Ok(AuditRow {
            at: i64::try_from(entry.at.as_millis()).map_err(|_| {
                AuditLogError::Invalid(format!(
                    "audit time {} is out of range",
                    entry.at.as_millis()
                ))
            })?,
            org_id: entry.org.as_ref().map(ToString::to_string),
            actor: entry.actor.as_ref().map(ToString::to_string),
            action: wire_name(&entry.action)?,
            target: entry.target.clone(),
            outcome: wire_name(&entry.outcome)?,
        })
    }

    fn read<R>(row: &R) -> Result<AuditRow, sqlx::Error>
    where
        R: sqlx::Row,
        for<'a> &'a str: sqlx::ColumnIndex<R>,
        for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(AuditRow {
            at: row.try_get("at")?,
            org_id: row.try_get("org_id")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            target: row.try_get("target")?,
            outcome: row.try_get("outcome")?,
        })
    }

    fn decode(self) -> Result<AuditEntry, AuditLogError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            AuditLogError::Corrupt(format!("stored audit {what}: {e}"))
        };
        Ok(AuditEntry {
            at: Timestamp::from_millis(u64::try_from(self.at).map_err(|e| corrupt("time", &e))?),
            org: self
                .org_id
                .map(OrgId::parse)
                .transpose()
                .map_err(|e| corrupt("org", &e))?,
            actor: self
                .actor
                .map(UserId::parse)
                .transpose()
                .map_err(|e| corrupt("actor", &e))?,
            action: from_wire_name::<AuditAction>(&self.action, "action")?,
            target: self.target,
            outcome: from_wire_name::<AuditOutcome>(&self.outcome, "outcome")?,
        })
    }
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The audit log in a SQLite database, migrated with [`super::migrate_sqlite`].
pub struct SqliteAuditLog {
    pool: sqlx::SqlitePool,
}

impl SqliteAuditLog {
    pub fn new(pool: sqlx::SqlitePool) -> Self {
        SqliteAuditLog { pool }
    }
}

#[async_trait]
impl AuditLog for SqliteAuditLog {
    async fn append(&self, entry: &AuditEntry) -> Result<(), AuditLogError> {
        let row = AuditRow::encode(entry)?;
        sqlx::query("INSERT INTO audit_log (at, org_id, actor, action, target, outcome) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(row.at)
            .bind(&row.org_id)
            .bind(&row.actor)
            .bind(&row.action)
            .bind(&row.target)
            .bind(&row.outcome)
            .execute(&self.pool)
            .await
            .map_err(|e| to_port::<AuditLogError>("appending to the audit log", e))?;
        Ok(())
    }

    async fn list(
        &self,
        tenant: &TenantContext,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditLogError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let fail = |e| to_port::<AuditLogError>("listing the audit log", e);
        let rows = sqlx::query("SELECT at, org_id, actor, action, target, outcome FROM audit_log WHERE org_id = ? ORDER BY at DESC, id DESC LIMIT ?")
            .bind(tenant.org().as_str())
            .bind(sql_limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?;
        rows.iter()
            .map(|r| AuditRow::read(r).map_err(fail)?.decode())
            .collect()
    }
}

/// The audit log in Postgres, migrated with [`super::migrate_postgres`].
pub struct PgAuditLog {
    pool: sqlx::PgPool,
}

impl PgAuditLog {
    pub fn new(pool: sqlx::PgPool) -> Self {
        PgAuditLog { pool }
    }
}

#[async_trait]
impl AuditLog for PgAuditLog {
    async fn append(&self, entry: &AuditEntry) -> Result<(), AuditLogError> {
        let row = AuditRow::encode(entry)?;
        sqlx::query("INSERT INTO audit_log (at, org_id, actor, action, target, outcome) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(row.at)
            .bind(&row.org_id)
            .bind(&row.actor)
            .bind(&row.action)
            .bind(&row.target)
            .bind(&row.outcome)
            .execute(&self.pool)
            .await
            .map_err(|e| to_port::<AuditLogError>("appending to the audit log", e))?;
        Ok(())
    }

    async fn list(
        &self,
        tenant: &TenantContext,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditLogError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let fail = |e| to_port::<AuditLogError>("listing the audit log", e);
        let rows = sqlx::query("SELECT at, org_id, actor, action, target, outcome FROM audit_log WHERE org_id = $1 ORDER BY at DESC, id DESC LIMIT $2")
            .bind(tenant.org().as_str())
            .bind(sql_limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(fail)?;
        rows.iter()
            .map(|r| AuditRow::read(r).map_err(fail)?.decode())
            .collect()
    }
}
