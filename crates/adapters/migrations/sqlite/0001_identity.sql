-- 0001_identity schema (sqlite): filled in by its adapter.
SELECT 1;
