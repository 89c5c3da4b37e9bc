-- 0001_identity (sqlite): orgs, users, memberships, API keys and login sessions.
--
-- Times are milliseconds since the Unix epoch, exactly as the domain's Timestamp holds them. Text
-- compares byte-wise (SQLite's default BINARY collation), as on Postgres with COLLATE "C". Secrets
-- never reach these tables: API keys and login tokens are stored as their SHA-256 (32 bytes),
-- passwords as argon2id PHC strings.

CREATE TABLE orgs (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- `email_key` is the email lower-cased by the adapter (Unicode-aware, identically on both engines):
-- emails are unique case-insensitively, and looked up through it.
CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL,
    email_key     TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    created_at    INTEGER NOT NULL
);

CREATE TABLE memberships (
    org_id  TEXT NOT NULL REFERENCES orgs (id),
    user_id TEXT NOT NULL REFERENCES users (id),
    role    TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    PRIMARY KEY (org_id, user_id)
) WITHOUT ROWID;
CREATE INDEX memberships_by_user ON memberships (user_id);

-- `scopes` is a JSON array of scope names, in the order the key was created with.
-- `revoked_at` is set once: revoking again keeps the first time.
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY NOT NULL,
    org_id     TEXT NOT NULL REFERENCES orgs (id),
    user_id    TEXT NOT NULL REFERENCES users (id),
    name       TEXT NOT NULL,
    prefix     TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    scopes     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX api_keys_by_org ON api_keys (org_id, created_at, id);

CREATE TABLE login_sessions (
    id         TEXT PRIMARY KEY NOT NULL,
    org_id     TEXT NOT NULL REFERENCES orgs (id),
    user_id    TEXT NOT NULL REFERENCES users (id),
    token_hash BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

-- Every bearer token hash in use, by API keys and login sessions alike: a hash is unique across
-- both kinds of credential. Written in the same transaction as its key or login; deleting the
-- credential frees its hash.
CREATE TABLE token_hashes (
    token_hash BLOB PRIMARY KEY NOT NULL CHECK (length(token_hash) = 32),
    api_key_id TEXT UNIQUE REFERENCES api_keys (id) ON DELETE CASCADE,
    login_id   TEXT UNIQUE REFERENCES login_sessions (id) ON DELETE CASCADE,
    CHECK ((api_key_id IS NULL) <> (login_id IS NULL))
);
