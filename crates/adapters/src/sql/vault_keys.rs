//! The vault's master keys: versioned 32-byte keys with one current version, read from
//! configuration (`SWITCHBOARD_MASTER_KEY`, `SWITCHBOARD_MASTER_KEY_PREVIOUS`) or, in the embedded
//! default, from a key file under the data directory that is generated on first start.
//!
//! # Configuration
//!
//! A key entry is `[<version>:]<base64 of 32 bytes>`; the version is a positive integer, 1 when
//! left out. `openssl rand -base64 32` makes a key.
//!
//! - `SWITCHBOARD_MASTER_KEY`: the current key. New and re-sealed secrets are sealed under it.
//! - `SWITCHBOARD_MASTER_KEY_PREVIOUS` (optional): older keys still accepted for opening, as
//!   `<version>:<base64>` entries separated by commas or newlines. Each version must be lower than
//!   the current one and appear once.
//!
//! Rotation: generate a new key, set `SWITCHBOARD_MASTER_KEY=2:<new>` and
//! `SWITCHBOARD_MASTER_KEY_PREVIOUS=1:<old>`, restart. Each secret is re-sealed under version 2 the
//! next time it is opened; an old key can be dropped once no row carries its `key_version`.
//!
//! Without `SWITCHBOARD_MASTER_KEY`, the key file `<data dir>/master.key` is used: created if
//! missing with mode 0600 and one line holding 32 random bytes in base64 (version 1). It may hold
//! further lines in the same entry form; the first entry is the current key and the others are
//! previous keys. A key file that is readable or writable by group or others, or whose key is not
//! 32 bytes of base64, is refused with an error naming the file and the fix.
//!
//! Key material is never printed: `Debug` shows versions only, and no error quotes a key.

use base64::Engine;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use switchboard_core::ErrorClass;

/// The variable holding the current master key.
pub const ENV_MASTER_KEY: &str = "SWITCHBOARD_MASTER_KEY";
/// The variable holding older master keys still accepted for opening.
pub const ENV_MASTER_KEY_PREVIOUS: &str = "SWITCHBOARD_MASTER_KEY_PREVIOUS";
/// The key file's name under the data directory (embedded default).
pub const KEY_FILE_NAME: &str = "master.key";
/// The length of a master key in bytes.
pub const KEY_LEN: usize = 32;
/// A key file larger than this is not a key file.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// Why the master keys could not be had. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MasterKeyError {
    /// `Invalid` for a misconfiguration, `Unavailable` when the key file cannot be read or written.
    pub class: ErrorClass,
    pub message: String,
}

fn invalid(message: impl Into<String>) -> MasterKeyError {
    MasterKeyError {
        class: ErrorClass::Invalid,
        message: message.into(),
    }
}

fn unavailable(message: impl Into<String>) -> MasterKeyError {
    MasterKeyError {
        class: ErrorClass::Unavailable,
        message: message.into(),
    }
}

/// Versioned master keys with one current version (the highest).
#[derive(Clone)]
pub struct MasterKeys {
    current: u32,
    keys: BTreeMap<u32, [u8; KEY_LEN]>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeys")
            .field("current", &self.current)
            .field("versions", &self.versions())
            .finish_non_exhaustive()
    }
}

impl MasterKeys {
    /// One key, current at `version` (>= 1).
    pub fn new(version: u32, key: [u8; KEY_LEN]) -> Result<Self, MasterKeyError> {
        if version == 0 {
            return Err(invalid("master key versions start at 1"));
        }
        Ok(MasterKeys {
            current: version,
            keys: BTreeMap::from([(version, key)]),
        })
    }

    /// Adds an older key, accepted for opening only. Its version must be lower than the current one
    /// and not already held.
    pub fn with_previous(
        mut self,
        version: u32,
        key: [u8; KEY_LEN],
    ) -> Result<Self, MasterKeyError> {
        if version == 0 {
            return Err(invalid("master key versions start at 1"));
        }
        if version >= self.current {
            return Err(invalid(format!(
                "previous master key version {version} must be lower than the current version {}",
                self.current
            )));
        }
        if self.keys.insert(version, key).is_some() {
            return Err(invalid(format!(
                "master key version {version} is given twice"
            )));
        }
        Ok(self)
    }

    /// A fresh random key at version 1 (ephemeral vaults, tests).
    pub fn generate() -> Result<Self, MasterKeyError> {
        Self::new(1, random_key()?)
    }

    /// The version new secrets are sealed under.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// Every version held, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Whether `version` is held.
    pub fn contains(&self, version: u32) -> bool {
        self.keys.contains_key(&version)
    }

    /// The key of `version`, if held.
    pub(crate) fn key(&self, version: u32) -> Option<&[u8; KEY_LEN]> {
        self.keys.get(&version)
    }

    /// The current version's key.
    pub(crate) fn current_key(&self) -> &[u8; KEY_LEN] {
        // `current` is always a key of the map: every constructor inserts it.
        &self.keys[&self.current]
    }

    /// Keys from their textual form: `current` is one entry `[<version>:]<base64>`, `previous` a
    /// list of `<version>:<base64>` entries separated by commas or newlines. `source` names where
    /// they came from, for error messages.
    pub fn parse(
        current: &str,
        previous: Option<&str>,
        source: &str,
    ) -> Result<Self, MasterKeyError> {
        let (version, key) = parse_entry(current, true, source)?;
        let mut keys = Self::new(version, key)?;
        for entry in previous.map(split_entries).unwrap_or_default() {
            let (version, key) = parse_entry(entry, false, source)?;
            keys = keys.with_previous(version, key)?;
        }
        Ok(keys)
    }

    /// Keys from `SWITCHBOARD_MASTER_KEY` (and `SWITCHBOARD_MASTER_KEY_PREVIOUS`) as `lookup`
    /// answers them; `None` when the master key is not configured.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, MasterKeyError> {
        let Some(current) = lookup(ENV_MASTER_KEY).filter(|v| !v.trim().is_empty()) else {
            if lookup(ENV_MASTER_KEY_PREVIOUS).is_some_and(|v| !v.trim().is_empty()) {
                return Err(invalid(format!("{ENV_MASTER_KEY_PREVIOUS} is set but {ENV_MASTER_KEY} is not: set the current key too")));
            }
            return Ok(None);
        };
        let previous = lookup(ENV_MASTER_KEY_PREVIOUS);
        Self::parse(&current, previous.as_deref(), ENV_MASTER_KEY).map(Some)
    }

    /// Keys from the process environment; `None` when `SWITCHBOARD_MASTER_KEY` is not set.
    pub fn from_env() -> Result<Option<Self>, MasterKeyError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Keys from a key file: refused when group or others may read or write it, or when it does
    /// not hold 32-byte keys in base64.
    pub fn from_file(path: &Path) -> Result<Self, MasterKeyError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| unavailable(format!("cannot read the master key file {shown}: {e}")))?;
        if !meta.is_file() {
            return Err(invalid(format!(
                "the master key file {shown} is not a regular file"
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(invalid(format!(
                "the master key file {shown} has mode {mode:04o}: group or others can access it; run `chmod 600 {shown}` (and consider the key exposed if others could read it)"
            )));
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(invalid(format!(
                "the master key file {shown} is {} bytes: not a key file",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| unavailable(format!("cannot read the master key file {shown}: {e}")))?;
        let mut entries = split_entries(&text).into_iter();
        let source = format!("the master key file {shown}");
        let Some(first) = entries.next() else {
            return Err(invalid(format!(
                "{source} is empty: it must hold 32 bytes in base64"
            )));
        };
        let (version, key) = parse_entry(first, true, &source)?;
        let mut keys = Self::new(version, key)?;
        for entry in entries {
            let (version, key) = parse_entry(entry, false, &source)?;
            keys = keys.with_previous(version, key)?;
        }
        Ok(keys)
    }

    /// Keys from the key file at `path`, which is created (mode 0600, 32 random bytes in base64,
    /// version 1) if it does not exist. Two processes starting at once end up with the same key.
    pub fn from_file_or_create(path: &Path) -> Result<Self, MasterKeyError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(path)?,
            Err(e) => {
                return Err(unavailable(format!(
                    "cannot read the master key file {}: {e}",
                    path.display()
                )))
            }
        }
        Self::from_file(path)
    }

    /// The keys a server uses: from the environment when `SWITCHBOARD_MASTER_KEY` is set,
    /// otherwise from `<data_dir>/master.key` (created if missing).
    pub fn resolve(data_dir: &Path) -> Result<Self, MasterKeyError> {
        Self::resolve_with(|name| std::env::var(name).ok(), data_dir)
    }

    /// [`MasterKeys::resolve`] with the environment read through `lookup`.
    pub fn resolve_with(
        lookup: impl Fn(&str) -> Option<String>,
        data_dir: &Path,
    ) -> Result<Self, MasterKeyError> {
        match Self::from_lookup(lookup)? {
            Some(keys) => Ok(keys),
            None => Self::from_file_or_create(&key_file_path(data_dir)),
        }
    }
}

/// Where the embedded default keeps its key file.
pub fn key_file_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE_NAME)
}

fn random_key() -> Result<[u8; KEY_LEN], MasterKeyError> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key)
        .map_err(|e| unavailable(format!("the operating system's random source failed: {e}")))?;
    Ok(key)
}

fn split_entries(text: &str) -> Vec<&str> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with('#'))
        .collect()
}

/// Parses `[<version>:]<base64>`; the version may be left out only where `default_version` allows.
fn parse_entry(
    entry: &str,
    default_version: bool,
    source: &str,
) -> Result<(u32, [u8; KEY_LEN]), MasterKeyError> {
    let entry = entry.trim();
    let (version, encoded) = match entry.split_once(':') {
        Some((v, k)) => {
            let version = v.trim().parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
                invalid(format!("{source}: a key entry is `[<version>:]<base64>` with a version of 1 or more"))
            })?;
            (version, k.trim())
        }
        None if default_version => (1, entry),
        None => {
            return Err(invalid(format!(
                "{source}: a previous key must name its version, as `<version>:<base64>`"
            )))
        }
    };
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ];
    let bytes = engines
        .iter()
        .find_map(|engine| engine.decode(encoded).ok())
        .ok_or_else(|| {
            invalid(format!(
                "{source}: master key version {version} is not valid base64"
            ))
        })?;
    let key: [u8; KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| invalid(format!("{source}: master key version {version} is {} bytes; it must be exactly {KEY_LEN} bytes", bytes.len())))?;
    Ok((version, key))
}

/// Writes a new key file atomically: a private temporary file, fsynced, then hard-linked into
/// place (which fails rather than overwrite a key another process just created).
fn create_key_file(path: &Path) -> Result<(), MasterKeyError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let shown = path.display();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                unavailable(format!(
                    "cannot create the data directory {}: {e}",
                    dir.display()
                ))
            })?;
    }
    let name = path
        .file_name()
        .map_or_else(|| "master.key".into(), |n| n.to_string_lossy().into_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let key = random_key().map_err(|e| std::io::Error::other(e.message))?;
        let mut line = base64::engine::general_purpose::STANDARD.encode(key);
        line.push('\n');
        file.write_all(line.as_bytes())?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(unavailable(format!(
            "cannot create the master key file {shown}: {e}"
        )));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            tracing::info!(path = %shown, "generated a new vault master key file");
            Ok(())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(unavailable(format!(
            "cannot create the master key file {shown}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(key: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    #[test]
    fn parses_versions_and_refuses_bad_entries() {
        let keys = MasterKeys::parse(
            &format!("3:{}", b64(&[3; 32])),
            Some(&format!("1:{}, 2:{}", b64(&[1; 32]), b64(&[2; 32]))),
            "test",
        )
        .unwrap();
        assert_eq!(keys.current_version(), 3);
        assert_eq!(keys.versions(), vec![1, 2, 3]);
        assert_eq!(keys.key(2), Some(&[2; 32]));
        assert_eq!(
            MasterKeys::parse(&b64(&[9; 32]), None, "t")
                .unwrap()
                .current_version(),
            1
        );

        let class = |r: Result<MasterKeys, MasterKeyError>| r.unwrap_err().class;
        assert_eq!(
            class(MasterKeys::parse(&b64(&[1; 16]), None, "t")),
            ErrorClass::Invalid
        );
        assert_eq!(
            class(MasterKeys::parse("not base64 at all!", None, "t")),
            ErrorClass::Invalid
        );
        assert_eq!(
            class(MasterKeys::parse(
                &format!("0:{}", b64(&[1; 32])),
                None,
                "t"
            )),
            ErrorClass::Invalid
        );
        assert_eq!(
            class(MasterKeys::parse(&b64(&[1; 32]), Some(&b64(&[2; 32])), "t")),
            ErrorClass::Invalid,
            "previous without version"
        );
        assert_eq!(
            class(MasterKeys::parse(
                &format!("2:{}", b64(&[1; 32])),
                Some(&format!("2:{}", b64(&[2; 32]))),
                "t"
            )),
            ErrorClass::Invalid
        );
        assert_eq!(
            class(MasterKeys::parse(
                &format!("2:{}", b64(&[1; 32])),
                Some(&format!("5:{}", b64(&[2; 32]))),
                "t"
            )),
            ErrorClass::Invalid
        );
    }

    #[test]
    fn errors_and_debug_never_show_key_material() {
        let encoded = b64(&[0xAB; 31]);
        let err = MasterKeys::parse(&encoded, None, "t").unwrap_err();
        assert!(!err.message.contains(&encoded), "{}", err.message);
        let keys = MasterKeys::parse(&b64(&[0xCD; 32]), None, "t").unwrap();
        let shown = format!("{keys:?}");
        assert!(
            !shown.contains(&b64(&[0xCD; 32])) && !shown.contains("205"),
            "{shown}"
        );
        assert!(shown.contains("current: 1"), "{shown}");
    }

    #[test]
    fn lookup_without_a_master_key_is_none_but_previous_alone_is_refused() {
        assert!(MasterKeys::from_lookup(|_| None).unwrap().is_none());
        let previous = format!("1:{}", b64(&[1; 32]));
        let err =
            MasterKeys::from_lookup(|n| (n == ENV_MASTER_KEY_PREVIOUS).then(|| previous.clone()))
                .unwrap_err();
        assert_eq!(err.class, ErrorClass::Invalid);
    }
}
