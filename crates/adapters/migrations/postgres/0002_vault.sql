-- 0002_vault schema (postgres): the tenants' sealed BYOK provider keys (PgSecretVault).
-- `blob` is nonce (12 bytes) || AES-256-GCM ciphertext and tag (16 bytes), sealed under the data
-- key HKDF-SHA256(master key `key_version`, org id) with org, provider and key version in the AAD:
-- a blob copied into another org's or provider's row does not open. `updated_at` is milliseconds
-- since the epoch. No clear key is ever stored.
CREATE TABLE provider_credentials (
    org_id      TEXT   NOT NULL,
    provider    TEXT   NOT NULL,
    key_version BIGINT NOT NULL CHECK (key_version > 0),
    blob        BYTEA  NOT NULL CHECK (octet_length(blob) >= 28),
    last4       TEXT   NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (org_id, provider)
);
