//! `SqliteSecretVault` and `PgSecretVault`: the tenants' BYOK provider keys, sealed with
//! AES-256-GCM and stored in the `provider_credentials` table (migration 0002_vault).
//!
//! Sealing: the data key of an org is HKDF-SHA256 over the master key of a version, with the org id
//! and the version in the HKDF info; each seal draws a fresh random 96-bit nonce from the operating
//! system; the AAD binds org id, provider and key version. The stored blob is
//! `nonce (12 bytes) || ciphertext || tag (16 bytes)`, beside its `key_version`, `last4` and
//! `updated_at`. A blob moved to another org's or provider's row, a flipped byte, a changed
//! `key_version` or a different master key all fail the tag: `open` answers `Corrupt` and never
//! returns bytes that did not authenticate.
//!
//! Rotation: a row sealed under an older master-key version than the current one still opens (with
//! the old key, if it is configured) and is re-sealed under the current version in the same call,
//! by a compare-and-swap `UPDATE` that cannot overwrite a concurrent `put`. A failed write-back is
//! logged and the open still succeeds; the row is re-sealed at a later open.
//!
//! Every write is one statement (an upsert, a delete or the re-seal), so nothing is half-written.
//! Every query filters by the tenant's org. Neither secrets nor keys are logged.

use super::vault_keys::{MasterKeys, KEY_LEN};
use super::{to_port, Db};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use async_trait::async_trait;
use hkdf::Hkdf;
use sha2::Sha256;
use sqlx::Row;
use std::path::Path;
use std::sync::Arc;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{OrgId, Timestamp};
use switchboard_ports::identity::{
    valid_provider, CredentialMeta, SealedSecret, SecretVault, SecretVaultError,
};
use switchboard_ports::{Clock, SecretString};

/// Length of the random AES-GCM nonce at the head of a blob.
pub const NONCE_LEN: usize = 12;
/// Length of the AES-GCM tag at the tail of a blob.
pub const TAG_LEN: usize = 16;
/// The shortest blob that can be a sealed secret.
pub const MIN_BLOB_LEN: usize = NONCE_LEN + TAG_LEN;

/// HKDF salt: names the purpose, so the master key derives nothing else's keys.
const HKDF_SALT: &[u8] = b"switchboard/secret-vault/v1";

/// Appends a length-prefixed field, so no two field lists encode to the same bytes.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The AES-256-GCM cipher under the data key of `org` at `version`.
fn data_cipher(master: &[u8; KEY_LEN], org: &OrgId, version: u32) -> Aes256Gcm {
    let mut info = Vec::new();
    field(&mut info, b"data key");
    field(&mut info, org.as_str().as_bytes());
    field(&mut info, &version.to_be_bytes());
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(HKDF_SALT), master)
        .expand(&info, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let cipher = Aes256Gcm::new(&okm.into());
    okm.fill(0);
    cipher
}

/// The associated data a blob is bound to.
fn aad(org: &OrgId, provider: &str, version: u32) -> Vec<u8> {
    let mut out = Vec::new();
    field(&mut out, b"switchboard provider credential");
    field(&mut out, org.as_str().as_bytes());
    field(&mut out, provider.as_bytes());
    field(&mut out, &version.to_be_bytes());
    out
}

/// Seals `plaintext` for `org` and `provider` under the current master key: `(version, blob)`.
fn seal(
    keys: &MasterKeys,
    org: &OrgId,
    provider: &str,
    plaintext: &[u8],
) -> Result<(u32, Vec<u8>), SecretVaultError> {
    let version = keys.current_version();
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| {
        SecretVaultError::Unavailable(format!("the operating system's random source failed: {e}"))
    })?;
    let cipher = data_cipher(keys.current_key(), org, version);
    let aad = aad(org, provider, version);
    let sealed = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| SecretVaultError::Invalid("the key is too long to seal".to_string()))?;
    let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&sealed);
    Ok((version, blob))
}

/// Opens a blob stored for `org` and `provider` at `version`; anything that does not authenticate
/// is `Corrupt`.
fn unseal(
    keys: &MasterKeys,
    org: &OrgId,
    provider: &str,
    version: u32,
    blob: &[u8],
) -> Result<SecretString, SecretVaultError> {
    let corrupt = |why: &str| {
        SecretVaultError::Corrupt(format!(
            "the sealed key for provider {provider} does not open: {why}"
        ))
    };
    let Some(master) = keys.key(version) else {
        return Err(corrupt(&format!(
            "it is sealed under master key version {version}, which is not configured"
        )));
    };
    if blob.len() < MIN_BLOB_LEN {
        return Err(corrupt("the blob is truncated"));
    }
    let (nonce, sealed) = blob.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    let aad = aad(org, provider, version);
    let plaintext = data_cipher(master, org, version)
        .decrypt(&nonce.into(), Payload { msg: sealed, aad: &aad })
        .map_err(|_| corrupt("authentication failed (another org's or provider's blob, a different master key, or damaged bytes)"))?;
    String::from_utf8(plaintext)
        .map(SecretString::new)
        .map_err(|_| corrupt("the plaintext is not UTF-8"))
}

fn check_provider(provider: &str) -> Result<(), SecretVaultError> {
    if valid_provider(provider) {
        Ok(())
    } else {
        Err(SecretVaultError::Invalid(
            "a provider name is 1-64 characters of [a-z0-9_.-]".to_string(),
        ))
    }
}

fn not_found(provider: &str) -> SecretVaultError {
    SecretVaultError::NotFound(format!("no credential for provider {provider}"))
}

fn stored_version(v: i64, provider: &str) -> Result<u32, SecretVaultError> {
    u32::try_from(v).ok().filter(|v| *v > 0).ok_or_else(|| {
        SecretVaultError::Corrupt(format!(
            "the stored key version {v} of provider {provider} is out of range"
        ))
    })
}

fn stored_time(ms: i64, provider: &str) -> Result<Timestamp, SecretVaultError> {
    u64::try_from(ms).map(Timestamp::from_millis).map_err(|_| {
        SecretVaultError::Corrupt(format!(
            "the stored update time of provider {provider} is negative"
        ))
    })
}

fn millis(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

/// Runs the same code on whichever pool `db` holds (the SQL is written to suit both engines:
/// `$n` placeholders, `ON CONFLICT … DO UPDATE`, `BIGINT`/`INTEGER`, `BYTEA`/`BLOB`).
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

const UPSERT: &str = "INSERT INTO provider_credentials (org_id, provider, key_version, blob, last4, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (org_id, provider) DO UPDATE SET key_version = excluded.key_version, blob = excluded.blob, \
     last4 = excluded.last4, updated_at = excluded.updated_at";

const SELECT_ONE: &str = "SELECT provider, key_version, blob, last4, updated_at FROM provider_credentials WHERE org_id = $1 AND provider = $2";

const SELECT_META: &str = "SELECT provider, last4, updated_at FROM provider_credentials WHERE org_id = $1 ORDER BY provider";

const DELETE: &str = "DELETE FROM provider_credentials WHERE org_id = $1 AND provider = $2";

/// Compare-and-swap re-seal: only the exact row that was opened is replaced.
const RESEAL: &str = "UPDATE provider_credentials SET key_version = $1, blob = $2 \
     WHERE org_id = $3 AND provider = $4 AND key_version = $5 AND blob = $6";

/// The engine-independent vault over a [`Db`].
struct Vault {
    db: Db,
    keys: Arc<MasterKeys>,
    clock: Arc<dyn Clock>,
}

impl Vault {
    async fn write(&self, org: &OrgId, sealed: &SealedSecret) -> Result<(), SecretVaultError> {
        let (org, version, at) = (
            org.as_str(),
            i64::from(sealed.key_version),
            millis(sealed.updated_at),
        );
        on_pool!(&self.db, pool => sqlx::query(UPSERT)
            .bind(org)
            .bind(sealed.provider.as_str())
            .bind(version)
            .bind(sealed.blob.as_slice())
            .bind(sealed.last4.as_str())
            .bind(at)
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(|e| to_port("storing a sealed key", e))
    }

    async fn read(&self, org: &OrgId, provider: &str) -> Result<SealedSecret, SecretVaultError> {
        let row: Option<(String, i64, Vec<u8>, String, i64)> = on_pool!(&self.db, pool => {
            match sqlx::query(SELECT_ONE).bind(org.as_str()).bind(provider).fetch_optional(pool).await {
                Ok(Some(row)) => (|| Ok(Some((
                    row.try_get("provider")?,
                    row.try_get("key_version")?,
                    row.try_get("blob")?,
                    row.try_get("last4")?,
                    row.try_get("updated_at")?,
                ))))(),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| to_port::<SecretVaultError>("reading a sealed key", e))?;
        let (provider, version, blob, last4, at) = row.ok_or_else(|| not_found(provider))?;
        Ok(SealedSecret {
            key_version: stored_version(version, &provider)?,
            updated_at: stored_time(at, &provider)?,
            provider,
            blob,
            last4,
        })
    }

    async fn put(
        &self,
        tenant: &TenantContext,
        provider: &str,
        secret: &SecretString,
    ) -> Result<CredentialMeta, SecretVaultError> {
        check_provider(provider)?;
        if secret.expose().is_empty() {
            return Err(SecretVaultError::Invalid("the key is empty".to_string()));
        }
        let (key_version, blob) = seal(
            &self.keys,
            tenant.org(),
            provider,
            secret.expose().as_bytes(),
        )?;
        let sealed = SealedSecret {
            provider: provider.to_string(),
            key_version,
            last4: secret.last4(),
            blob,
            updated_at: self.clock.now(),
        };
        self.write(tenant.org(), &sealed).await?;
        Ok(CredentialMeta {
            provider: sealed.provider,
            last4: sealed.last4,
            updated_at: sealed.updated_at,
        })
    }

    async fn open(
        &self,
        tenant: &TenantContext,
        provider: &str,
    ) -> Result<SecretString, SecretVaultError> {
        check_provider(provider)?;
        let org = tenant.org();
        let stored = self.read(org, provider).await?;
        let secret = unseal(&self.keys, org, provider, stored.key_version, &stored.blob)?;
        if stored.key_version < self.keys.current_version() {
            self.reseal(org, &stored, &secret).await;
        }
        Ok(secret)
    }

    /// Re-seals an opened row under the current master key. Failures are logged, never returned:
    /// the caller already has its key, and the next open tries again.
    async fn reseal(&self, org: &OrgId, stored: &SealedSecret, secret: &SecretString) {
        let provider = stored.provider.as_str();
        let (version, blob) = match seal(&self.keys, org, provider, secret.expose().as_bytes()) {
            Ok(sealed) => sealed,
            Err(e) => {
                tracing::warn!(org = org.as_str(), provider, error = %e, "re-sealing a vault key under the current master key failed");
                return;
            }
        };
        let result = on_pool!(&self.db, pool => sqlx::query(RESEAL)
            .bind(i64::from(version))
            .bind(blob.as_slice())
            .bind(org.as_str())
            .bind(provider)
            .bind(i64::from(stored.key_version))
            .bind(stored.blob.as_slice())
            .execute(pool)
            .await
            .map(|r| r.rows_affected()));
        match result {
            Ok(n) => tracing::debug!(
                org = org.as_str(),
                provider,
                from = stored.key_version,
                to = version,
                rows = n,
                "re-sealed a vault key"
            ),
            Err(e) => {
                let e: SecretVaultError = to_port("re-sealing a vault key", e);
                tracing::warn!(org = org.as_str(), provider, error = %e, "re-sealing a vault key under the current master key failed; it stays under its old version");
            }
        }
    }

    async fn list(&self, tenant: &TenantContext) -> Result<Vec<CredentialMeta>, SecretVaultError> {
        let rows: Vec<(String, String, i64)> = on_pool!(&self.db, pool => {
            match sqlx::query(SELECT_META).bind(tenant.org().as_str()).fetch_all(pool).await {
                Ok(rows) => rows
                    .iter()
                    .map(|row| Ok((row.try_get("provider")?, row.try_get("last4")?, row.try_get("updated_at")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>(),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| to_port::<SecretVaultError>("listing provider credentials", e))?;
        rows.into_iter()
            .map(|(provider, last4, at)| {
                Ok(CredentialMeta {
                    updated_at: stored_time(at, &provider)?,
                    provider,
                    last4,
                })
            })
            .collect()
    }

    async fn delete(&self, tenant: &TenantContext, provider: &str) -> Result<(), SecretVaultError> {
        check_provider(provider)?;
        let deleted = on_pool!(&self.db, pool => sqlx::query(DELETE)
            .bind(tenant.org().as_str())
            .bind(provider)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| to_port::<SecretVaultError>("deleting a sealed key", e))?;
        if deleted == 0 {
            return Err(not_found(provider));
        }
        Ok(())
    }

    async fn export_sealed(
        &self,
        tenant: &TenantContext,
        provider: &str,
    ) -> Result<SealedSecret, SecretVaultError> {
        check_provider(provider)?;
        self.read(tenant.org(), provider).await
    }

    /// Stores a sealed blob as-is under the importing tenant (a backup restore). The blob is not
    /// opened here: one sealed for another org is accepted and fails `Corrupt` at `open`.
    async fn import_sealed(
        &self,
        tenant: &TenantContext,
        sealed: &SealedSecret,
    ) -> Result<(), SecretVaultError> {
        check_provider(&sealed.provider)?;
        if !self.keys.contains(sealed.key_version) {
            return Err(SecretVaultError::Invalid(format!(
                "unknown key version {} (this vault holds master key versions {:?})",
                sealed.key_version,
                self.keys.versions()
            )));
        }
        if sealed.blob.len() < MIN_BLOB_LEN {
            return Err(SecretVaultError::Invalid(
                "sealed blob too short".to_string(),
            ));
        }
        self.write(tenant.org(), sealed).await
    }
}

macro_rules! secret_vault_impl {
    ($name:ident) => {
        #[async_trait]
        impl SecretVault for $name {
            async fn put(
                &self,
                tenant: &TenantContext,
                provider: &str,
                secret: &SecretString,
            ) -> Result<CredentialMeta, SecretVaultError> {
                self.0.put(tenant, provider, secret).await
            }
            async fn open(
                &self,
                tenant: &TenantContext,
                provider: &str,
            ) -> Result<SecretString, SecretVaultError> {
                self.0.open(tenant, provider).await
            }
            async fn list(
                &self,
                tenant: &TenantContext,
            ) -> Result<Vec<CredentialMeta>, SecretVaultError> {
                self.0.list(tenant).await
            }
            async fn delete(
                &self,
                tenant: &TenantContext,
                provider: &str,
            ) -> Result<(), SecretVaultError> {
                self.0.delete(tenant, provider).await
            }
            async fn export_sealed(
                &self,
                tenant: &TenantContext,
                provider: &str,
            ) -> Result<SealedSecret, SecretVaultError> {
                self.0.export_sealed(tenant, provider).await
            }
            async fn import_sealed(
                &self,
                tenant: &TenantContext,
                sealed: &SealedSecret,
            ) -> Result<(), SecretVaultError> {
                self.0.import_sealed(tenant, sealed).await
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("keys", &*self.0.keys)
                    .finish_non_exhaustive()
            }
        }
    };
}

/// The secret vault on a SQLite database (the embedded default).
pub struct SqliteSecretVault(Vault);

impl SqliteSecretVault {
    /// A vault on a migrated SQLite pool.
    pub fn new(pool: sqlx::SqlitePool, keys: Arc<MasterKeys>, clock: Arc<dyn Clock>) -> Self {
        SqliteSecretVault(Vault {
            db: Db::Sqlite(pool),
            keys,
            clock,
        })
    }

    /// Opens (creating if missing) the SQLite file at `path`; the schema must have been migrated.
    pub async fn connect(
        path: &Path,
        keys: Arc<MasterKeys>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SecretVaultError> {
        let pool = super::connect_sqlite(path, 4)
            .await
            .map_err(|e| to_port::<SecretVaultError>("opening the vault database", e))?;
        Ok(Self::new(pool, keys, clock))
    }
}

/// The secret vault on Postgres.
pub struct PgSecretVault(Vault);

impl PgSecretVault {
    /// A vault on a migrated Postgres pool.
    pub fn new(pool: sqlx::PgPool, keys: Arc<MasterKeys>, clock: Arc<dyn Clock>) -> Self {
        PgSecretVault(Vault {
            db: Db::Postgres(pool),
            keys,
            clock,
        })
    }

    /// Connects to Postgres at `url`; an unreachable server is `Unavailable` within the pool's
    /// acquire timeout. The schema must have been migrated.
    pub async fn connect(
        url: &str,
        keys: Arc<MasterKeys>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SecretVaultError> {
        let pool = super::connect_postgres(url, 8)
            .await
            .map_err(|e| to_port::<SecretVaultError>("connecting to the vault database", e))?;
        Ok(Self::new(pool, keys, clock))
    }
}

secret_vault_impl!(SqliteSecretVault);
secret_vault_impl!(PgSecretVault);

#[cfg(test)]
mod tests {
    use super::*;

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).unwrap()
    }

    #[test]
    fn seal_binds_org_provider_version_and_key() {
        let keys = MasterKeys::new(1, [7; 32]).unwrap();
        let (version, blob) = seal(&keys, &org("o1"), "openai", b"sk-secret-value").unwrap();
        assert_eq!(version, 1);
        assert_eq!(blob.len(), NONCE_LEN + b"sk-secret-value".len() + TAG_LEN);
        assert_eq!(
            unseal(&keys, &org("o1"), "openai", 1, &blob)
                .unwrap()
                .expose(),
            "sk-secret-value"
        );

        let corrupt = |r: Result<SecretString, SecretVaultError>| {
            matches!(r, Err(SecretVaultError::Corrupt(_)))
        };
        assert!(
            corrupt(unseal(&keys, &org("o2"), "openai", 1, &blob)),
            "another org"
        );
        assert!(
            corrupt(unseal(&keys, &org("o1"), "anthropic", 1, &blob)),
            "another provider"
        );
        assert!(
            corrupt(unseal(&keys, &org("o1"), "openai", 2, &blob)),
            "an unknown version"
        );
        let other = MasterKeys::new(1, [8; 32]).unwrap();
        assert!(
            corrupt(unseal(&other, &org("o1"), "openai", 1, &blob)),
            "another master key"
        );
        let both = MasterKeys::new(2, [7; 32])
            .unwrap()
            .with_previous(1, [7; 32])
            .unwrap();
        assert!(
            corrupt(unseal(&both, &org("o1"), "openai", 2, &blob)),
            "the version is in the AAD and the key"
        );
        for i in 0..blob.len() {
            let mut damaged = blob.clone();
            damaged[i] ^= 0x80;
            assert!(
                corrupt(unseal(&keys, &org("o1"), "openai", 1, &damaged)),
                "flipped byte {i}"
            );
        }
        assert!(corrupt(unseal(
            &keys,
            &org("o1"),
            "openai",
            1,
            &blob[..MIN_BLOB_LEN - 1]
        )));
    }

    #[test]
    fn every_seal_draws_a_fresh_nonce() {
        let keys = MasterKeys::new(1, [7; 32]).unwrap();
        let (_, a) = seal(&keys, &org("o1"), "openai", b"same").unwrap();
        let (_, b) = seal(&keys, &org("o1"), "openai", b"same").unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn data_keys_differ_per_org_and_version() {
        // Same nonce and plaintext, different org or version: different ciphertext, so the data
        // keys differ (the AAD alone would only change the tag).
        let nonce = [1u8; NONCE_LEN];
        let enc = |o: &str, v: u32| {
            let aad = aad(&org(o), "p", v);
            data_cipher(&[7; 32], &org(o), v)
                .encrypt(
                    &nonce.into(),
                    Payload {
                        msg: b"plaintext-bytes",
                        aad: &aad,
                    },
                )
                .unwrap()
        };
        let base = enc("o1", 1);
        assert_ne!(base[..15], enc("o2", 1)[..15]);
        assert_ne!(base[..15], enc("o1", 2)[..15]);
    }
}
