-- 0004_audit schema (sqlite): filled in by its adapter.
SELECT 1;
