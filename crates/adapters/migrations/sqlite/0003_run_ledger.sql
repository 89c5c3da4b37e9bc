-- 0003_run_ledger schema (sqlite): filled in by its adapter.
SELECT 1;
