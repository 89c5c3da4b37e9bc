-- 0004_audit (sqlite): the audit log, append-only. Times are milliseconds since the Unix epoch.
-- `org_id` is NULL for actions that belong to no tenant (a failed login for an unknown email);
-- such rows are never listed to a tenant.

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    org_id  TEXT,
    actor   TEXT,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    outcome TEXT NOT NULL
);

-- `list`: one org's entries, newest first (later appends first among equal times).
CREATE INDEX audit_log_by_org ON audit_log (org_id, at DESC, id DESC) WHERE org_id IS NOT NULL;

-- Entries are immutable: an UPDATE is refused outright.
CREATE TRIGGER audit_log_immutable BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log entries are immutable');
END;
