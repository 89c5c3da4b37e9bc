//! `InMemorySecretVault`: BYOK provider keys sealed per tenant in memory, with honest (if
//! deliberately simple) cryptographic binding to org, provider and key version.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use switchboard_core::crypto::constant_time_eq;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::OrgId;
use switchboard_ports::identity::{
    valid_provider, CredentialMeta, SealedSecret, SecretVault, SecretVaultError,
};
use switchboard_ports::{Clock, SecretString};

/// The key version this vault seals under.
pub const KEY_VERSION: u32 = 1;

const NONCE_LEN: usize = 8;
const TAG_LEN: usize = 32;

/// Distinguishes the default secrets of vaults made in one process (deterministic, not random).
static VAULTS_MADE: AtomicU64 = AtomicU64::new(0);

struct State {
    next_nonce: u64,
    entries: BTreeMap<(OrgId, String), SealedSecret>,
}

/// A secret vault in memory.
///
/// Sealing without a crypto dependency, but honestly bound: a blob is
/// `nonce (8 bytes) || plaintext XOR keystream || tag (32 bytes)`, where the keystream is SHA-256 in
/// counter mode over (vault secret, org, provider, key version, nonce) and the tag is HMAC-SHA256
/// under the vault secret over (org, provider, key version, nonce, ciphertext). A blob opened under
/// another org or provider, or altered in any byte, fails its tag and is `Corrupt`; no plaintext is
/// produced. This is a test double, not a cipher to ship: the real vault uses AES-256-GCM.
pub struct InMemorySecretVault {
    secret: [u8; 32],
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl InMemorySecretVault {
    /// A vault with its own secret (distinct from every other vault made in this process).
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let n = VAULTS_MADE.fetch_add(1, Ordering::Relaxed);
        let mut h = Sha256::new();
        h.update(b"switchboard in-memory vault secret");
        h.update(n.to_be_bytes());
        Self::with_secret(clock, h.finalize().into())
    }

    /// A vault sealing under the given secret (two vaults with one secret open each other's blobs).
    pub fn with_secret(clock: Arc<dyn Clock>, secret: [u8; 32]) -> Self {
        InMemorySecretVault {
            secret,
            clock,
            state: Mutex::new(State {
                next_nonce: 1,
                entries: BTreeMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keystream_xor(
        &self,
        org: &OrgId,
        provider: &str,
        version: u32,
        nonce: &[u8],
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        for (block, chunk) in data.chunks(32).enumerate() {
            let mut msg = Vec::new();
            field(&mut msg, b"keystream");
            field(&mut msg, &self.secret);
            field(&mut msg, org.as_str().as_bytes());
            field(&mut msg, provider.as_bytes());
            field(&mut msg, &version.to_be_bytes());
            field(&mut msg, nonce);
            field(&mut msg, &(block as u64).to_be_bytes());
            let pad: [u8; 32] = Sha256::digest(&msg).into();
            out.extend(chunk.iter().zip(pad.iter()).map(|(d, k)| d ^ k));
        }
        out
    }

    fn tag(
        &self,
        org: &OrgId,
        provider: &str,
        version: u32,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> [u8; 32] {
        let mut msg = Vec::new();
        field(&mut msg, b"tag");
        field(&mut msg, org.as_str().as_bytes());
        field(&mut msg, provider.as_bytes());
        field(&mut msg, &version.to_be_bytes());
        field(&mut msg, nonce);
        field(&mut msg, ciphertext);
        hmac_sha256(&self.secret, &msg)
    }

    fn seal(&self, org: &OrgId, provider: &str, nonce: u64, plaintext: &[u8]) -> Vec<u8> {
        let nonce = nonce.to_be_bytes();
        let ciphertext = self.keystream_xor(org, provider, KEY_VERSION, &nonce, plaintext);
        let tag = self.tag(org, provider, KEY_VERSION, &nonce, &ciphertext);
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len() + TAG_LEN);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        blob.extend_from_slice(&tag);
        blob
    }

    fn unseal(&self, org: &OrgId, sealed: &SealedSecret) -> Result<SecretString, SecretVaultError> {
        let corrupt = || {
            SecretVaultError::Corrupt(format!(
                "sealed key for {} does not open under this org",
                sealed.provider
            ))
        };
        if sealed.key_version != KEY_VERSION || sealed.blob.len() < NONCE_LEN + TAG_LEN {
            return Err(corrupt());
        }
        let (nonce, rest) = sealed.blob.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let expected = self.tag(org, &sealed.provider, sealed.key_version, nonce, ciphertext);
        if !constant_time_eq(tag, &expected) {
            return Err(corrupt());
        }
        let plaintext =
            self.keystream_xor(org, &sealed.provider, sealed.key_version, nonce, ciphertext);
        String::from_utf8(plaintext)
            .map(SecretString::new)
            .map_err(|_| corrupt())
    }
}

/// Appends a length-prefixed field, so no two field lists encode to the same bytes.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// HMAC-SHA256 (RFC 2104) with a 32-byte key.
fn hmac_sha256(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let mut inner = Sha256::new();
    inner.update(&ipad);
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(&opad);
    outer.update(inner);
    outer.finalize().into()
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

fn meta(sealed: &SealedSecret) -> CredentialMeta {
    CredentialMeta {
        provider: sealed.provider.clone(),
        last4: sealed.last4.clone(),
        updated_at: sealed.updated_at,
    }
}

#[async_trait]
impl SecretVault for InMemorySecretVault {
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
        let now = self.clock.now();
        let mut st = self.state();
        let nonce = st.next_nonce;
        st.next_nonce += 1;
        let sealed = SealedSecret {
            provider: provider.to_string(),
            key_version: KEY_VERSION,
            last4: secret.last4(),
            blob: self.seal(tenant.org(), provider, nonce, secret.expose().as_bytes()),
            updated_at: now,
        };
        let out = meta(&sealed);
        st.entries
            .insert((tenant.org().clone(), provider.to_string()), sealed);
        Ok(out)
    }

    async fn open(
        &self,
        tenant: &TenantContext,
        provider: &str,
    ) -> Result<SecretString, SecretVaultError> {
        check_provider(provider)?;
        let sealed = self
            .state()
            .entries
            .get(&(tenant.org().clone(), provider.to_string()))
            .cloned()
            .ok_or_else(|| not_found(provider))?;
        self.unseal(tenant.org(), &sealed)
    }

    async fn list(&self, tenant: &TenantContext) -> Result<Vec<CredentialMeta>, SecretVaultError> {
        Ok(self
            .state()
            .entries
            .iter()
            .filter(|((org, _), _)| org == tenant.org())
            .map(|(_, s)| meta(s))
            .collect())
    }

    async fn delete(&self, tenant: &TenantContext, provider: &str) -> Result<(), SecretVaultError> {
        check_provider(provider)?;
        match self
            .state()
            .entries
            .remove(&(tenant.org().clone(), provider.to_string()))
        {
            Some(_) => Ok(()),
            None => Err(not_found(provider)),
        }
    }

    async fn export_sealed(
        &self,
        tenant: &TenantContext,
        provider: &str,
    ) -> Result<SealedSecret, SecretVaultError> {
        check_provider(provider)?;
        self.state()
            .entries
            .get(&(tenant.org().clone(), provider.to_string()))
            .cloned()
            .ok_or_else(|| not_found(provider))
    }

    /// Stores a sealed blob as-is under the importing tenant (a backup restore). The blob is not
    /// opened here: one sealed for another org is accepted and fails `Corrupt` at `open`.
    async fn import_sealed(
        &self,
        tenant: &TenantContext,
        sealed: &SealedSecret,
    ) -> Result<(), SecretVaultError> {
        check_provider(&sealed.provider)?;
        if sealed.key_version != KEY_VERSION {
            return Err(SecretVaultError::Invalid(format!(
                "unknown key version {}",
                sealed.key_version
            )));
        }
        if sealed.blob.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretVaultError::Invalid(
                "sealed blob too short".to_string(),
            ));
        }
        self.state().entries.insert(
            (tenant.org().clone(), sealed.provider.clone()),
            sealed.clone(),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemoryClock;
    use switchboard_core::tenancy::Principal;
    use switchboard_core::UserId;

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::FutureExt::now_or_never(f).expect("in-memory fakes never wait")
    }

    fn tenant(org: &str) -> TenantContext {
        Principal::from_verified_credential(
            OrgId::parse(org).unwrap(),
            UserId::parse("u").unwrap(),
            None,
            vec![],
        )
        .tenant()
    }

    fn clock() -> Arc<dyn Clock> {
        Arc::new(InMemoryClock::new())
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // Key "Jefe", zero-padded: HMAC pads short keys with zeros to the block size anyway.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn blobs_hide_the_key_and_bind_to_the_vault_secret() {
        let secret = "sk-live-0123456789abcdef0123456789abcdef";
        let a = InMemorySecretVault::with_secret(clock(), [7; 32]);
        let t = tenant("o1");
        block_on(a.put(&t, "openai", &SecretString::new(secret))).unwrap();
        let sealed = block_on(a.export_sealed(&t, "openai")).unwrap();
        assert!(!sealed
            .blob
            .windows(8)
            .any(|w| secret.as_bytes().windows(8).any(|s| s == w)));
        assert_eq!(sealed.blob.len(), NONCE_LEN + secret.len() + TAG_LEN);

        // The same secret opens it elsewhere (a restore); another vault's secret does not.
        let same = InMemorySecretVault::with_secret(clock(), [7; 32]);
        block_on(same.import_sealed(&t, &sealed)).unwrap();
        assert_eq!(block_on(same.open(&t, "openai")).unwrap().expose(), secret);
        let other = InMemorySecretVault::new(clock());
        block_on(other.import_sealed(&t, &sealed)).unwrap();
        assert!(matches!(
            block_on(other.open(&t, "openai")),
            Err(SecretVaultError::Corrupt(_))
        ));
    }

    #[test]
    fn renamed_provider_and_fresh_nonces() {
        let v = InMemorySecretVault::new(clock());
        let t = tenant("o1");
        block_on(v.put(&t, "openai", &SecretString::new("same-key-1234"))).unwrap();
        let first = block_on(v.export_sealed(&t, "openai")).unwrap();
        block_on(v.put(&t, "openai", &SecretString::new("same-key-1234"))).unwrap();
        let second = block_on(v.export_sealed(&t, "openai")).unwrap();
        assert_ne!(first.blob, second.blob, "each seal uses a fresh nonce");

        let renamed = SealedSecret {
            provider: "anthropic".to_string(),
            ..second
        };
        block_on(v.import_sealed(&t, &renamed)).unwrap();
        assert!(matches!(
            block_on(v.open(&t, "anthropic")),
            Err(SecretVaultError::Corrupt(_))
        ));
        let bad_version = SealedSecret {
            key_version: 9,
            ..first
        };
        assert!(matches!(
            block_on(v.import_sealed(&t, &bad_version)),
            Err(SecretVaultError::Invalid(_))
        ));
        assert!(matches!(
            block_on(v.put(&t, "openai", &SecretString::new(""))),
            Err(SecretVaultError::Invalid(_))
        ));
    }
}
