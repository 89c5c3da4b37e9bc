-- 0001_identity (postgres): orgs, users, memberships, API keys and login sessions.
--
-- Times are milliseconds since the Unix epoch (BIGINT), exactly as the domain's Timestamp holds
-- them. Ids compare byte-wise (COLLATE "C") so listings order the same on every server locale and
-- on SQLite. Secrets never reach these tables: API keys and login tokens are stored as their
-- SHA-256 (32 bytes), passwords as argon2id PHC strings.

CREATE TABLE orgs (
    id         TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- `email_key` is the email lower-cased by the adapter (Unicode-aware, identically on both engines):
-- emails are unique case-insensitively, and looked up through it.
CREATE TABLE users (
    id            TEXT COLLATE "C" PRIMARY KEY,
    email         TEXT NOT NULL,
    email_key     TEXT COLLATE "C" NOT NULL UNIQUE,
    password_hash TEXT,
    created_at    BIGINT NOT NULL
);

CREATE TABLE memberships (
    org_id  TEXT COLLATE "C" NOT NULL REFERENCES orgs (id),
    user_id TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    role    TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_by_user ON memberships (user_id);

-- `scopes` is a JSON array of scope names, in the order the key was created with.
-- `revoked_at` is set once: revoking again keeps the first time.
CREATE TABLE api_keys (
    id         TEXT COLLATE "C" PRIMARY KEY,
    org_id     TEXT COLLATE "C" NOT NULL REFERENCES orgs (id),
    user_id    TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    name       TEXT NOT NULL,
    prefix     TEXT NOT NULL,
    token_hash BYTEA NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    scopes     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_by_org ON api_keys (org_id, created_at, id);

CREATE TABLE login_sessions (
    id         TEXT COLLATE "C" PRIMARY KEY,
    org_id     TEXT COLLATE "C" NOT NULL REFERENCES orgs (id),
    user_id    TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    token_hash BYTEA NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Every bearer token hash in use, by API keys and login sessions alike: a hash is unique across
-- both kinds of credential. Written in the same transaction as its key or login; deleting the
-- credential frees its hash.
CREATE TABLE token_hashes (
    token_hash BYTEA PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    api_key_id TEXT COLLATE "C" UNIQUE REFERENCES api_keys (id) ON DELETE CASCADE,
    login_id   TEXT COLLATE "C" UNIQUE REFERENCES login_sessions (id) ON DELETE CASCADE,
    CHECK ((api_key_id IS NULL) <> (login_id IS NULL))
);
