-- 0004_audit (postgres): the audit log, append-only. Times are milliseconds since the Unix epoch.
-- `org_id` is NULL for actions that belong to no tenant (a failed login for an unknown email);
-- such rows are never listed to a tenant.

CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    org_id  TEXT COLLATE "C",
    actor   TEXT COLLATE "C",
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    outcome TEXT NOT NULL
);

-- `list`: one org's entries, newest first (later appends first among equal times).
CREATE INDEX audit_log_by_org ON audit_log (org_id, at DESC, id DESC) WHERE org_id IS NOT NULL;

-- Entries are immutable: an UPDATE is refused outright.
CREATE FUNCTION audit_log_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log entries are immutable' USING ERRCODE = 'check_violation';
END;
$$;
CREATE TRIGGER audit_log_immutable BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_update();
