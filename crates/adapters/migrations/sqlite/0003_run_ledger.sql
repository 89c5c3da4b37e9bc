-- 0003_run_ledger (sqlite): the run ledger, one row per finished run and one per event.
--
-- Times are milliseconds since the Unix epoch, exactly as the domain's Timestamp holds them. Text
-- compares byte-wise (SQLite's default BINARY collation), as on Postgres with COLLATE "C".

CREATE TABLE agent_runs (
    org_id        TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    api_key_id    TEXT,
    model         TEXT NOT NULL,
    provider      TEXT NOT NULL,
    status        TEXT NOT NULL,
    queued_at     INTEGER NOT NULL,
    started_at    INTEGER,
    ended_at      INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL CHECK (input_tokens >= 0),
    output_tokens INTEGER NOT NULL CHECK (output_tokens >= 0),
    cost_micros   INTEGER NOT NULL CHECK (cost_micros >= 0),
    error         TEXT,
    event_count   INTEGER NOT NULL CHECK (event_count >= 0),
    PRIMARY KEY (org_id, run_id)
) WITHOUT ROWID;

-- `list` filters by org plus one of these, newest first by (ended_at, run_id).
CREATE INDEX agent_runs_by_ended   ON agent_runs (org_id, ended_at DESC, run_id DESC);
CREATE INDEX agent_runs_by_session ON agent_runs (org_id, session_id, ended_at DESC, run_id DESC);
CREATE INDEX agent_runs_by_api_key ON agent_runs (org_id, api_key_id, ended_at DESC, run_id DESC)
    WHERE api_key_id IS NOT NULL;

-- `json` is the whole event envelope as the wire carries it; `type`, `at` and `critical` repeat
-- its fields for queries that do not parse it.
CREATE TABLE agent_run_events (
    org_id   TEXT NOT NULL,
    run_id   TEXT NOT NULL,
    seq      INTEGER NOT NULL CHECK (seq >= 0),
    type     TEXT NOT NULL,
    at       INTEGER NOT NULL,
    critical INTEGER NOT NULL CHECK (critical IN (0, 1)),
    json     TEXT NOT NULL,
    PRIMARY KEY (org_id, run_id, seq),
    FOREIGN KEY (org_id, run_id) REFERENCES agent_runs (org_id, run_id) ON DELETE CASCADE
) WITHOUT ROWID;
