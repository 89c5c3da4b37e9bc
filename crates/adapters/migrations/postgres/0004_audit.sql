-- 0004_audit schema (postgres): filled in by its adapter.
SELECT 1;
