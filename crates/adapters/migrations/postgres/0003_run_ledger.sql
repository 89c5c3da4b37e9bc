-- 0003_run_ledger (postgres): the run ledger, one row per finished run and one per event.
--
-- Times are milliseconds since the Unix epoch (BIGINT), exactly as the domain's Timestamp holds
-- them. Ids compare byte-wise (COLLATE "C") so that "newest first, then run id descending" orders
-- the same on every server locale and on SQLite. JSON is stored as `json` (verbatim text, validated)
-- rather than `jsonb`, which refuses the \u0000 escape an agent's output may contain.

CREATE TABLE agent_runs (
    org_id        TEXT COLLATE "C" NOT NULL,
    run_id        TEXT COLLATE "C" NOT NULL,
    session_id    TEXT COLLATE "C" NOT NULL,
    user_id       TEXT COLLATE "C" NOT NULL,
    api_key_id    TEXT COLLATE "C",
    model         TEXT NOT NULL,
    provider      TEXT NOT NULL,
    status        TEXT NOT NULL,
    queued_at     BIGINT NOT NULL,
    started_at    BIGINT,
    ended_at      BIGINT NOT NULL,
    input_tokens  BIGINT NOT NULL CHECK (input_tokens >= 0),
    output_tokens BIGINT NOT NULL CHECK (output_tokens >= 0),
    cost_micros   BIGINT NOT NULL CHECK (cost_micros >= 0),
    error         JSON,
    event_count   BIGINT NOT NULL CHECK (event_count >= 0),
    PRIMARY KEY (org_id, run_id)
);

-- `list` filters by org plus one of these, newest first by (ended_at, run_id).
CREATE INDEX agent_runs_by_ended   ON agent_runs (org_id, ended_at DESC, run_id DESC);
CREATE INDEX agent_runs_by_session ON agent_runs (org_id, session_id, ended_at DESC, run_id DESC);
CREATE INDEX agent_runs_by_api_key ON agent_runs (org_id, api_key_id, ended_at DESC, run_id DESC)
    WHERE api_key_id IS NOT NULL;

-- `json` is the whole event envelope as the wire carries it; `type`, `at` and `critical` repeat
-- its fields for queries that do not parse it.
CREATE TABLE agent_run_events (
    org_id   TEXT COLLATE "C" NOT NULL,
    run_id   TEXT COLLATE "C" NOT NULL,
    seq      BIGINT NOT NULL CHECK (seq >= 0),
    type     TEXT NOT NULL,
    at       BIGINT NOT NULL,
    critical BOOLEAN NOT NULL,
    json     JSON NOT NULL,
    PRIMARY KEY (org_id, run_id, seq),
    FOREIGN KEY (org_id, run_id) REFERENCES agent_runs (org_id, run_id) ON DELETE CASCADE
);
