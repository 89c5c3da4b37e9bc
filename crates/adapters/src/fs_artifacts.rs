//! `FsArtifactStore`: the `ArtifactStore` port on a local directory.
//!
//! Layout: `<root>/<org>/<session>/<run or _>/<name>`, where `name` may hold `/`-separated
//! directories. A put writes a temporary file under `<root>/.tmp` and renames it into place, so a
//! reader sees the old content or the new, never a torn write. Names are validated before the
//! filesystem is touched.
//!
//! Ids may legally be `.`, `..` or `_`, so each path component made from an id is escaped: an id
//! starting with `_` or `.` gets one more leading `_`. Escaped ids therefore never start with `.`
//! and never equal `_` (which stands for "no run"), and `.tmp` can never be an org directory.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use switchboard_core::tenancy::TenantContext;
use switchboard_core::{RunId, SessionId};
use switchboard_ports::sandbox::{valid_artifact_name, ArtifactKey, ArtifactMeta};
use switchboard_ports::{ArtifactStore, ArtifactStoreError};
use tokio::io::AsyncWriteExt;

/// The directory, under the root, holding writes in progress.
const TMP_DIR: &str = ".tmp";
/// The run directory of artifacts that belong to no run.
const NO_RUN: &str = "_";

/// Makes temporary file names unique within the process (the process id separates processes).
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// Artifacts as files under a root directory.
#[derive(Debug, Clone)]
pub struct FsArtifactStore {
    root: PathBuf,
}

impl FsArtifactStore {
    /// A store under `root` (created on the first put).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsArtifactStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn session_dir(&self, tenant: &TenantContext, session: &SessionId) -> PathBuf {
        self.root
            .join(escape(tenant.org().as_str()))
            .join(escape(session.as_str()))
    }

    /// The file of `key`, after checking its name.
    fn path_of(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
    ) -> Result<PathBuf, ArtifactStoreError> {
        if !valid_artifact_name(&key.name) {
            return Err(ArtifactStoreError::Invalid(format!(
                "artifact name {:?} must be relative, without `..`, `.` or empty segments",
                key.name
            )));
        }
        let mut path = self.session_dir(tenant, &key.session);
        path.push(
            key.run
                .as_ref()
                .map_or_else(|| NO_RUN.to_string(), |r| escape(r.as_str())),
        );
        for segment in key.name.split('/') {
            path.push(segment);
        }
        Ok(path)
    }
}

/// The path component for an id (see the module docs).
fn escape(id: &str) -> String {
    if id.starts_with('_') || id.starts_with('.') {
        format!("_{id}")
    } else {
        id.to_string()
    }
}

/// The run named by a run directory, `None` for a directory no id maps to.
fn run_of_dir(dir: &str) -> Option<Option<RunId>> {
    if dir == NO_RUN {
        return Some(None);
    }
    let id = match dir.strip_prefix('_') {
        Some(rest) if rest.starts_with('_') || rest.starts_with('.') => rest,
        Some(_) => return None,
        None if dir.starts_with('.') => return None,
        None => dir,
    };
    RunId::parse(id).ok().map(Some)
}

/// Which side of a call an IO error came from: a missing directory on a read means "no artifact",
/// while on a write a file standing where a directory must go is a conflict.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

/// Maps an IO error to the port's error classes.
fn io_error(e: std::io::Error, access: Access, what: &str) -> ArtifactStoreError {
    let message = format!("{what}: {e}");
    match (e.kind(), access) {
        (ErrorKind::NotFound, _) => ArtifactStoreError::NotFound(message),
        (ErrorKind::IsADirectory | ErrorKind::NotADirectory, Access::Read) => {
            ArtifactStoreError::NotFound(message)
        }
        (
            ErrorKind::IsADirectory
            | ErrorKind::NotADirectory
            | ErrorKind::DirectoryNotEmpty
            | ErrorKind::AlreadyExists,
            Access::Write,
        ) => ArtifactStoreError::Conflict(message),
        (ErrorKind::InvalidInput | ErrorKind::InvalidFilename, _) => {
            ArtifactStoreError::Invalid(message)
        }
        (ErrorKind::TimedOut, _) => ArtifactStoreError::Timeout(message),
        // Permission, full disk, quota, read-only filesystem and anything else: the store cannot
        // serve the call right now.
        _ => ArtifactStoreError::Unavailable(message),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl FsArtifactStore {
    /// Writes `bytes` to a fresh temporary file, flushed to disk, and returns its path.
    async fn write_temp(&self, bytes: &[u8]) -> Result<PathBuf, ArtifactStoreError> {
        let tmp_dir = self.root.join(TMP_DIR);
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|e| io_error(e, Access::Write, "creating the temp directory"))?;
        let tmp = tmp_dir.join(format!(
            "{}-{}",
            std::process::id(),
            NEXT_TMP.fetch_add(1, Ordering::Relaxed)
        ));
        let written = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            file.write_all(bytes).await?;
            file.sync_all().await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io_error(e, Access::Write, "writing the artifact"));
        }
        Ok(tmp)
    }
}

#[async_trait]
impl ArtifactStore for FsArtifactStore {
    async fn put(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
        bytes: Vec<u8>,
    ) -> Result<ArtifactMeta, ArtifactStoreError> {
        let path = self.path_of(tenant, key)?;
        let tmp = self.write_temp(&bytes).await?;
        let placed = async {
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(e) = placed {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io_error(e, Access::Write, "placing the artifact"));
        }
        Ok(ArtifactMeta {
            key: key.clone(),
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        })
    }

    async fn get(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
    ) -> Result<Vec<u8>, ArtifactStoreError> {
        let path = self.path_of(tenant, key)?;
        tokio::fs::read(&path)
            .await
            .map_err(|e| io_error(e, Access::Read, "reading the artifact"))
    }

    async fn list(
        &self,
        tenant: &TenantContext,
        session: &SessionId,
    ) -> Result<Vec<ArtifactMeta>, ArtifactStoreError> {
        let session_dir = self.session_dir(tenant, session);
        let mut metas = Vec::new();
        let mut runs = match tokio::fs::read_dir(&session_dir).await {
            Ok(entries) => entries,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                return Ok(metas)
            }
            Err(e) => return Err(io_error(e, Access::Read, "listing the session")),
        };
        while let Some(run_entry) = runs
            .next_entry()
            .await
            .map_err(|e| io_error(e, Access::Read, "listing the session"))?
        {
            let Some(run) = run_entry.file_name().to_str().and_then(run_of_dir) else {
                continue;
            };
            // Depth-first walk of the run directory; names are the `/`-joined relative paths.
            let mut pending = vec![(run_entry.path(), String::new())];
            while let Some((dir, prefix)) = pending.pop() {
                let mut entries = match tokio::fs::read_dir(&dir).await {
                    Ok(entries) => entries,
                    // Deleted or replaced while we walked: it has nothing to list any more.
                    Err(e)
                        if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) =>
                    {
                        continue
                    }
                    Err(e) => return Err(io_error(e, Access::Read, "listing the session")),
                };
                while let Some(entry) = entries
                    .next_entry()
                    .await
                    .map_err(|e| io_error(e, Access::Read, "listing the session"))?
                {
                    let Some(file_name) = entry.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    let name = if prefix.is_empty() {
                        file_name
                    } else {
                        format!("{prefix}/{file_name}")
                    };
                    let file_type = entry
                        .file_type()
                        .await
                        .map_err(|e| io_error(e, Access::Read, "listing the session"))?;
                    if file_type.is_dir() {
                        pending.push((entry.path(), name));
                    } else if file_type.is_file() && valid_artifact_name(&name) {
                        let bytes = match tokio::fs::read(entry.path()).await {
                            Ok(bytes) => bytes,
                            Err(e) if e.kind() == ErrorKind::NotFound => continue,
                            Err(e) => return Err(io_error(e, Access::Read, "reading an artifact")),
                        };
                        let key = ArtifactKey {
                            session: session.clone(),
                            run: run.clone(),
                            name,
                        };
                        metas.push(ArtifactMeta {
                            key,
                            size: bytes.len() as u64,
                            sha256: sha256_hex(&bytes),
                        });
                    }
                }
            }
        }
        metas.sort_by(|a, b| (&a.key.run, &a.key.name).cmp(&(&b.key.run, &b.key.name)));
        Ok(metas)
    }

    async fn delete(
        &self,
        tenant: &TenantContext,
        key: &ArtifactKey,
    ) -> Result<(), ArtifactStoreError> {
        let path = self.path_of(tenant, key)?;
        tokio::fs::remove_file(&path)
            .await
            .map_err(|e| io_error(e, Access::Read, "deleting the artifact"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_reversible_and_never_hidden() {
        for id in ["run-1", "_", "__x", ".", "..", ".hidden", "_.", "a_b"] {
            let dir = escape(id);
            assert!(!dir.starts_with('.'), "{id} -> {dir}");
            assert_ne!(dir, NO_RUN);
            assert_eq!(
                run_of_dir(&dir),
                Some(Some(RunId::parse(id).unwrap())),
                "{id}"
            );
        }
        assert_eq!(run_of_dir(NO_RUN), Some(None));
        assert_eq!(run_of_dir(".tmp"), None);
        assert_eq!(run_of_dir("_x"), None, "not a form escape() produces");
    }

    #[test]
    fn io_errors_map_to_classes() {
        use switchboard_ports::error::{Classify, ErrorClass};
        let class =
            |kind: ErrorKind, access| io_error(std::io::Error::from(kind), access, "x").class();
        assert_eq!(
            class(ErrorKind::NotFound, Access::Write),
            ErrorClass::NotFound
        );
        assert_eq!(
            class(ErrorKind::PermissionDenied, Access::Read),
            ErrorClass::Unavailable
        );
        assert_eq!(
            class(ErrorKind::StorageFull, Access::Write),
            ErrorClass::Unavailable
        );
        assert_eq!(
            class(ErrorKind::NotADirectory, Access::Read),
            ErrorClass::NotFound
        );
        assert_eq!(
            class(ErrorKind::IsADirectory, Access::Write),
            ErrorClass::Conflict
        );
    }

    #[test]
    fn traversal_is_refused_before_any_path_is_built() {
        let store = FsArtifactStore::new("/nonexistent-root");
        let tenant = switchboard_core::Principal::from_verified_credential(
            switchboard_core::OrgId::parse("..").unwrap(),
            switchboard_core::UserId::parse("u").unwrap(),
            None,
            vec![],
        )
        .tenant();
        let key = |name: &str| ArtifactKey {
            session: SessionId::parse("..").unwrap(),
            run: None,
            name: name.into(),
        };
        assert!(matches!(
            store.path_of(&tenant, &key("../../etc/passwd")),
            Err(ArtifactStoreError::Invalid(_))
        ));
        let path = store.path_of(&tenant, &key("a/b.txt")).unwrap();
        assert_eq!(path, Path::new("/nonexistent-root/_../_../_/a/b.txt"));
    }
}
