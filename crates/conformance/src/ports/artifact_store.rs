//! Contract cases, fault catalog, `Faulty` wrapper and disruption cases for `ArtifactStore`.

use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, FaultPlan, Faulty};
use crate::harness::{self, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchboard_adapters::fs_artifacts::FsArtifactStore;
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{OrgId, Principal, RunId, SessionId, UserId};
use switchboard_fakes::artifact_store::InMemoryArtifactStore;
use switchboard_ports::error::ErrorClass;
use switchboard_ports::sandbox::{ArtifactKey, ArtifactMeta};
use switchboard_ports::{ArtifactStore, ArtifactStoreError, PortId};

/// A fresh directory under the system temp dir, removed with everything in it when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<temp>/switchboard-<label>-<pid>-<n>`.
    pub fn new(label: &str) -> Result<TempDir, String> {
        let path = std::env::temp_dir().join(format!(
            "switchboard-{label}-{}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("could not create {}: {e}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What every `ArtifactStore` case gets.
pub struct Fixture {
    pub store: Arc<dyn ArtifactStore>,
    /// The directory a filesystem-backed store lives in, removed when the case ends.
    pub dir: Option<TempDir>,
}

/// Every contract case of `ArtifactStore`, one per `# Contract` bullet.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "put_then_get",
            run: |f| Box::pin(put_then_get(f)),
        },
        Case {
            name: "overwrite_replaces",
            run: |f| Box::pin(overwrite_replaces(f)),
        },
        Case {
            name: "list_by_session",
            run: |f| Box::pin(list_by_session(f)),
        },
        Case {
            name: "tenant_isolation",
            run: |f| Box::pin(tenant_isolation(f)),
        },
        Case {
            name: "path_traversal_refused",
            run: |f| Box::pin(path_traversal_refused(f)),
        },
        Case {
            name: "delete_removes",
            run: |f| Box::pin(delete_removes(f)),
        },
    ]
}

// ----- data every case makes for itself ------------------------------------------------------

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique_tenant() -> TenantContext {
    let org = OrgId::parse(format!(
        "org-as-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ))
    .expect("a valid org id");
    Principal::from_verified_credential(
        org,
        UserId::parse("user-1").expect("a valid user id"),
        None,
        vec![],
    )
    .tenant()
}

fn session(id: &str) -> SessionId {
    SessionId::parse(id).expect("a valid session id")
}

fn key(session_id: &str, run: Option<&str>, name: &str) -> ArtifactKey {
    ArtifactKey {
        session: session(session_id),
        run: run.map(|r| RunId::parse(r).expect("a valid run id")),
        name: name.to_string(),
    }
}

/// SHA-256 test vectors (FIPS 180-2 style known answers).
const HELLO_WORLD: &[u8] = b"hello world";
const HELLO_WORLD_SHA256: &str = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn binary_blob() -> Vec<u8> {
    (0..256 * 1024).map(|i: u32| (i % 251) as u8).collect()
}

fn keys(metas: &[ArtifactMeta]) -> BTreeSet<(Option<RunId>, String)> {
    metas
        .iter()
        .map(|m| (m.key.run.clone(), m.key.name.clone()))
        .collect()
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ----- cases ---------------------------------------------------------------------------------

async fn put_then_get(f: Fixture) -> CaseResult {
    let t = unique_tenant();
    let text = key("s1", Some("run-1"), "logs/agent.txt");
    let meta = ok!(f.store.put(&t, &text, HELLO_WORLD.to_vec()).await);
    ensure_eq!(meta.key, text, "the key in the meta");
    ensure_eq!(meta.size, HELLO_WORLD.len() as u64, "the size");
    ensure_eq!(
        meta.sha256,
        HELLO_WORLD_SHA256,
        "the SHA-256 of \"hello world\""
    );
    ensure_eq!(
        ok!(f.store.get(&t, &text).await),
        HELLO_WORLD.to_vec(),
        "the bytes read back"
    );

    let empty = key("s1", None, "empty");
    let meta = ok!(f.store.put(&t, &empty, Vec::new()).await);
    ensure_eq!(
        (meta.size, meta.sha256.as_str()),
        (0, EMPTY_SHA256),
        "an empty artifact"
    );
    ensure!(
        ok!(f.store.get(&t, &empty).await).is_empty(),
        "an empty artifact reads back non-empty"
    );

    let blob = binary_blob();
    let binary = key("s1", Some("run-1"), "out/diff.bin");
    let meta = ok!(f.store.put(&t, &binary, blob.clone()).await);
    ensure_eq!(
        meta.size,
        blob.len() as u64,
        "the size of a binary artifact"
    );
    ensure!(
        is_sha256_hex(&meta.sha256) && meta.sha256 != EMPTY_SHA256,
        "not a SHA-256 of the content: {}",
        meta.sha256
    );
    ensure!(
        ok!(f.store.get(&t, &binary).await) == blob,
        "a binary artifact came back changed"
    );

    let listed = ok!(f.store.list(&t, &session("s1")).await);
    let listed_binary = listed
        .iter()
        .find(|m| m.key == binary)
        .ok_or("the binary artifact is not listed")?;
    ensure_eq!(listed_binary, &meta, "the listed meta matches the put's");
    Ok(())
}

async fn overwrite_replaces(f: Fixture) -> CaseResult {
    let t = unique_tenant();
    let k = key("s1", Some("run-1"), "result.txt");
    ok!(f
        .store
        .put(&t, &k, b"the first, longer content".to_vec())
        .await);
    let meta = ok!(f.store.put(&t, &k, HELLO_WORLD.to_vec()).await);
    ensure_eq!(
        meta.sha256,
        HELLO_WORLD_SHA256,
        "the meta of the second put"
    );
    ensure_eq!(
        ok!(f.store.get(&t, &k).await),
        HELLO_WORLD.to_vec(),
        "the content after overwrite"
    );
    let listed = ok!(f.store.list(&t, &session("s1")).await);
    ensure_eq!(listed, vec![meta], "one artifact, with the second content");
    Ok(())
}

async fn list_by_session(f: Fixture) -> CaseResult {
    let t = unique_tenant();
    for k in [
        key("s1", None, "notes.md"),
        key("s1", Some("run-1"), "logs/agent.txt"),
        key("s1", Some("run-2"), "logs/agent.txt"),
        key("s2", Some("run-3"), "other.txt"),
    ] {
        ok!(f.store.put(&t, &k, k.name.as_bytes().to_vec()).await);
    }
    let s1 = ok!(f.store.list(&t, &session("s1")).await);
    let run = |r: &str| Some(RunId::parse(r).expect("a valid run id"));
    let expected: BTreeSet<_> = [
        (None, "notes.md".to_string()),
        (run("run-1"), "logs/agent.txt".to_string()),
        (run("run-2"), "logs/agent.txt".to_string()),
    ]
    .into();
    ensure_eq!(keys(&s1), expected, "session s1's artifacts");
    ensure_eq!(s1.len(), 3, "each artifact listed once");
    ensure!(
        s1.iter().all(|m| m.key.session == session("s1")),
        "s1's list holds another session's artifact"
    );
    for m in &s1 {
        ensure_eq!(
            m.size,
            m.key.name.len() as u64,
            "the listed size of {}",
            m.key.name
        );
    }
    ensure_eq!(
        keys(&ok!(f.store.list(&t, &session("s2")).await)),
        [(run("run-3"), "other.txt".to_string())].into(),
        "session s2's artifacts"
    );
    ensure!(
        ok!(f.store.list(&t, &session("s3")).await).is_empty(),
        "a session without artifacts lists some"
    );
    Ok(())
}

async fn tenant_isolation(f: Fixture) -> CaseResult {
    let (owner, other) = (unique_tenant(), unique_tenant());
    let k = key("s1", Some("run-1"), "secret.txt");
    ok!(f.store.put(&owner, &k, HELLO_WORLD.to_vec()).await);
    expect_class!(f.store.get(&other, &k).await, ErrorClass::NotFound);
    expect_class!(f.store.delete(&other, &k).await, ErrorClass::NotFound);
    // Another tenant's list of the same session id is its own (empty) session: nothing leaks.
    let listed = ok!(f.store.list(&other, &session("s1")).await);
    ensure!(
        listed.is_empty(),
        "another tenant lists {:?}",
        keys(&listed)
    );
    ensure_eq!(
        ok!(f.store.get(&owner, &k).await),
        HELLO_WORLD.to_vec(),
        "the owner's artifact after the other tenant's delete"
    );
    Ok(())
}

async fn path_traversal_refused(f: Fixture) -> CaseResult {
    let t = unique_tenant();
    ok!(f
        .store
        .put(&t, &key("s1", None, "kept.txt"), HELLO_WORLD.to_vec())
        .await);
    for name in [
        "../escape.txt",
        "a/../../b",
        "..",
        "/etc/passwd",
        "a//b",
        "",
        "a/",
        "./a",
        "a/./b",
        "a\\..\\b",
    ] {
        let k = key("s1", None, name);
        expect_class!(
            f.store.put(&t, &k, b"x".to_vec()).await,
            ErrorClass::Invalid
        );
        expect_class!(f.store.get(&t, &k).await, ErrorClass::Invalid);
        expect_class!(f.store.delete(&t, &k).await, ErrorClass::Invalid);
    }
    // A refused name reaching into the same session must not have clobbered anything.
    let listed = ok!(f.store.list(&t, &session("s1")).await);
    ensure_eq!(
        keys(&listed),
        [(None, "kept.txt".to_string())].into(),
        "the session after refusals"
    );
    ensure_eq!(
        ok!(f.store.get(&t, &key("s1", None, "kept.txt")).await),
        HELLO_WORLD.to_vec(),
        "the kept artifact"
    );
    Ok(())
}

async fn delete_removes(f: Fixture) -> CaseResult {
    let t = unique_tenant();
    let (gone, kept) = (
        key("s1", Some("run-1"), "logs/a.txt"),
        key("s1", Some("run-1"), "logs/b.txt"),
    );
    ok!(f.store.put(&t, &gone, b"a".to_vec()).await);
    ok!(f.store.put(&t, &kept, b"b".to_vec()).await);
    ok!(f.store.delete(&t, &gone).await);
    expect_class!(f.store.get(&t, &gone).await, ErrorClass::NotFound);
    let listed = ok!(f.store.list(&t, &session("s1")).await);
    ensure_eq!(
        keys(&listed),
        [(kept.run.clone(), kept.name.clone())].into(),
        "the session after delete"
    );
    expect_class!(f.store.delete(&t, &gone).await, ErrorClass::NotFound);
    ensure_eq!(
        ok!(f.store.get(&t, &kept).await),
        b"b".to_vec(),
        "the neighbour of the deleted artifact"
    );
    Ok(())
}

// ----- implementations, faults, entry points -------------------------------------------------

/// The fake, and the filesystem store in a fresh temp dir per fixture.
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(Fixture {
                store: Arc::new(InMemoryArtifactStore::new()),
                dir: None,
            })
        }),
        Implementation::new("fs", ImplKind::Adapter, || async {
            let dir = TempDir::new("artifacts")?;
            Ok(Fixture {
                store: Arc::new(FsArtifactStore::new(dir.path())),
                dir: Some(dir),
            })
        }),
    ]
}

/// What callers of an artifact store are promised when it fails.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "put",
        outcome: "the artifact is not stored and the caller sees `Unavailable`; the same put succeeds once the store heals",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "put",
        outcome: "the caller sees `Timeout` and nothing is stored; a retry stores the artifact once",
    },
    CatalogEntry {
        fault: Fault::LostAnswer,
        op: "put",
        outcome: "the artifact was stored though the caller saw `Timeout`; retrying the put leaves exactly one artifact with the same content",
    },
    CatalogEntry {
        fault: Fault::Slow,
        op: "put",
        outcome: "a slow put stores the full content and answers its true size and SHA-256",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "get",
        outcome: "the caller sees `Unavailable` and no bytes; the artifact is intact once the store heals",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "get",
        outcome: "the caller sees `Timeout` and no bytes; the artifact is intact once the store heals",
    },
    CatalogEntry {
        fault: Fault::Corrupt,
        op: "get",
        outcome: "bytes that fail their integrity check are never returned: the caller sees `Corrupt`",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "list",
        outcome: "the caller sees `Unavailable`, never a partial list passed off as complete",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "delete",
        outcome: "the artifact stays and the caller sees `Unavailable`; the delete succeeds once the store heals",
    },
    CatalogEntry {
        fault: Fault::LostAnswer,
        op: "delete",
        outcome: "the artifact was deleted though the caller saw `Timeout`; a retried delete answers `NotFound`, which means done",
    },
];

#[async_trait]
impl ArtifactStore for Faulty<dyn ArtifactStore> {
    async fn put(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
        bytes: Vec<u8>,
    ) -> Result<ArtifactMeta, ArtifactStoreError> {
        self.call("put", || self.inner.put(tenant, key, bytes))
            .await
    }

    async fn get(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
    ) -> Result<Vec<u8>, ArtifactStoreError> {
        self.call("get", || self.inner.get(tenant, key)).await
    }

    async fn list(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
    ) -> Result<Vec<ArtifactMeta>, ArtifactStoreError> {
        self.call("list", || self.inner.list(tenant, session)).await
    }

    async fn delete(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
    ) -> Result<(), ArtifactStoreError> {
        self.call("delete", || self.inner.delete(tenant, key)).await
    }
}

/// The suite of `ArtifactStore`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::ArtifactStore, cases(), implementations(), CATALOG)
}

/// Runs every `ArtifactStore` case against an adapter's fixtures.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    harness::check(PortId::ArtifactStore, name, make, &cases())
}

// ----- disruption cases ----------------------------------------------------------------------

/// One disruption case per catalog entry.
pub fn disruptions() -> Vec<DisruptionCase> {
    crate::disruption::per_entry(PortId::ArtifactStore, CATALOG, |entry| {
        Box::pin(disrupt(entry))
    })
}

/// Injects `entry`'s fault forever around the fake, checks what the caller saw and what the store
/// holds (read through the un-faulted store), heals, and checks the flow succeeds.
async fn disrupt(entry: CatalogEntry) -> CaseResult {
    let fake = Arc::new(InMemoryArtifactStore::new());
    let t = unique_tenant();
    let k = key("s1", Some("run-1"), "logs/agent.txt");
    let content = HELLO_WORLD.to_vec();
    let plan = FaultPlan::always(entry.op, entry.fault);
    let faulty = Faulty::new(fake.clone() as Arc<dyn ArtifactStore>, plan.clone());
    let only = |metas: &[ArtifactMeta]| {
        metas
            .iter()
            .map(|m| (m.key.clone(), m.size, m.sha256.clone()))
            .collect::<Vec<_>>()
    };
    let expected_meta = vec![(
        k.clone(),
        content.len() as u64,
        HELLO_WORLD_SHA256.to_string(),
    )];
    match entry.op {
        "put" => {
            let answer = faulty.put(&t, &k, content.clone()).await;
            match entry.fault.class() {
                Some(class) => expect_class!(answer, class),
                None => ensure_eq!(ok!(answer).sha256, HELLO_WORLD_SHA256, "a slow put's meta"),
            }
            let stored = ok!(fake.list(&t, &k.session).await);
            if matches!(entry.fault, Fault::LostAnswer | Fault::Slow) {
                ensure_eq!(
                    only(&stored),
                    expected_meta,
                    "the store after the put that reached it"
                );
            } else {
                ensure!(stored.is_empty(), "a failed put stored {:?}", only(&stored));
                expect_class!(fake.get(&t, &k).await, ErrorClass::NotFound);
            }
            plan.heal();
            let meta = ok!(faulty.put(&t, &k, content.clone()).await);
            ensure_eq!(meta.sha256, HELLO_WORLD_SHA256, "the retried put's meta");
            ensure_eq!(
                only(&ok!(fake.list(&t, &k.session).await)),
                expected_meta,
                "exactly one artifact after the retry"
            );
            ensure_eq!(
                ok!(fake.get(&t, &k).await),
                content,
                "the content after the retry"
            );
        }
        "get" | "list" => {
            ok!(fake.put(&t, &k, content.clone()).await);
            if entry.op == "get" {
                let answer = faulty.get(&t, &k).await;
                match entry.fault.class() {
                    // `expect_class!` fails the case on any `Ok`: no bytes ever come back.
                    Some(class) => expect_class!(answer, class),
                    None => ensure_eq!(ok!(answer), content, "a slow get"),
                }
            } else {
                let answer = faulty.list(&t, &k.session).await;
                match entry.fault.class() {
                    Some(class) => expect_class!(answer, class),
                    None => ensure_eq!(only(&ok!(answer)), expected_meta, "a slow list"),
                }
            }
            ensure_eq!(
                ok!(fake.get(&t, &k).await),
                content,
                "the artifact after a failed read"
            );
            plan.heal();
            ensure_eq!(
                ok!(faulty.get(&t, &k).await),
                content,
                "the get after healing"
            );
            ensure_eq!(
                only(&ok!(faulty.list(&t, &k.session).await)),
                expected_meta,
                "the list after healing"
            );
        }
        "delete" => {
            ok!(fake.put(&t, &k, content.clone()).await);
            let answer = faulty.delete(&t, &k).await;
            match entry.fault.class() {
                Some(class) => expect_class!(answer, class),
                None => ok!(answer),
            }
            let reached = matches!(entry.fault, Fault::LostAnswer | Fault::Slow);
            if reached {
                expect_class!(fake.get(&t, &k).await, ErrorClass::NotFound);
            } else {
                ensure_eq!(
                    ok!(fake.get(&t, &k).await),
                    content,
                    "the artifact after a failed delete"
                );
            }
            plan.heal();
            if reached {
                expect_class!(faulty.delete(&t, &k).await, ErrorClass::NotFound);
            } else {
                ok!(faulty.delete(&t, &k).await);
            }
            expect_class!(fake.get(&t, &k).await, ErrorClass::NotFound);
            ensure!(fake.is_empty(), "artifacts remain after the delete");
        }
        other => return Err(format!("no disruption flow for op {other}")),
    }
    ensure_eq!(
        plan.injected(),
        vec![(entry.op.to_string(), entry.fault)],
        "faults injected"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_fixture_dirs_are_removed() {
        let dir = TempDir::new("artifacts-drop").unwrap();
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists());
    }
}
