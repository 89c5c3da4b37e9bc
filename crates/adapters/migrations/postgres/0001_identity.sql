-- 0001_identity schema (postgres): filled in by its adapter.
SELECT 1;
