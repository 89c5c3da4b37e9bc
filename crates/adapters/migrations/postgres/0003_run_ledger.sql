-- 0003_run_ledger schema (postgres): filled in by its adapter.
SELECT 1;
