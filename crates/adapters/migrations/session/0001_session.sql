-- One session actor's private database (one file per session, WAL): its event log, the machine
-- snapshot and the run-ledger outbox. Applied by SqliteSessionStore when it opens the file; the
-- schema version lives in PRAGMA user_version (set by the store in the same transaction).

-- The event log: seqs 1, 2, 3… without gaps (the store checks the next seq in each commit's
-- transaction). `json` is the whole EventEnvelope as the protocol serializes it and is what is
-- read back; the other columns are there to query and inspect the log. The in-flight run's
-- events are read as a range of the primary key (from the run's first seq to the end of the log),
-- so no index on run_id is needed.
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY,
    run_id   TEXT,
    type     TEXT    NOT NULL,
    at       INTEGER NOT NULL, -- milliseconds since the Unix epoch
    critical INTEGER NOT NULL CHECK (critical IN (0, 1)),
    json     TEXT    NOT NULL
);

-- The machine snapshot (opaque JSON owned by the session machine): at most one row. A session
-- exists for the store once this row exists.
CREATE TABLE IF NOT EXISTS snapshot (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    json TEXT NOT NULL
);

-- Run records not yet acknowledged by the run ledger, one per run. Rows are read in rowid order,
-- which is the order runs were first put (an upsert keeps the row's rowid).
CREATE TABLE IF NOT EXISTS outbox (
    run_id TEXT PRIMARY KEY,
    json   TEXT NOT NULL
);
