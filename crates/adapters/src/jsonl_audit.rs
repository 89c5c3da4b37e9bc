//! `JsonLinesAuditLog`: the audit log as a file of JSON lines, one entry per line, append-only.
//!
//! Durability: every append is written with one `write_all` of a whole line and flushed to the OS,
//! but not fsynced; a machine crash can lose the last entries, a process crash cannot. A crash in the
//! middle of a write can leave a torn last line (no trailing newline): `list` skips it, and `open`
//! (or the next append after a failed one) truncates it away before writing, so a torn line never
//! merges with the next entry. A complete line that does not parse is real damage: `Corrupt`.
//!
//! One process writes a file: appends and reads are serialised by an in-process lock, not a file
//! lock. `list` reads the whole file, so it suits the embedded deployment's modest volumes.

use async_trait::async_trait;
use std::io::{ErrorKind, SeekFrom};
use std::path::{Path, PathBuf};
use switchboard_core::audit::AuditEntry;
use switchboard_core::tenancy::TenantContext;
use switchboard_ports::record::{AuditLog, AuditLogError};
use tokio::fs::OpenOptions;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Mutex;

struct WriterState {
    /// A write failed part-way: the file may end in a torn line that must be cut before appending.
    maybe_torn: bool,
}

/// An audit log kept in a JSON lines file.
pub struct JsonLinesAuditLog {
    path: PathBuf,
    writer: Mutex<WriterState>,
}

fn io_error(e: std::io::Error) -> AuditLogError {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => {
            AuditLogError::Timeout(format!("audit file: {e}"))
        }
        ErrorKind::InvalidData | ErrorKind::UnexpectedEof => {
            AuditLogError::Corrupt(format!("audit file: {e}"))
        }
        _ => AuditLogError::Unavailable(format!("audit file: {e}")),
    }
}

impl JsonLinesAuditLog {
    /// Opens (creating if missing) the file at `path`, cutting a torn last line left by a crash. The
    /// parent directory must exist.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, AuditLogError> {
        let path = path.into();
        cut_torn_tail(&path).await?;
        Ok(JsonLinesAuditLog {
            path,
            writer: Mutex::new(WriterState { maybe_torn: false }),
        })
    }

    /// The file this log writes.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Truncates the file after its last newline (creating it if missing), so it holds only whole lines.
async fn cut_torn_tail(path: &Path) -> Result<(), AuditLogError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .await
        .map_err(io_error)?;
    let len = file.metadata().await.map_err(io_error)?.len();
    let mut end = len;
    let mut buf = vec![0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start)).await.map_err(io_error)?;
        file.read_exact(chunk).await.map_err(io_error)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end != len {
        tracing::warn!(path = %path.display(), torn_bytes = len - end, "audit log ended in a torn line; cutting it");
        file.set_len(end).await.map_err(io_error)?;
        file.flush().await.map_err(io_error)?;
    }
    Ok(())
}

/// Parses the whole lines of a file's contents; a last line without its newline is torn and skipped.
fn parse_lines(bytes: &[u8]) -> Result<Vec<AuditEntry>, AuditLogError> {
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => &bytes[..=i],
        None => &[][..],
    };
    whole
        .split(|&b| b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_slice(line)
                .map_err(|e| AuditLogError::Corrupt(format!("audit file entry {}: {e}", n + 1)))
        })
        .collect()
}

#[async_trait]
impl AuditLog for JsonLinesAuditLog {
    async fn append(&self, entry: &AuditEntry) -> Result<(), AuditLogError> {
        let mut line = serde_json::to_vec(entry)
            .map_err(|e| AuditLogError::Invalid(format!("audit entry: {e}")))?;
        line.push(b'\n');
        let mut st = self.writer.lock().await;
        if st.maybe_torn {
            cut_torn_tail(&self.path).await?;
            st.maybe_torn = false;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(io_error)?;
        let written = async {
            file.write_all(&line).await?;
            file.flush().await
        }
        .await;
        if written.is_err() {
            st.maybe_torn = true;
        }
        written.map_err(io_error)
    }

    async fn list(
        &self,
        tenant: &TenantContext,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, AuditLogError> {
        let bytes = {
            let _st = self.writer.lock().await;
            match tokio::fs::read(&self.path).await {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io_error(e)),
            }
        };
        let mut mine: Vec<AuditEntry> = parse_lines(&bytes)?
            .into_iter()
            .rev()
            .filter(|e| e.org.as_ref() == Some(tenant.org()))
            .collect();
        // Newest first by time; among equal times the later append first (the sort is stable).
        mine.sort_by_key(|e| std::cmp::Reverse(e.at));
        mine.truncate(limit);
        Ok(mine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::audit::{AuditAction, AuditOutcome};
    use switchboard_core::tenancy::Principal;
    use switchboard_core::{OrgId, Timestamp, UserId};

    fn temp_file(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-jsonl-audit-unit-{}-{tag}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("audit.jsonl")
    }

    fn entry(org: &str, at: u64) -> AuditEntry {
        AuditEntry {
            at: Timestamp::from_millis(at),
            org: Some(OrgId::parse(org).unwrap()),
            actor: None,
            action: AuditAction::Login,
            target: "t".to_string(),
            outcome: AuditOutcome::Allowed,
        }
    }

    #[tokio::test]
    async fn torn_last_line_is_skipped_then_cut() {
        let path = temp_file("torn");
        let _ = std::fs::remove_file(&path);
        let log = JsonLinesAuditLog::open(&path).await.unwrap();
        log.append(&entry("o1", 1)).await.unwrap();
        // A crash mid-write leaves half a line.
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(br#"{"at":"2026-01-01T00:00:00.000Z","org":"o1","#);
        std::fs::write(&path, &bytes).unwrap();

        let tenant = Principal::from_verified_credential(
            OrgId::parse("o1").unwrap(),
            UserId::parse("u").unwrap(),
            None,
            vec![],
        )
        .tenant();
        assert_eq!(log.list(&tenant, 10).await.unwrap(), vec![entry("o1", 1)]);

        let reopened = JsonLinesAuditLog::open(&path).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, whole);
        reopened.append(&entry("o1", 2)).await.unwrap();
        assert_eq!(
            reopened.list(&tenant, 10).await.unwrap(),
            vec![entry("o1", 2), entry("o1", 1)]
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_damaged_whole_line_is_corrupt() {
        let err = parse_lines(b"{\"not\":\"an entry\"}\n").unwrap_err();
        assert!(matches!(err, AuditLogError::Corrupt(_)));
        assert!(parse_lines(b"").unwrap().is_empty());
    }
}
