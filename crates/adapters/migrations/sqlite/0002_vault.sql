-- 0002_vault schema (sqlite): filled in by its adapter.
SELECT 1;
