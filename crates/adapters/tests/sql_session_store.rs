//! `SqliteSessionStore` against real files: the un-ACKed critical events and the ledger outbox
//! survive a process crash (the store dropped without shutdown, and a process aborted mid-life),
//! and the store's faults end with the documented class and nothing half-written: an unusable
//! data directory at start, a read-only database, a full database, a newer schema, path tricks.
//! Also: big commits are batched and come back in seq order, and open files stay bounded.

use std::path::Path;
use std::time::{Duration, Instant};
use switchboard_adapters::sql::scratch::ScratchDir;
use switchboard_adapters::sql::session_store::{
    SqliteSessionStore, SqliteSessionStoreOptions, CONNECTIONS_PER_SESSION,
};
use switchboard_core::crypto::TokenHash;
use switchboard_core::protocol::{
    Event, EventEnvelope, SandboxMessage, ServerFrame, TerminalStatus, Usage,
};
use switchboard_core::run::RunRecord;
use switchboard_core::session::{
    Commit, Effect, Input, Session, SessionConfig, SessionInit, SessionSnapshot,
};
use switchboard_core::tenancy::{Attribution, SessionKey};
use switchboard_core::{
    ConnId, ErrorClass, ModelRef, OrgId, RunId, SandboxId, SessionId, Timestamp, UserId,
};
use switchboard_ports::{Classify, SessionStore};

const T0: u64 = 1_767_225_600_000;

fn key(org: &str, session: &str) -> SessionKey {
    SessionKey::from_host_storage(
        OrgId::parse(org).expect("a valid org id"),
        SessionId::parse(session).expect("a valid session id"),
    )
}

fn run(id: &str) -> RunId {
    RunId::parse(id).expect("a valid run id")
}

fn event(seq: u64, text: &str) -> EventEnvelope {
    EventEnvelope {
        seq,
        run_id: None,
        at: Timestamp::from_millis(T0 + seq),
        critical: false,
        event: Event::MessageDelta {
            text: text.to_string(),
        },
    }
}

fn events(seqs: std::ops::RangeInclusive<u64>) -> Vec<EventEnvelope> {
    seqs.map(|s| event(s, &format!("event {s}"))).collect()
}

fn snapshot(version: u64) -> SessionSnapshot {
    SessionSnapshot::from_value(&serde_json::json!({ "case_version": version }))
}

fn record(k: &SessionKey, run_id: &str) -> RunRecord {
    RunRecord {
        run_id: run(run_id),
        session_id: k.session().clone(),
        org_id: k.org().clone(),
        user_id: UserId::parse("user-1").expect("a valid user id"),
        api_key_id: None,
        model: ModelRef::parse("anthropic/claude-sonnet-4").expect("a valid model"),
        provider: "anthropic".into(),
        status: TerminalStatus::Completed,
        queued_at: Timestamp::from_millis(T0),
        started_at: Some(Timestamp::from_millis(T0 + 1)),
        ended_at: Timestamp::from_millis(T0 + 2),
        usage: Usage {
            input_tokens: 10,
            output_tokens: 20,
        },
        cost_micros: 7,
        error: None,
        event_count: 3,
        events: Vec::new(),
    }
}

fn seqs(events: &[EventEnvelope]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// What a reader sees of one session: its whole log, snapshot and outbox run ids.
#[derive(Debug, PartialEq)]
struct Seen {
    seqs: Vec<u64>,
    snapshot: Option<SessionSnapshot>,
    outbox: Vec<RunId>,
}

async fn seen(store: &SqliteSessionStore, k: &SessionKey) -> Seen {
    let loaded = store.load(k).await.expect("load");
    Seen {
        seqs: seqs(&store.events(k, 0, 100_000).await.expect("events")),
        snapshot: loaded.as_ref().map(|p| p.snapshot.clone()),
        outbox: loaded
            .map(|p| p.outbox.into_iter().map(|r| r.run_id).collect())
            .unwrap_or_default(),
    }
}

/// The first commit every fault case starts from, and the second one the fault refuses.
fn baseline(k: &SessionKey) -> (Commit, Commit) {
    let first = Commit {
        events: events(1..=2),
        snapshot: Some(snapshot(1)),
        outbox_put: vec![record(k, "r1")],
        outbox_remove: vec![],
    };
    let second = Commit {
        events: events(3..=4),
        snapshot: Some(snapshot(2)),
        outbox_put: vec![record(k, "r2")],
        outbox_remove: vec![run("r1")],
    };
    (first, second)
}

fn baseline_seen() -> Seen {
    Seen {
        seqs: vec![1, 2],
        snapshot: Some(snapshot(1)),
        outbox: vec![run("r1")],
    }
}

fn after_second_seen() -> Seen {
    Seen {
        seqs: vec![1, 2, 3, 4],
        snapshot: Some(snapshot(2)),
        outbox: vec![run("r2")],
    }
}

/// Whether this process can write a file whose mode forbids it (root can): then a chmod makes
/// nothing read-only and the chmod half of a case cannot run.
fn permissions_are_bypassed(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let probe = dir.join("permission-probe");
    std::fs::write(&probe, b"x").expect("write the probe");
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    let bypassed = std::fs::OpenOptions::new()
        .append(true)
        .open(&probe)
        .is_ok();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::remove_file(&probe).expect("remove the probe");
    bypassed
}

// ----- the session machine, driven as a shell would --------------------------------------------

const ORG: &str = "org-crash";
const SESSION: &str = "session-crash";
const RUN: &str = "run-1";

/// Handles one input, commits its `Persist` and returns the other effects.
async fn step(
    store: &dyn SessionStore,
    machine: &mut Session,
    now: Timestamp,
    input: Input,
) -> Vec<Effect> {
    let label = format!("{input:?}");
    machine
        .handle(now, input)
        .unwrap_or_else(|r| panic!("the machine refused {label}: {r}"));
    drain(store, machine).await
}

/// Commits every `Persist` queued in `machine` and returns the other effects.
async fn drain(store: &dyn SessionStore, machine: &mut Session) -> Vec<Effect> {
    let mut others = Vec::new();
    while let Some(effect) = machine.poll_effect() {
        match effect {
            Effect::Persist(commit) => store
                .commit(machine.key(), &commit)
                .await
                .expect("a commit of the machine"),
            other => others.push(other),
        }
    }
    others
}

/// What the first life of the session left behind, as the machine showed it.
#[derive(Debug, PartialEq)]
struct FirstLife {
    last_seq: u64,
    /// Critical events delivered to the attached client, which never ACKed them.
    unacked: Vec<u64>,
}

/// A session with a client attached runs one prompt to completion: `execution_complete` (critical)
/// reaches the client, which does not ACK it, and the run record goes to the outbox and out as
/// `RecordRun`, which the ledger never answers.
async fn first_life(store: &dyn SessionStore) -> FirstLife {
    let by = Attribution {
        user_id: UserId::parse("user-1").expect("a valid user id"),
        api_key_id: None,
    };
    let init = SessionInit {
        key: key(ORG, SESSION),
        model: ModelRef::parse("anthropic/claude-sonnet-4").expect("a valid model"),
        agent: "opencode".into(),
        repo: None,
        created_by: by.clone(),
        permissions: None,
    };
    let mut now = Timestamp::from_millis(T0);
    let mut machine = Session::new(now, SessionConfig::default(), init);
    let effects = step(store, &mut machine, now, Input::Start).await;
    let spawn = effects
        .iter()
        .find_map(|e| match e {
            Effect::SpawnSandbox { spawn, .. } => Some(*spawn),
            _ => None,
        })
        .expect("a spawn after Start");
    let (sandbox, client) = (ConnId(1), ConnId(100));
    let token_hash = TokenHash([7; 32]);
    let run_id = run(RUN);
    let inputs = vec![
        Input::SandboxTokenIssued {
            spawn,
            token_hash: token_hash.clone(),
        },
        Input::SpawnResult {
            spawn,
            result: Ok(SandboxId::parse("sbx-1").expect("a valid sandbox id")),
        },
        Input::SandboxConnect {
            conn: sandbox,
            token_hash,
        },
        Input::ClientAttached {
            conn: client,
            after: None,
        },
        Input::Prompt {
            run_id: run_id.clone(),
            by,
            text: "hello".into(),
            client_msg_id: None,
            conn: None,
        },
        Input::DispatchResult {
            run_id: run_id.clone(),
            result: Ok(None),
        },
        Input::SandboxMessage {
            conn: sandbox,
            message: SandboxMessage::Event {
                run_id: run_id.clone(),
                n: 1,
                event: Event::MessageDelta {
                    text: "hi there".into(),
                },
            },
        },
        Input::SandboxMessage {
            conn: sandbox,
            message: SandboxMessage::RunFinished {
                run_id: run_id.clone(),
                n: 2,
                status: TerminalStatus::Completed,
                stop_reason: None,
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 4,
                },
                error: None,
            },
        },
    ];
    let mut unacked = Vec::new();
    let mut recorded = Vec::new();
    for input in inputs {
        now = now.add(Duration::from_millis(10));
        for effect in step(store, &mut machine, now, input).await {
            match effect {
                Effect::Deliver {
                    to,
                    frame: ServerFrame::Event(e),
                } if e.critical && to.contains(&client) => unacked.push(e.seq),
                Effect::RecordRun(record) => recorded.push(record.run_id),
                _ => {}
            }
        }
    }
    assert_eq!(
        recorded,
        vec![run_id],
        "the finished run goes to the ledger once"
    );
    assert!(
        !unacked.is_empty(),
        "execution_complete reached the client as a critical event"
    );
    FirstLife {
        last_seq: machine.info().last_seq,
        unacked,
    }
}

/// Reopens the data directory in a new store and rebuilds the session: the outbox record goes
/// out again as `RecordRun`, and a client attaching after the last seq gets the un-ACKed critical
/// events re-sent.
async fn second_life(data_dir: &Path, first: &FirstLife) {
    let store = SqliteSessionStore::open(data_dir).expect("reopen the store");
    let k = key(ORG, SESSION);
    assert_eq!(
        store.list(k.org()).await.expect("list"),
        vec![k.session().clone()]
    );
    let persisted = store
        .load(&k)
        .await
        .expect("load")
        .expect("the session survived");
    assert_eq!(
        persisted
            .outbox
            .iter()
            .map(|r| r.run_id.clone())
            .collect::<Vec<_>>(),
        vec![run(RUN)],
        "the outbox survived"
    );
    let now = Timestamp::from_millis(T0 + 60_000);
    let mut machine = Session::restore(now, SessionConfig::default(), persisted).expect("restore");
    assert_eq!(machine.info().last_seq, first.last_seq, "no seq lost");
    let effects = drain(&store, &mut machine).await;
    let re_recorded: Vec<RunId> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::RecordRun(record) => Some(record.run_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        re_recorded,
        vec![run(RUN)],
        "the outbox record is flushed to the ledger again"
    );

    let client = ConnId(200);
    let effects = step(
        &store,
        &mut machine,
        now,
        Input::ClientAttached {
            conn: client,
            after: Some(first.last_seq),
        },
    )
    .await;
    let resent: Vec<&EventEnvelope> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Resend { to, events } if to == &vec![client] => Some(events),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        resent.iter().map(|e| e.seq).collect::<Vec<_>>(),
        first.unacked,
        "the un-ACKed critical events are re-sent on attach"
    );
    assert!(
        resent.iter().any(|e| matches!(
            e.event,
            Event::ExecutionComplete {
                status: TerminalStatus::Completed,
                ..
            }
        ) && e.run_id == Some(run(RUN))),
        "execution_complete of the run is among them: {resent:?}"
    );
    let log = store.events(&k, 0, 10_000).await.expect("events");
    for e in &resent {
        assert!(
            log.contains(e),
            "a re-sent event is the persisted one: {e:?}"
        );
    }
}

#[tokio::test]
async fn dropping_the_store_without_shutdown_keeps_unacked_events_and_the_outbox() {
    let dir = ScratchDir::create("sb-session-drop").unwrap();
    let store = SqliteSessionStore::open(dir.path()).unwrap();
    let first = first_life(&store).await;
    drop(store);
    second_life(dir.path(), &first).await;
}

/// The environment variable that makes this test binary the crashing child.
const CRASH_CHILD: &str = "SB_SESSION_STORE_CRASH_CHILD";

/// A real crash: a child process runs the first life and aborts (no destructor, no checkpoint of
/// the WAL, no connection closed); the parent then reopens the files.
#[test]
fn an_aborted_process_keeps_unacked_events_and_the_outbox() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(data_dir) = std::env::var(CRASH_CHILD) {
        let first = runtime.block_on(async {
            let store = SqliteSessionStore::open(&data_dir).unwrap();
            first_life(&store).await
        });
        let unacked: Vec<String> = first.unacked.iter().map(u64::to_string).collect();
        println!(
            "FIRST_LIFE last_seq={} unacked={}",
            first.last_seq,
            unacked.join(",")
        );
        std::process::abort();
    }

    let dir = ScratchDir::create("sb-session-abort").unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "an_aborted_process_keeps_unacked_events_and_the_outbox",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CRASH_CHILD, dir.path())
        .output()
        .unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            output.status.signal(),
            Some(6),
            "the child aborts: {output:?}"
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("FIRST_LIFE ").map(|(_, rest)| rest.trim()))
        .unwrap_or_else(|| panic!("the child reported its first life: {stdout}"));
    let mut first = FirstLife {
        last_seq: 0,
        unacked: Vec::new(),
    };
    for field in line.split(' ') {
        match field.split_once('=') {
            Some(("last_seq", v)) => first.last_seq = v.parse().unwrap(),
            Some(("unacked", v)) => {
                first.unacked = v.split(',').map(|s| s.parse().unwrap()).collect()
            }
            _ => panic!("unexpected field {field:?}"),
        }
    }
    assert!(first.last_seq > 0 && !first.unacked.is_empty(), "{line}");
    let wal = dir
        .path()
        .join("sessions")
        .join(ORG)
        .join(format!("{SESSION}.db-wal"));
    assert!(
        wal.exists(),
        "the crash left the WAL un-checkpointed (the case reads committed data from it)"
    );
    runtime.block_on(second_life(dir.path(), &first));
}

// ----- faults -----------------------------------------------------------------------------------

#[test]
fn an_unusable_data_directory_is_unavailable_at_start() {
    let dir = ScratchDir::create("sb-session-unusable").unwrap();
    let file = dir.join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let started = Instant::now();
    let err = SqliteSessionStore::open(file.join("data"))
        .err()
        .expect("a file as data dir");
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "it fails promptly"
    );

    let locked = dir.join("locked");
    std::fs::create_dir(&locked).unwrap();
    if permissions_are_bypassed(dir.path()) {
        eprintln!("the chmod half is not run: this process writes through file modes (root)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let err = SqliteSessionStore::open(&locked)
        .err()
        .expect("a read-only data dir");
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    assert!(
        std::fs::read_dir(&locked).unwrap().next().is_none(),
        "nothing was created"
    );
}

#[tokio::test]
async fn a_read_only_database_refuses_the_commit_and_keeps_everything() {
    let dir = ScratchDir::create("sb-session-ro").unwrap();
    let k = key("org-ro", "s1");
    let (first, second) = baseline(&k);
    let store = SqliteSessionStore::open(dir.path()).unwrap();
    store.commit(&k, &first).await.unwrap();
    store.close().await;

    // The database opened read-only, as on a read-only disk: reads work, the commit does not.
    let read_only = SqliteSessionStore::open_with(
        dir.path(),
        SqliteSessionStoreOptions {
            read_only: true,
            ..SqliteSessionStoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(seen(&read_only, &k).await, baseline_seen());
    let err = read_only.commit(&k, &second).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    let err = read_only
        .commit(&key("org-ro", "new"), &first)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable, "a new session: {err}");
    read_only.close().await;
    assert_eq!(
        seen(&store, &k).await,
        baseline_seen(),
        "nothing of it written"
    );
    assert!(store.load(&key("org-ro", "new")).await.unwrap().is_none());

    // The file and its directory made read-only by their modes.
    let path = store.database_path(&k).unwrap();
    let org_dir = path.parent().unwrap().to_path_buf();
    if permissions_are_bypassed(dir.path()) {
        eprintln!("the chmod half is not run: this process writes through file modes (root)");
    } else {
        store.close().await;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        std::fs::set_permissions(&org_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let err = store.commit(&k, &second).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
        store.close().await;
        std::fs::set_permissions(&org_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            seen(&store, &k).await,
            baseline_seen(),
            "nothing of it written"
        );
    }

    // Healed: the same commit lands.
    store.commit(&k, &second).await.unwrap();
    assert_eq!(seen(&store, &k).await, after_second_seen());
}

#[tokio::test]
async fn a_full_database_refuses_the_commit_and_writes_nothing() {
    let dir = ScratchDir::create("sb-session-full").unwrap();
    let k = key("org-full", "s1");
    let (first, _) = baseline(&k);
    let store = SqliteSessionStore::open(dir.path()).unwrap();
    store.commit(&k, &first).await.unwrap();
    store.close().await;
    let pages: i64 = {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new().filename(store.database_path(&k).unwrap()),
        )
        .await
        .unwrap();
        let pages = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        pages
    };

    // A disk with room for two more pages: the big commit needs hundreds.
    let full = SqliteSessionStore::open_with(
        dir.path(),
        SqliteSessionStoreOptions {
            pragmas: vec![("max_page_count".into(), (pages + 2).to_string())],
            ..SqliteSessionStoreOptions::default()
        },
    )
    .unwrap();
    let big = Commit {
        events: (3..=402).map(|s| event(s, &"x".repeat(4096))).collect(),
        snapshot: Some(snapshot(2)),
        outbox_put: vec![record(&k, "r2")],
        outbox_remove: vec![run("r1")],
    };
    let err = full.commit(&k, &big).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    assert_eq!(
        seen(&full, &k).await,
        baseline_seen(),
        "nothing half-written"
    );
    // The store still works on the full disk for what fits (reads, and a retry still refused).
    let err = full.commit(&k, &big).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    full.close().await;

    // Room again: the same commit lands whole, its seqs unconsumed by the failed attempts.
    store.commit(&k, &big).await.unwrap();
    let after = seen(&store, &k).await;
    assert_eq!(after.seqs, (1..=402).collect::<Vec<_>>());
    assert_eq!(after.snapshot, Some(snapshot(2)));
    assert_eq!(after.outbox, vec![run("r2")]);
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused_and_left_alone() {
    let dir = ScratchDir::create("sb-session-newer").unwrap();
    let k = key("org-newer", "s1");
    let (first, second) = baseline(&k);
    let store = SqliteSessionStore::open(dir.path()).unwrap();
    store.commit(&k, &first).await.unwrap();
    store.close().await;
    let path = store.database_path(&k).unwrap();
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
        )
        .await
        .unwrap();
        sqlx::query("PRAGMA user_version = 99")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let reopened = SqliteSessionStore::open(dir.path()).unwrap();
    let err = reopened.load(&k).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{err}");
    assert!(err.to_string().contains("99"), "{err}");
    let err = reopened.commit(&k, &second).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{err}");
    let err = reopened.list(k.org()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Conflict, "{err}");
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new().filename(&path),
        )
        .await
        .unwrap();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(count, 2, "the refused commit wrote nothing");
        conn.close().await.unwrap();
    }
}

#[tokio::test]
async fn dot_ids_cannot_escape_the_data_directory() {
    let dir = ScratchDir::create("sb-session-dots").unwrap();
    let store = SqliteSessionStore::open(dir.path()).unwrap();
    for (org, session) in [("..", "s1"), (".", "s1"), ("o1", ".."), ("o1", ".")] {
        let k = key(org, session);
        let (first, _) = baseline(&k);
        let err = store.commit(&k, &first).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Invalid, "{org}/{session}: {err}");
        let err = store.load(&k).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Invalid, "{org}/{session}: {err}");
    }
    let err = store.list(&OrgId::parse("..").unwrap()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Invalid, "{err}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec!["sessions"],
        "nothing beside the sessions directory"
    );
    assert!(
        std::fs::read_dir(dir.join("sessions"))
            .unwrap()
            .next()
            .is_none(),
        "nothing inside it either"
    );
}

// ----- batching and open files -----------------------------------------------------------------

#[tokio::test]
async fn a_big_commit_lands_whole_and_replays_in_seq_order() {
    let dir = ScratchDir::create("sb-session-big").unwrap();
    let store = SqliteSessionStore::open(dir.path()).unwrap();
    let k = key("org-big", "s1");
    store
        .commit(
            &k,
            &Commit {
                events: events(1..=1000),
                snapshot: Some(snapshot(1)),
                ..Commit::default()
            },
        )
        .await
        .unwrap();
    let all = store.events(&k, 0, 5000).await.unwrap();
    assert_eq!(all, events(1..=1000), "every event, as committed, in order");
    assert_eq!(
        seqs(&store.events(&k, 127, 3).await.unwrap()),
        vec![128, 129, 130],
        "across a batch boundary"
    );
    // A refused commit with an inner gap writes none of its (otherwise valid) first events.
    let mut gapped = events(1001..=1300);
    gapped.push(event(1302, "gap"));
    let err = store
        .commit(
            &k,
            &Commit {
                events: gapped,
                ..Commit::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Invalid, "{err}");
    assert_eq!(store.events(&k, 1000, 10).await.unwrap(), vec![]);
}

/// Descriptors of this process open on files under `dir`.
fn open_files_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[tokio::test]
async fn open_pools_and_files_stay_bounded() {
    let dir = ScratchDir::create("sb-session-lru").unwrap();
    let limit = 4;
    let store = SqliteSessionStore::open_with(
        dir.path(),
        SqliteSessionStoreOptions {
            open_sessions: limit,
            ..SqliteSessionStoreOptions::default()
        },
    )
    .unwrap();
    let keys: Vec<SessionKey> = (0..40).map(|i| key("org-lru", &format!("s{i}"))).collect();
    let per_pool = CONNECTIONS_PER_SESSION as usize * 3; // database, -wal, -shm
    for (i, k) in keys.iter().enumerate() {
        store
            .commit(
                k,
                &Commit {
                    events: vec![event(1, &format!("session {i}"))],
                    snapshot: Some(snapshot(i as u64)),
                    ..Commit::default()
                },
            )
            .await
            .unwrap();
        assert!(
            store.open_pools() <= limit,
            "{} pools open",
            store.open_pools()
        );
        let open = open_files_under(dir.path());
        assert!(
            open <= limit * per_pool,
            "{open} files open after {} sessions",
            i + 1
        );
    }
    // Every session reopens after its pool was closed.
    for (i, k) in keys.iter().enumerate() {
        let loaded = store.load(k).await.unwrap().expect("the session");
        assert_eq!(loaded.snapshot, snapshot(i as u64));
        assert_eq!(
            store.events(k, 0, 10).await.unwrap(),
            vec![event(1, &format!("session {i}"))]
        );
    }
    assert_eq!(
        store
            .list(&OrgId::parse("org-lru").unwrap())
            .await
            .unwrap()
            .len(),
        40
    );
    assert!(open_files_under(dir.path()) <= limit * per_pool);
    store.close().await;
    assert_eq!(store.open_pools(), 0);
    assert_eq!(open_files_under(dir.path()), 0, "close releases every file");
}
