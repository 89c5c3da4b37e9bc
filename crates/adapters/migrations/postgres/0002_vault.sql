-- 0002_vault schema (postgres): filled in by its adapter.
SELECT 1;
