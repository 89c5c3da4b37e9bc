//! `InMemoryArtifactStore`: run artifacts kept in memory per tenant, with their SHA-256.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{OrgId, SessionId};
use switchboard_ports::sandbox::{valid_artifact_name, ArtifactKey, ArtifactMeta};
use switchboard_ports::{ArtifactStore, ArtifactStoreError};

/// Hex SHA-256 of `bytes`, as [`ArtifactMeta::sha256`] holds it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

struct Blob {
    bytes: Vec<u8>,
    sha256: String,
}

/// An in-memory [`ArtifactStore`]. Artifacts are keyed by (org, key): another tenant's artifacts
/// answer `NotFound`, exactly like absent ones.
#[derive(Default)]
pub struct InMemoryArtifactStore {
    blobs: Mutex<HashMap<(OrgId, ArtifactKey), Blob>>,
}

impl InMemoryArtifactStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many artifacts are stored, across every tenant.
    pub fn len(&self) -> usize {
        self.blobs.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn check_name(key: &ArtifactKey) -> Result<(), ArtifactStoreError> {
    if valid_artifact_name(&key.name) {
        Ok(())
    } else {
        Err(ArtifactStoreError::Invalid(format!(
            "artifact name {:?} must be relative, without `..`, `.` or empty segments",
            key.name
        )))
    }
}

fn not_found(key: &ArtifactKey) -> ArtifactStoreError {
    ArtifactStoreError::NotFound(format!(
        "no artifact {} in session {}",
        key.name, key.session
    ))
}

#[async_trait]
impl ArtifactStore for InMemoryArtifactStore {
    async fn put(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
        bytes: Vec<u8>,
    ) -> Result<ArtifactMeta, ArtifactStoreError> {
        check_name(key)?;
        let sha256 = sha256_hex(&bytes);
        let meta = ArtifactMeta {
            key: key.clone(),
            size: bytes.len() as u64,
            sha256: sha256.clone(),
        };
        self.blobs
            .lock()
            .unwrap()
            .insert((tenant.org().clone(), key.clone()), Blob { bytes, sha256 });
        Ok(meta)
    }

    async fn get(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
    ) -> Result<Vec<u8>, ArtifactStoreError> {
        check_name(key)?;
        let blobs = self.blobs.lock().unwrap();
        let blob = blobs
            .get(&(tenant.org().clone(), key.clone()))
            .ok_or_else(|| not_found(key))?;
        Ok(blob.bytes.clone())
    }

    async fn list(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
    ) -> Result<Vec<ArtifactMeta>, ArtifactStoreError> {
        let blobs = self.blobs.lock().unwrap();
        let mut metas: Vec<ArtifactMeta> = blobs
            .iter()
            .filter(|((org, key), _)| org == tenant.org() && &key.session == session)
            .map(|((_, key), blob)| ArtifactMeta {
                key: key.clone(),
                size: blob.bytes.len() as u64,
                sha256: blob.sha256.clone(),
            })
            .collect();
        metas.sort_by(|a, b| (&a.key.run, &a.key.name).cmp(&(&b.key.run, &b.key.name)));
        Ok(metas)
    }

    async fn delete(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
    ) -> Result<(), ArtifactStoreError> {
        check_name(key)?;
        match self
            .blobs
            .lock()
            .unwrap()
            .remove(&(tenant.org().clone(), key.clone()))
        {
            Some(_) => Ok(()),
            None => Err(not_found(key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::{Principal, RunId, UserId};

    fn tenant(org: &str) -> TenantContext {
        Principal::from_verified_credential(
            OrgId::parse(org).unwrap(),
            UserId::parse("u").unwrap(),
            None,
            vec![],
        )
        .tenant()
    }

    #[test]
    fn round_trip_isolation_and_names() {
        futures::FutureExt::now_or_never(async {
            let store = InMemoryArtifactStore::new();
            let key = ArtifactKey {
                session: SessionId::parse("s1").unwrap(),
                run: Some(RunId::parse("r1").unwrap()),
                name: "logs/a.txt".into(),
            };
            let meta = store
                .put(&tenant("o1"), &key, b"hello world".to_vec())
                .await
                .unwrap();
            assert_eq!(
                meta.sha256,
                "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
            );
            assert_eq!(meta.size, 11);
            assert_eq!(
                store.get(&tenant("o1"), &key).await.unwrap(),
                b"hello world"
            );
            assert!(matches!(
                store.get(&tenant("o2"), &key).await,
                Err(ArtifactStoreError::NotFound(_))
            ));
            assert!(store
                .list(&tenant("o2"), &key.session)
                .await
                .unwrap()
                .is_empty());
            let bad = ArtifactKey {
                name: "a/../b".into(),
                ..key.clone()
            };
            assert!(matches!(
                store.put(&tenant("o1"), &bad, vec![]).await,
                Err(ArtifactStoreError::Invalid(_))
            ));
            store.delete(&tenant("o1"), &key).await.unwrap();
            assert!(store.is_empty());
        })
        .expect("in-memory fakes never wait");
    }
}
