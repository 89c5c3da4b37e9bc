//! `SqliteSessionStore`: the real `SessionStore`, one SQLite database (WAL) per session under a
//! data directory, `<data_dir>/sessions/<org>/<session>.db`.
//!
//! Each database holds the session's event log, its machine snapshot and its run-ledger outbox
//! (schema: `migrations/session/0001_session.sql`, applied when a file is opened, versioned by
//! `PRAGMA user_version`; a file of a newer schema is refused). A file is created by the first
//! commit that the store accepts, as a copy of an empty database made once per store (already in
//! WAL mode, schema applied: see `create_database`); a session exists for `load` and `list` once a
//! snapshot landed.
//!
//! Writes: one commit is one `BEGIN IMMEDIATE` transaction: the events as multi-row `INSERT`s of
//! [`INSERT_SHAPES`] rows (largest first, so a connection prepares at most fourteen statements
//! however its commits vary in size: the runtime coalesces a varying number of events into one
//! commit), the first of which carries the seq check against `MAX(seq)` (it inserts nothing
//! unless the log ends right before the commit's first seq: one statement fewer per commit), the
//! snapshot upsert and the outbox removals then puts. Everything is encoded
//! before the transaction starts, so the write lock is held only for SQL. A commit that fails
//! rolls back whole; the connection it used is closed rather than returned to the pool, because
//! SQLite may already have rolled the transaction back on its own (disk full, I/O error) and the
//! driver would no longer know the connection's transaction state.
//!
//! Durability: `synchronous = FULL`. The machine shows a committed event to clients right after
//! `commit` returns, so a commit must survive an OS crash or power loss as well as a process crash;
//! otherwise a seq a client already saw could be reused after a restart.
//!
//! Open files: pools are kept in an LRU cache ([`SqliteSessionStoreOptions::open_sessions`], by
//! default sized from the process's open-file limit by [`default_open_sessions`]: 128 under the
//! common limit of 1024, up to 1024) of at most [`CONNECTIONS_PER_SESSION`] connections each
//! (SQLite keeps three descriptors per connection in WAL mode: the database, the `-wal` and the
//! `-shm` files; idle connections close after [`IDLE_CONNECTION_TIMEOUT`], so an idle session
//! holds no descriptor and no connection thread while its pool stays cached). The cache must hold every session that
//! is streaming at once: a session whose pool was evicted reopens its file (and the evicted one
//! checkpoints) on its next commit, which cut a 1,000-session stream to a quarter of its rate with
//! 128 pools (`cargo xtask bench`). The least recently used pool that no call is using is closed
//! when a new session's pool would exceed the limit, so ten thousand sessions never hold ten
//! thousand open files; a pool in use is never closed under its caller (the cache may then exceed
//! the limit until those calls finish). The call that evicts a pool waits for it to close, which
//! includes SQLite's WAL checkpoint of that file; the cache lookup itself is a scan of at most
//! `open_sessions` entries under a mutex never held across an await. `list` checks each of the
//! org's files for a snapshot on a connection of its own, outside the cache.

use crate::sql::to_port;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqlitePool};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::protocol::EventEnvelope;
use switchboard_core::run::RunRecord;
use switchboard_core::session::{Commit, Persisted, Session, SessionSnapshot};
use switchboard_core::tenancy::SessionKey;
use switchboard_core::{OrgId, SessionId};
use switchboard_ports::{SessionStore, SessionStoreError};
use tokio::sync::OnceCell;

/// The schema migrations of a session database, `(version, sql)` in order. The database's
/// `PRAGMA user_version` is the last version applied.
const SCHEMA: &[(i64, &str)] = &[(1, include_str!("../../migrations/session/0001_session.sql"))];

/// The schema version this binary writes (the last of [`SCHEMA`]).
pub const SCHEMA_VERSION: i64 = 1;

/// Connections of one session's pool. One: a session's commits and reads take turns, and a read
/// of the event log runs on a task of its own, so it always finishes and gives the connection back
/// (a replay is a future the session's own task polls, and that task may be waiting for a commit
/// on the same connection). With two, a session's back-to-back commits opened the second whenever
/// the driver had not yet returned the first to the pool, so nearly every session paid for a
/// second connection (its own thread and SQLite's per-connection memory): about 90 KiB more per
/// session (`cargo xtask bench`, memory per session).
pub const CONNECTIONS_PER_SESSION: u32 = 1;

/// An idle connection of a cached pool is closed after this (the pool reconnects on its next use).
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The default size of the pool cache: half the process's open-file limit (`/proc/self/limits`)
/// spent on session databases at three descriptors per connection, within 128..=1024 (128 where
/// the limit cannot be read).
pub fn default_open_sessions() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse::<usize>().ok())
        });
    match soft {
        Some(soft) => (soft / 2 / (3 * CONNECTIONS_PER_SESSION as usize)).clamp(128, 1024),
        None => 128,
    }
}

/// How long a call waits for a connection of a session's pool, and for SQLite's write lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows per multi-row event `INSERT`, largest first (six bound values a row, well under SQLite's
/// variable limit). A commit's events are written as many of the largest as fit, then of the next:
/// the powers of two, so that below 64 each shape is used at most once (a statement is a round
/// trip to the connection's thread), in seven statements a connection prepares once each.
pub const INSERT_SHAPES: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// Splits `n` rows into chunk lengths drawn from [`INSERT_SHAPES`], largest first.
fn insert_chunks(mut n: usize) -> Vec<usize> {
    let mut chunks = Vec::new();
    for shape in INSERT_SHAPES {
        while n >= shape {
            chunks.push(shape);
            n -= shape;
        }
    }
    chunks
}

/// How a [`SqliteSessionStore`] opens its databases.
#[derive(Debug, Clone)]
pub struct SqliteSessionStoreOptions {
    /// How many sessions keep an open pool (least recently used ones are closed first).
    pub open_sessions: usize,
    /// Open every database read-only: loads and replays work, every commit fails `Unavailable`
    /// (for inspecting a data directory without touching it).
    pub read_only: bool,
    /// Extra `PRAGMA`s run on every new connection, e.g. `("max_page_count", "1000")` to cap the
    /// size of each database (a commit that would outgrow it fails `Unavailable`, writing nothing).
    pub pragmas: Vec<(String, String)>,
}

impl Default for SqliteSessionStoreOptions {
    fn default() -> Self {
        SqliteSessionStoreOptions {
            open_sessions: default_open_sessions(),
            read_only: false,
            pragmas: Vec::new(),
        }
    }
}

/// A [`SessionStore`] keeping one SQLite database per session under `<data_dir>/sessions`.
pub struct SqliteSessionStore {
    root: PathBuf,
    options: SqliteSessionStoreOptions,
    cache: Mutex<PoolCache>,
    /// A new session's database file as bytes (see [`SqliteSessionStore::create_database`]),
    /// made on the first creation.
    template: OnceCell<Arc<[u8]>>,
}

/// One session's pool, opened on first use. Callers hold the `Arc` while they use the pool, which
/// is how the cache knows not to close it under them.
#[derive(Default)]
struct Slot {
    pool: OnceCell<SqlitePool>,
}

#[derive(Default)]
struct PoolCache {
    /// Database path → its slot and when it was last used (a tick of `clock`).
    slots: HashMap<PathBuf, (Arc<Slot>, u64)>,
    clock: u64,
}

/// A cached pool, held for the duration of one call.
struct Lease {
    _slot: Arc<Slot>,
    pool: SqlitePool,
}

/// Why a database operation failed: a refusal of the store (already classified) or the driver.
enum Failure {
    Port(SessionStoreError),
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Sql(e)
    }
}

/// One event as its row is written.
struct EventRow {
    seq: i64,
    run_id: Option<String>,
    kind: String,
    at: i64,
    critical: bool,
    json: String,
}

/// A commit encoded for SQL, before its transaction starts. The snapshot is the machine's JSON
/// text, written as it is.
struct EncodedCommit {
    events: Vec<EventRow>,
    snapshot: Option<SessionSnapshot>,
    outbox_put: Vec<(String, String)>,
    outbox_remove: Vec<String>,
}

static PROBE: AtomicU64 = AtomicU64::new(0);
/// Numbers the temporary files of new session databases and of templates.
static NEW_FILES: AtomicU64 = AtomicU64::new(0);

impl SqliteSessionStore {
    /// Opens the store under `data_dir` with the default options, creating `<data_dir>/sessions`.
    /// A data directory that cannot be created or written is `Unavailable`.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, SessionStoreError> {
        Self::open_with(data_dir, SqliteSessionStoreOptions::default())
    }

    /// Opens the store under `data_dir`. Unless `read_only`, the sessions directory is created
    /// (mode 0700) and checked to be writable, so a bad data directory fails here, not at the
    /// first commit.
    pub fn open_with(
        data_dir: impl AsRef<Path>,
        options: SqliteSessionStoreOptions,
    ) -> Result<Self, SessionStoreError> {
        let root = data_dir.as_ref().join("sessions");
        if !options.read_only {
            let unavailable = |what: &str, e: std::io::Error| {
                SessionStoreError::Unavailable(format!(
                    "session data directory {}: {what}: {e}",
                    root.display()
                ))
            };
            create_private_dir_all(&root).map_err(|e| unavailable("cannot create it", e))?;
            let probe = root.join(format!(
                ".write-probe-{}-{}",
                std::process::id(),
                PROBE.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&probe, b"probe").map_err(|e| unavailable("cannot write in it", e))?;
            std::fs::remove_file(&probe).map_err(|e| unavailable("cannot write in it", e))?;
        }
        Ok(SqliteSessionStore {
            root,
            options: SqliteSessionStoreOptions {
                open_sessions: options.open_sessions.max(1),
                ..options
            },
            cache: Mutex::new(PoolCache::default()),
            template: OnceCell::new(),
        })
    }

    /// Where the databases live: `<data_dir>/sessions`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The database file of `key` (it exists once a commit was accepted).
    pub fn database_path(&self, key: &SessionKey) -> Result<PathBuf, SessionStoreError> {
        Ok(self.org_dir(key.org())?.join(format!(
            "{}.db",
            path_component("session", key.session().as_str())?
        )))
    }

    /// How many sessions are in the pool cache right now (each holds at most one open pool).
    pub fn open_pools(&self) -> usize {
        self.cache.lock().unwrap().slots.len()
    }

    /// Closes every open pool, waiting for calls in progress to return their connections. A
    /// later call opens its session again.
    pub async fn close(&self) {
        let slots: Vec<Arc<Slot>> = {
            let mut cache = self.cache.lock().unwrap();
            cache.slots.drain().map(|(_, (slot, _))| slot).collect()
        };
        for slot in slots {
            if let Some(pool) = slot.pool.get() {
                pool.close().await;
            }
        }
    }

    fn org_dir(&self, org: &OrgId) -> Result<PathBuf, SessionStoreError> {
        Ok(self.root.join(path_component("org", org.as_str())?))
    }

    fn connect_options(&self, path: &Path, create: bool) -> SqliteConnectOptions {
        let mut options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create && !self.options.read_only)
            .read_only(self.options.read_only)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(LOCK_TIMEOUT);
        for (key, value) in &self.options.pragmas {
            options = options.pragma(key.clone(), value.clone());
        }
        options
    }

    /// The pool of the database at `path`, opening (and, with `create`, creating) it when it is
    /// not cached. Opening applies the schema.
    async fn lease(&self, path: &Path, create: bool) -> Result<Lease, SessionStoreError> {
        let (slot, evicted) = {
            let mut cache = self.cache.lock().unwrap();
            cache.clock += 1;
            let now = cache.clock;
            let slot = match cache.slots.get_mut(path) {
                Some((slot, used)) => {
                    *used = now;
                    slot.clone()
                }
                None => {
                    let slot = Arc::new(Slot::default());
                    cache.slots.insert(path.to_path_buf(), (slot.clone(), now));
                    slot
                }
            };
            let evicted = cache.evict_beyond(self.options.open_sessions);
            (slot, evicted)
        };
        for pool in evicted {
            pool.close().await;
        }
        let pool = slot
            .pool
            .get_or_try_init(|| self.open_pool(path, create))
            .await?
            .clone();
        Ok(Lease { _slot: slot, pool })
    }

    /// The cached pool of `path` if one is open, without counting it as used.
    fn cached(&self, path: &Path) -> Option<Lease> {
        let cache = self.cache.lock().unwrap();
        let (slot, _) = cache.slots.get(path)?;
        let pool = slot.pool.get()?.clone();
        Some(Lease {
            _slot: slot.clone(),
            pool,
        })
    }

    async fn open_pool(&self, path: &Path, create: bool) -> Result<SqlitePool, SessionStoreError> {
        let context = format!("opening session database {}", path.display());
        let pool = SqlitePoolOptions::new()
            .max_connections(CONNECTIONS_PER_SESSION)
            .min_connections(0)
            .idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .acquire_timeout(LOCK_TIMEOUT)
            .connect_with(self.connect_options(path, create))
            .await
            .map_err(|e| to_port::<SessionStoreError>(&context, e))?;
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| to_port::<SessionStoreError>(&context, e))?;
        match apply_schema(&mut conn, path).await {
            Ok(()) => Ok(pool),
            Err(failure) => {
                conn.close_on_drop();
                drop(conn);
                pool.close().await;
                Err(failure.into_port(&context))
            }
        }
    }

    /// A connection of `lease`'s pool.
    async fn acquire(
        lease: &Lease,
        context: &str,
    ) -> Result<PoolConnection<Sqlite>, SessionStoreError> {
        lease
            .pool
            .acquire()
            .await
            .map_err(|e| to_port::<SessionStoreError>(context, e))
    }

    /// The port's answer for `result`; a connection whose operation failed in the driver is
    /// closed instead of going back to the pool.
    fn settle<T>(
        mut conn: PoolConnection<Sqlite>,
        result: Result<T, Failure>,
        context: &str,
    ) -> Result<T, SessionStoreError> {
        if let Err(Failure::Sql(_)) = &result {
            conn.close_on_drop();
        }
        result.map_err(|f| f.into_port(context))
    }

    /// Whether the session at `path` has a snapshot, on a cached pool or a connection of its own
    /// (so that listing an org does not churn the cache).
    async fn has_snapshot(&self, path: &Path) -> Result<bool, SessionStoreError> {
        let context = format!("reading session database {}", path.display());
        if let Some(lease) = self.cached(path) {
            let mut conn = Self::acquire(&lease, &context).await?;
            let result = snapshot_exists(&mut conn).await;
            return Self::settle(conn, result, &context);
        }
        let mut conn = SqliteConnection::connect_with(&self.connect_options(path, false))
            .await
            .map_err(|e| to_port::<SessionStoreError>(&context, e))?;
        let result = async {
            let version = user_version(&mut conn).await?;
            if version == 0 {
                // A file whose first commit never finished: no schema, no snapshot.
                return Ok(false);
            }
            refuse_newer(version, path)?;
            snapshot_exists(&mut conn).await
        }
        .await;
        let _ = conn.close().await;
        result.map_err(|f| f.into_port(&context))
    }

    /// Puts a new session's database at `path`, without SQLite's own creation: a copy of
    /// [`SqliteSessionStore::template`] (already in WAL mode, schema applied) is written to a
    /// temporary file beside it, flushed, then linked under the session's name. Creating the file
    /// through SQLite costs a rollback journal (created, written, synced twice, the directory
    /// synced, deleted) to switch it to WAL, then a second WAL commit for the schema.
    ///
    /// Crash safety: the session's name only ever holds the whole template (a crash leaves at
    /// most a hidden `.…new` file, which nothing reads); a template file without a snapshot is a
    /// session that does not exist, for `load` and `list` alike. The link is made durable by the
    /// first commit: SQLite creates the `-wal` in the same directory and syncs that directory
    /// before its first commit returns. A new org directory is synced into its parent here.
    async fn create_database(
        &self,
        key: &SessionKey,
        path: &Path,
    ) -> Result<(), SessionStoreError> {
        let template = self.template().await?;
        let org_dir = self.org_dir(key.org())?;
        let file_name = path.file_name().unwrap_or_default().to_string_lossy();
        let temporary = org_dir.join(format!(
            ".{file_name}.{}-{}.new",
            std::process::id(),
            NEW_FILES.fetch_add(1, Ordering::Relaxed)
        ));
        let path = path.to_path_buf();
        let context = format!("session {key}: creating {}", path.display());
        tokio::task::spawn_blocking(move || {
            install_database(&org_dir, &temporary, &path, &template)
        })
        .await
        .map_err(|e| SessionStoreError::Unavailable(format!("{context}: {e}")))?
        .map_err(|e| SessionStoreError::Unavailable(format!("{context}: {e}")))
    }

    /// The bytes of an empty session database in WAL mode with the schema applied, made once:
    /// SQLite creates it under `<root>` with this store's connection options, checkpoints and
    /// closes it; the file is read and removed.
    async fn template(&self) -> Result<Arc<[u8]>, SessionStoreError> {
        self.template
            .get_or_try_init(|| async {
                let path = self.root.join(format!(
                    ".template-{}-{}.db",
                    std::process::id(),
                    NEW_FILES.fetch_add(1, Ordering::Relaxed)
                ));
                let context = format!("making the new-session template {}", path.display());
                let made = async {
                    let mut conn =
                        SqliteConnection::connect_with(&self.connect_options(&path, true)).await?;
                    let applied = async {
                        apply_schema(&mut conn, &path).await?;
                        sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                            .execute(&mut conn)
                            .await?;
                        Ok::<(), Failure>(())
                    }
                    .await;
                    conn.close().await?;
                    applied?;
                    let bytes = tokio::fs::read(&path).await.map_err(|e| {
                        Failure::Port(SessionStoreError::Unavailable(format!(
                            "cannot read it: {e}"
                        )))
                    })?;
                    if !bytes.starts_with(b"SQLite format 3\0") {
                        return Err(Failure::Port(SessionStoreError::Unavailable(
                            "it is not an SQLite database".into(),
                        )));
                    }
                    Ok(Arc::from(bytes))
                }
                .await;
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = tokio::fs::remove_file(file).await;
                }
                made.map_err(|f| f.into_port(&context))
            })
            .await
            .cloned()
    }
}

impl PoolCache {
    /// Removes least recently used slots that no call holds until at most `limit` remain, and
    /// returns their open pools to be closed.
    fn evict_beyond(&mut self, limit: usize) -> Vec<SqlitePool> {
        let mut evicted = Vec::new();
        while self.slots.len() > limit {
            let victim = self
                .slots
                .iter()
                .filter(|(_, (slot, _))| Arc::strong_count(slot) == 1)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(path, _)| path.clone());
            let Some(victim) = victim else { break };
            if let Some((slot, _)) = self.slots.remove(&victim) {
                if let Some(pool) = slot.pool.get() {
                    evicted.push(pool.clone());
                }
            }
        }
        evicted
    }
}

impl Failure {
    fn into_port(self, context: &str) -> SessionStoreError {
        match self {
            Failure::Port(e) => e,
            Failure::Sql(e) => to_port(context, e),
        }
    }
}

/// `id` as one path component: ids are `[A-Za-z0-9_.-]` already, and `.` and `..` would name a
/// directory instead of a file of their own.
fn path_component<'a>(kind: &str, id: &'a str) -> Result<&'a str, SessionStoreError> {
    let safe = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if safe {
        Ok(id)
    } else {
        Err(SessionStoreError::Invalid(format!(
            "{kind} id {id:?} cannot name a session database file"
        )))
    }
}

/// Writes `template` to `temporary` (a new file), syncs it, links it as `path` and removes
/// `temporary`; an existing `path` is left as it is. Creates `org_dir` if needed, syncing its
/// parent when it made it.
fn install_database(
    org_dir: &Path,
    temporary: &Path,
    path: &Path,
    template: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !org_dir.is_dir() {
        create_private_dir_all(org_dir)?;
        if let Some(parent) = org_dir.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temporary)?;
    let written = file.write_all(template).and_then(|()| file.sync_all());
    drop(file);
    let linked = written.and_then(|()| match std::fs::hard_link(temporary, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let removed = std::fs::remove_file(temporary);
    linked.and(removed)
}

fn create_private_dir_all(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

async fn file_exists(path: &Path) -> Result<bool, SessionStoreError> {
    tokio::fs::try_exists(path).await.map_err(|e| {
        SessionStoreError::Unavailable(format!("cannot look for {}: {e}", path.display()))
    })
}

/// Checks that `commit`'s events continue a log ending at `last_seq` without a gap: a commit that
/// does not start at `last_seq + 1` is `Conflict`, a gap inside the commit is `Invalid`.
fn check_seqs(key: &SessionKey, last_seq: u64, commit: &Commit) -> Result<(), SessionStoreError> {
    let Some(first) = commit.events.first() else {
        return Ok(());
    };
    if first.seq != last_seq + 1 {
        return Err(SessionStoreError::Conflict(format!(
            "session {key}: commit starts at seq {} but the log ends at seq {last_seq}",
            first.seq
        )));
    }
    for pair in commit.events.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(SessionStoreError::Invalid(format!(
                "session {key}: commit holds seq {} after seq {}; a commit's events must be consecutive",
                pair[1].seq, pair[0].seq
            )));
        }
    }
    Ok(())
}

fn encode(key: &SessionKey, commit: &Commit) -> Result<EncodedCommit, SessionStoreError> {
    let invalid = |what: &str, e: serde_json::Error| {
        SessionStoreError::Invalid(format!("session {key}: cannot encode {what}: {e}"))
    };
    let mut events = Vec::with_capacity(commit.events.len());
    for event in &commit.events {
        let seq = i64::try_from(event.seq).map_err(|_| {
            SessionStoreError::Invalid(format!("session {key}: seq {} is too large", event.seq))
        })?;
        events.push(EventRow {
            seq,
            run_id: event.run_id.as_ref().map(|r| r.as_str().to_string()),
            kind: event.event.type_name().to_string(),
            at: i64::try_from(event.at.as_millis()).unwrap_or(i64::MAX),
            critical: event.critical,
            json: serde_json::to_string(event).map_err(|e| invalid("an event", e))?,
        });
    }
    let snapshot = commit.snapshot.clone();
    let mut outbox_put = Vec::with_capacity(commit.outbox_put.len());
    for record in &commit.outbox_put {
        let json = serde_json::to_string(record).map_err(|e| invalid("a run record", e))?;
        outbox_put.push((record.run_id.as_str().to_string(), json));
    }
    Ok(EncodedCommit {
        events,
        snapshot,
        outbox_put,
        outbox_remove: commit
            .outbox_remove
            .iter()
            .map(|r| r.as_str().to_string())
            .collect(),
    })
}

/// The `INSERT` of `rows` events, built once for each of [`INSERT_SHAPES`] (a 64-row statement
/// is over a kilobyte of text, and every commit names one or more). A `guarded` one inserts its
/// rows only when the log ends at the seq bound after them (its rows' `?`s, then one more):
/// the commit's seq check and its first insert in one statement.
fn insert_events_statement(rows: usize, guarded: bool) -> Arc<str> {
    type Statements = Vec<(usize, bool, Arc<str>)>;
    static STATEMENTS: std::sync::OnceLock<Statements> = std::sync::OnceLock::new();
    STATEMENTS
        .get_or_init(|| {
            INSERT_SHAPES
                .iter()
                .flat_map(|&shape| [(shape, false), (shape, true)])
                .map(|(shape, guarded)| (shape, guarded, insert_events_sql(shape, guarded).into()))
                .collect()
        })
        .iter()
        .find(|(shape, g, _)| *shape == rows && *g == guarded)
        .map(|(_, _, sql)| sql.clone())
        .unwrap_or_else(|| insert_events_sql(rows, guarded).into())
}

fn insert_events_sql(rows: usize, guarded: bool) -> String {
    let mut sql = String::from("INSERT INTO events (seq, run_id, type, at, critical, json) ");
    sql.push_str(if guarded {
        "SELECT * FROM (VALUES "
    } else {
        "VALUES "
    });
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?, ?, ?)");
    }
    if guarded {
        sql.push_str(") WHERE (SELECT COALESCE(MAX(seq), 0) FROM events) = ?");
    }
    sql
}

/// The commit's transaction. Refusals roll back explicitly; driver errors leave the rollback to
/// the transaction's drop and the caller closes the connection.
async fn write_commit(
    conn: &mut SqliteConnection,
    key: &SessionKey,
    commit: &Commit,
    encoded: EncodedCommit,
) -> Result<(), Failure> {
    // Where the commit starts is checked in SQL; that its events follow one another, here.
    let after = match commit.events.first() {
        Some(first) => match first.seq.checked_sub(1) {
            Some(after) => {
                check_seqs(key, after, commit).map_err(Failure::Port)?;
                Some(after)
            }
            None => {
                let tx = conn.begin().await?;
                return Err(refuse_start(tx, key, commit).await);
            }
        },
        None => None,
    };
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    // The rows move into the statements' arguments: no copy of their text. The first insert
    // carries the seq check: it inserts nothing unless the log ends at `after`.
    let mut rows = encoded.events.into_iter();
    for (i, len) in insert_chunks(rows.len()).into_iter().enumerate() {
        let guard = after.filter(|_| i == 0);
        let sql = insert_events_statement(len, guard.is_some());
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in rows.by_ref().take(len) {
            insert = insert
                .bind(row.seq)
                .bind(row.run_id)
                .bind(row.kind)
                .bind(row.at)
                .bind(row.critical)
                .bind(row.json);
        }
        if let Some(after) = guard {
            insert = insert.bind(i64::try_from(after).unwrap_or(i64::MAX));
        }
        let inserted = insert.execute(&mut *tx).await?.rows_affected();
        if guard.is_some() && inserted == 0 {
            return Err(refuse_start(tx, key, commit).await);
        }
    }
    if let Some(snapshot) = &encoded.snapshot {
        sqlx::query(
            "INSERT INTO snapshot (id, json) VALUES (1, ?) \
             ON CONFLICT (id) DO UPDATE SET json = excluded.json",
        )
        .bind(snapshot.shared_text())
        .execute(&mut *tx)
        .await?;
    }
    // Removals first, then puts: a commit that removes and re-puts a run keeps its record.
    for run_id in &encoded.outbox_remove {
        sqlx::query("DELETE FROM outbox WHERE run_id = ?")
            .bind(run_id.clone())
            .execute(&mut *tx)
            .await?;
    }
    for (run_id, json) in &encoded.outbox_put {
        sqlx::query(
            "INSERT INTO outbox (run_id, json) VALUES (?, ?) \
             ON CONFLICT (run_id) DO UPDATE SET json = excluded.json",
        )
        .bind(run_id.clone())
        .bind(json.clone())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The refusal of a commit that does not start right after the log's last seq (`Conflict`,
/// naming where the log ends), once the transaction `tx` is rolled back.
async fn refuse_start(
    mut tx: sqlx::Transaction<'_, Sqlite>,
    key: &SessionKey,
    commit: &Commit,
) -> Failure {
    let last: Result<i64, sqlx::Error> =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
            .fetch_one(&mut *tx)
            .await;
    let last = match last {
        Ok(last) => last,
        Err(e) => return Failure::Sql(e),
    };
    if let Err(e) = tx.rollback().await {
        return Failure::Sql(e);
    }
    let first = commit.events.first().map_or(0, |e| e.seq);
    Failure::Port(
        check_seqs(key, last.max(0) as u64, commit)
            .err()
            .unwrap_or_else(|| {
                SessionStoreError::Conflict(format!(
            "session {key}: the log moved while a commit starting at seq {first} was written"
        ))
            }),
    )
}

async fn user_version(conn: &mut SqliteConnection) -> Result<i64, Failure> {
    Ok(sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?)
}

fn refuse_newer(version: i64, path: &Path) -> Result<(), Failure> {
    if version > SCHEMA_VERSION {
        return Err(Failure::Port(SessionStoreError::Conflict(format!(
            "session database {} has schema version {version}, which this binary does not know \
             (it knows up to {SCHEMA_VERSION}): it was written by a newer Switchboard",
            path.display()
        ))));
    }
    Ok(())
}

/// Brings the database's schema to [`SCHEMA_VERSION`] (idempotent; refuses a newer schema).
async fn apply_schema(conn: &mut SqliteConnection, path: &Path) -> Result<(), Failure> {
    let version = user_version(conn).await?;
    refuse_newer(version, path)?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    // Another process may have migrated it while this one waited for the lock.
    let version = user_version(&mut tx).await?;
    refuse_newer(version, path)?;
    for (step, sql) in SCHEMA.iter().filter(|(v, _)| *v > version) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        // PRAGMA takes no bound parameters; the version is one of our constants.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {step}")))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn snapshot_exists(conn: &mut SqliteConnection) -> Result<bool, Failure> {
    Ok(
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM snapshot)")
            .fetch_one(&mut *conn)
            .await?,
    )
}

fn corrupt(key: &SessionKey, what: &str, e: serde_json::Error) -> Failure {
    Failure::Port(SessionStoreError::Corrupt(format!(
        "session {key}: stored {what} does not decode: {e}"
    )))
}

async fn read_persisted(
    conn: &mut SqliteConnection,
    key: &SessionKey,
) -> Result<Option<Persisted>, Failure> {
    // One read transaction: the snapshot, the outbox and the events are of the same commit.
    let mut tx = conn.begin().await?;
    let snapshot: Option<String> = sqlx::query_scalar("SELECT json FROM snapshot WHERE id = 1")
        .fetch_optional(&mut *tx)
        .await?;
    let Some(snapshot) = snapshot else {
        tx.rollback().await?;
        return Ok(None);
    };
    // Kept as the text it was written as; only checked to be JSON here (the machine reads it).
    serde_json::from_str::<serde::de::IgnoredAny>(&snapshot)
        .map_err(|e| corrupt(key, "snapshot", e))?;
    let snapshot = SessionSnapshot::from_json(snapshot);
    let outbox: Vec<String> = sqlx::query_scalar("SELECT json FROM outbox ORDER BY rowid")
        .fetch_all(&mut *tx)
        .await?;
    let outbox = outbox
        .iter()
        .map(|json| serde_json::from_str::<RunRecord>(json))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(key, "outbox record", e))?;
    let active_run_events = match Session::active_run_first_seq(&snapshot) {
        Some((run_id, first_seq)) => {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT json FROM events WHERE seq >= ? AND run_id = ? ORDER BY seq",
            )
            .bind(i64::try_from(first_seq).unwrap_or(i64::MAX))
            .bind(run_id.as_str().to_string())
            .fetch_all(&mut *tx)
            .await?;
            decode_events(key, &rows)?
        }
        None => Vec::new(),
    };
    tx.commit().await?;
    Ok(Some(Persisted {
        snapshot,
        outbox,
        active_run_events,
    }))
}

async fn read_events(
    conn: &mut SqliteConnection,
    key: &SessionKey,
    after: i64,
    limit: i64,
) -> Result<Vec<EventEnvelope>, Failure> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT json FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
    decode_events(key, &rows)
}

fn decode_events(key: &SessionKey, rows: &[String]) -> Result<Vec<EventEnvelope>, Failure> {
    rows.iter()
        .map(|json| serde_json::from_str::<EventEnvelope>(json))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(key, "event", e))
}

#[async_trait::async_trait]
impl SessionStore for SqliteSessionStore {
    async fn commit(&self, key: &SessionKey, commit: &Commit) -> Result<(), SessionStoreError> {
        let path = self.database_path(key)?;
        if commit.is_empty() {
            return Ok(());
        }
        let encoded = encode(key, commit)?;
        // An open pool means the file exists: only a session's first commit looks (on a blocking
        // thread) for its file.
        if self.cached(&path).is_none() && !file_exists(&path).await? {
            // A refused first commit creates no file.
            check_seqs(key, 0, commit)?;
            if !self.options.read_only {
                self.create_database(key, &path).await?;
            }
        }
        let lease = self.lease(&path, true).await?;
        let context = format!("session {key}: commit");
        let mut conn = Self::acquire(&lease, &context).await?;
        let result = write_commit(&mut conn, key, commit, encoded).await;
        Self::settle(conn, result, &context)
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Persisted>, SessionStoreError> {
        let path = self.database_path(key)?;
        if !file_exists(&path).await? {
            return Ok(None);
        }
        let lease = self.lease(&path, false).await?;
        let context = format!("session {key}: load");
        let mut conn = Self::acquire(&lease, &context).await?;
        let result = read_persisted(&mut conn, key).await;
        Self::settle(conn, result, &context)
    }

    async fn events(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, SessionStoreError> {
        let path = self.database_path(key)?;
        let Ok(after) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        if limit == 0 || !file_exists(&path).await? {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let lease = self.lease(&path, false).await?;
        let context = format!("session {key}: events after {after}");
        // On a task of its own: the read finishes and gives its connection back even if the
        // caller stops polling it (a replay is polled by the session's task, which may be waiting
        // for a commit of the same session, on the same connection).
        let key = key.clone();
        let read = tokio::spawn(async move {
            let mut conn = Self::acquire(&lease, &context).await?;
            let result = read_events(&mut conn, &key, after, limit).await;
            Self::settle(conn, result, &context)
        });
        read.await.map_err(|e| {
            SessionStoreError::Unavailable(format!("reading the event log failed: {e}"))
        })?
    }

    async fn list(&self, org: &OrgId) -> Result<Vec<SessionId>, SessionStoreError> {
        let dir = self.org_dir(org)?;
        let unavailable = |e: std::io::Error| {
            SessionStoreError::Unavailable(format!("cannot list {}: {e}", dir.display()))
        };
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(e)),
        };
        let mut candidates = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(unavailable)? {
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".db")) else {
                continue;
            };
            let Ok(session) = SessionId::parse(stem) else {
                continue;
            };
            if path_component("session", session.as_str()).is_err() {
                continue;
            }
            if entry.file_type().await.map_err(unavailable)?.is_file() {
                candidates.push((session, entry.path()));
            }
        }
        candidates.sort();
        let mut sessions = Vec::with_capacity(candidates.len());
        for (session, path) in candidates {
            if self.has_snapshot(&path).await? {
                sessions.push(session);
            }
        }
        Ok(sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_ids_cannot_name_a_file() {
        for id in [".", "..", "", "a/b"] {
            assert!(matches!(
                path_component("session", id),
                Err(SessionStoreError::Invalid(_))
            ));
        }
        assert_eq!(path_component("session", "s-1.x_y").unwrap(), "s-1.x_y");
    }

    #[test]
    fn the_event_insert_binds_six_values_a_row_and_the_guarded_one_the_seq_before() {
        let sql = insert_events_sql(3, false);
        assert_eq!(sql.matches('?').count(), 18);
        assert!(sql.ends_with("(?, ?, ?, ?, ?, ?)"));
        let guarded = insert_events_sql(3, true);
        assert_eq!(guarded.matches('?').count(), 19);
        assert!(guarded.ends_with("WHERE (SELECT COALESCE(MAX(seq), 0) FROM events) = ?"));
        for rows in INSERT_SHAPES.into_iter().chain([3]) {
            for guard in [false, true] {
                assert_eq!(
                    &*insert_events_statement(rows, guard),
                    insert_events_sql(rows, guard)
                );
            }
        }
    }

    #[test]
    fn events_are_inserted_in_seven_statement_shapes() {
        assert_eq!(insert_chunks(0), Vec::<usize>::new());
        assert_eq!(insert_chunks(1), vec![1]);
        assert_eq!(insert_chunks(75), vec![64, 8, 2, 1]);
        assert_eq!(insert_chunks(63), vec![32, 16, 8, 4, 2, 1]);
        assert_eq!(insert_chunks(192), vec![64, 64, 64]);
        for n in 0..300 {
            let chunks = insert_chunks(n);
            assert_eq!(chunks.iter().sum::<usize>(), n);
            assert!(chunks.iter().all(|c| INSERT_SHAPES.contains(c)));
            assert!(chunks.windows(2).all(|w| w[0] >= w[1]), "largest first");
            let below_64: Vec<&usize> = chunks.iter().filter(|&&c| c < 64).collect();
            assert!(
                below_64.windows(2).all(|w| w[0] > w[1]),
                "each shape under 64 at most once: {chunks:?}"
            );
        }
    }

    #[test]
    fn the_pool_cache_is_sized_from_the_open_file_limit() {
        let n = default_open_sessions();
        assert!((128..=1024).contains(&n), "{n}");
    }

    #[test]
    fn the_schema_version_is_the_last_migration() {
        assert_eq!(SCHEMA.last().map(|s| s.0), Some(SCHEMA_VERSION));
    }

    /// A session database made from the template (as a crash right after it would leave it):
    /// already in WAL mode at the current schema, and no session until a commit lands.
    #[tokio::test]
    async fn a_database_made_from_the_template_is_no_session_until_its_first_commit() {
        let dir = std::env::temp_dir().join(format!(
            "sb-session-template-{}-{}",
            std::process::id(),
            NEW_FILES.fetch_add(1, Ordering::Relaxed)
        ));
        let store = SqliteSessionStore::open(&dir).unwrap();
        let org = OrgId::parse("org-t").unwrap();
        let key = SessionKey::from_host_storage(org.clone(), SessionId::parse("s1").unwrap());
        let path = store.database_path(&key).unwrap();
        store.create_database(&key, &path).await.unwrap();
        let org_dir = path.parent().unwrap();
        // A temporary file a crash left behind is nobody's database.
        std::fs::write(org_dir.join(".s2.db.1-1.new"), b"torn").unwrap();
        let names: Vec<String> = std::fs::read_dir(org_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "only the session's file beside it: {names:?}"
        );
        {
            let mut conn = SqliteConnection::connect_with(
                &SqliteConnectOptions::new().filename(&path).read_only(true),
            )
            .await
            .unwrap();
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            assert_eq!(user_version(&mut conn).await.ok(), Some(SCHEMA_VERSION));
            conn.close().await.unwrap();
        }
        assert!(store.load(&key).await.unwrap().is_none());
        assert_eq!(store.list(&org).await.unwrap(), Vec::<SessionId>::new());
        // A second creation leaves the file as it is.
        store.create_database(&key, &path).await.unwrap();

        let commit = Commit {
            events: Vec::new(),
            snapshot: Some(SessionSnapshot::from_json(r#"{"v":1}"#.to_string())),
            outbox_put: Vec::new(),
            outbox_remove: Vec::new(),
        };
        store.commit(&key, &commit).await.unwrap();
        assert!(store.load(&key).await.unwrap().is_some());
        assert_eq!(store.list(&org).await.unwrap(), vec![key.session().clone()]);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
