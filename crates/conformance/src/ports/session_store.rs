//! Contract cases, fault catalog and `Faulty` wrapper for `SessionStore`.
//!
//! The disruption cases of this port are part of the session lifecycle (they need the machine and
//! its shell), so [`disruptions`] is empty here.

use crate::disruption::DisruptionCase;
use crate::fault::{CatalogEntry, Fault, Faulty};
use crate::harness::{self, Case, CaseResult, ImplKind, Implementation, Report};
use crate::registry::PortSuite;
use crate::{ensure, ensure_eq, expect_class, ok};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_adapters::sql::scratch::ScratchDir;
use switchboard_adapters::sql::session_store::SqliteSessionStore;
use switchboard_core::crypto::TokenHash;
use switchboard_core::protocol::{Event, EventEnvelope, SandboxMessage, TerminalStatus, Usage};
use switchboard_core::run::RunRecord;
use switchboard_core::session::{
    Commit, Effect, Input, Session, SessionConfig, SessionInit, SessionSnapshot,
};
use switchboard_core::tenancy::{Attribution, SessionKey};
use switchboard_core::{
    ConnId, ModelRef, OrgId, Principal, RunId, SandboxId, SessionId, Timestamp, UserId,
};
use switchboard_fakes::session_store::InMemorySessionStore;
use switchboard_ports::error::ErrorClass;
use switchboard_ports::{PortId, SessionStore, SessionStoreError};

/// What every `SessionStore` case gets: a store with nothing in it for the case's (unique) orgs.
pub struct Fixture {
    pub store: Arc<dyn SessionStore>,
    /// Keeps a real adapter's scratch storage alive for the whole case (`None` for the fake).
    pub scratch: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// Every contract case of `SessionStore`, one per `# Contract` bullet.
pub fn cases() -> Vec<Case<Fixture>> {
    vec![
        Case {
            name: "commit_then_load",
            run: |f| Box::pin(commit_then_load(f)),
        },
        Case {
            name: "events_in_seq_order",
            run: |f| Box::pin(events_in_seq_order(f)),
        },
        Case {
            name: "seq_gap_refused",
            run: |f| Box::pin(seq_gap_refused(f)),
        },
        Case {
            name: "commit_is_atomic",
            run: |f| Box::pin(commit_is_atomic(f)),
        },
        Case {
            name: "outbox_put_and_remove",
            run: |f| Box::pin(outbox_put_and_remove(f)),
        },
        Case {
            name: "active_run_events_loaded",
            run: |f| Box::pin(active_run_events_loaded(f)),
        },
        Case {
            name: "keys_are_isolated",
            run: |f| Box::pin(keys_are_isolated(f)),
        },
        Case {
            name: "list_is_tenant_scoped",
            run: |f| Box::pin(list_is_tenant_scoped(f)),
        },
    ]
}

// ----- data every case makes for itself ------------------------------------------------------

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// An org id no other case (or process sharing a backend) uses.
fn unique_org() -> OrgId {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    OrgId::parse(format!("org-ss-{}-{n}", std::process::id())).expect("a valid org id")
}

fn session(id: &str) -> SessionId {
    SessionId::parse(id).expect("a valid session id")
}

fn run(id: &str) -> RunId {
    RunId::parse(id).expect("a valid run id")
}

fn key(org: &OrgId, id: &str) -> SessionKey {
    principal(org).tenant().session(session(id))
}

fn principal(org: &OrgId) -> Principal {
    Principal::from_verified_credential(
        org.clone(),
        UserId::parse("user-1").expect("a valid user id"),
        None,
        vec![],
    )
}

const T0: u64 = 1_767_225_600_000;

fn event(seq: u64, run_id: Option<&RunId>, text: &str) -> EventEnvelope {
    EventEnvelope {
        seq,
        run_id: run_id.cloned(),
        at: Timestamp::from_millis(T0 + seq),
        critical: false,
        event: Event::MessageDelta {
            text: text.to_string(),
        },
    }
}

fn events(seqs: std::ops::RangeInclusive<u64>) -> Vec<EventEnvelope> {
    seqs.map(|s| event(s, None, &format!("event {s}")))
        .collect()
}

/// A snapshot as the machine hands it over: JSON text, which the store keeps byte for byte (the
/// spacing and the key order here do not survive a decode and re-encode).
fn snapshot(version: u64) -> SessionSnapshot {
    SessionSnapshot::from_json(format!(
        r#"{{"in_flight": null, "case_version": {version}}}"#
    ))
}

fn record(org: &OrgId, session_id: &str, run_id: &str) -> RunRecord {
    RunRecord {
        run_id: run(run_id),
        session_id: session(session_id),
        org_id: org.clone(),
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

fn run_ids(records: &[RunRecord]) -> BTreeSet<RunId> {
    records.iter().map(|r| r.run_id.clone()).collect()
}

// ----- cases ---------------------------------------------------------------------------------

async fn commit_then_load(f: Fixture) -> CaseResult {
    let org = unique_org();
    let k = key(&org, "s1");
    ensure!(
        ok!(f.store.load(&k).await).is_none(),
        "an unknown key loads as None"
    );
    let first = Commit {
        events: events(1..=3),
        snapshot: Some(snapshot(1)),
        outbox_put: vec![record(&org, "s1", "r1")],
        outbox_remove: vec![],
    };
    ok!(f.store.commit(&k, &first).await);
    let loaded = ok!(f.store.load(&k).await).ok_or("a committed session loads as None")?;
    ensure_eq!(
        loaded.snapshot,
        snapshot(1),
        "the snapshot loaded (its JSON text as committed, byte for byte)"
    );
    ensure_eq!(
        loaded.outbox,
        vec![record(&org, "s1", "r1")],
        "the outbox loaded"
    );
    ok!(f
        .store
        .commit(
            &k,
            &Commit {
                events: events(4..=4),
                snapshot: Some(snapshot(2)),
                ..Commit::default()
            }
        )
        .await);
    let loaded = ok!(f.store.load(&k).await).ok_or("a committed session loads as None")?;
    ensure_eq!(
        loaded.snapshot,
        snapshot(2),
        "the latest snapshot replaces the first"
    );
    ensure_eq!(
        loaded.outbox,
        vec![record(&org, "s1", "r1")],
        "an untouched outbox entry stays"
    );
    Ok(())
}

async fn events_in_seq_order(f: Fixture) -> CaseResult {
    let org = unique_org();
    let k = key(&org, "s1");
    for (range, v) in [(1..=3, 1), (4..=4, 2), (5..=10, 3)] {
        ok!(f
            .store
            .commit(
                &k,
                &Commit {
                    events: events(range),
                    snapshot: Some(snapshot(v)),
                    ..Commit::default()
                }
            )
            .await);
    }
    let all = ok!(f.store.events(&k, 0, 100).await);
    ensure_eq!(
        seqs(&all),
        (1..=10).collect::<Vec<_>>(),
        "every event, ascending"
    );
    ensure_eq!(all, events(1..=10), "events come back as committed");
    ensure_eq!(
        seqs(&ok!(f.store.events(&k, 3, 4).await)),
        vec![4, 5, 6, 7],
        "after 3, at most 4"
    );
    ensure_eq!(
        seqs(&ok!(f.store.events(&k, 8, 100).await)),
        vec![9, 10],
        "after 8"
    );
    ensure!(
        ok!(f.store.events(&k, 10, 5).await).is_empty(),
        "nothing after the last seq"
    );
    ensure!(
        ok!(f.store.events(&k, 0, 0).await).is_empty(),
        "a limit of 0 returns nothing"
    );
    ensure!(
        ok!(f.store.events(&key(&org, "never-written"), 0, 10).await).is_empty(),
        "an unknown key has no events"
    );
    Ok(())
}

async fn seq_gap_refused(f: Fixture) -> CaseResult {
    let org = unique_org();
    let k = key(&org, "s1");
    let starts_late = Commit {
        events: events(2..=3),
        snapshot: Some(snapshot(1)),
        ..Commit::default()
    };
    expect_class!(f.store.commit(&k, &starts_late).await, ErrorClass::Conflict);
    ensure!(
        ok!(f.store.load(&k).await).is_none(),
        "a refused first commit wrote its snapshot"
    );
    ensure!(
        ok!(f.store.events(&k, 0, 10).await).is_empty(),
        "a refused first commit wrote events"
    );

    ok!(f
        .store
        .commit(
            &k,
            &Commit {
                events: events(1..=3),
                snapshot: Some(snapshot(1)),
                ..Commit::default()
            }
        )
        .await);
    let gap = Commit {
        events: events(5..=6),
        snapshot: Some(snapshot(2)),
        outbox_put: vec![record(&org, "s1", "r1")],
        outbox_remove: vec![],
    };
    expect_class!(f.store.commit(&k, &gap).await, ErrorClass::Conflict);
    let repeat = Commit {
        events: events(3..=4),
        snapshot: Some(snapshot(2)),
        outbox_put: vec![record(&org, "s1", "r1")],
        outbox_remove: vec![],
    };
    expect_class!(f.store.commit(&k, &repeat).await, ErrorClass::Conflict);
    let loaded = ok!(f.store.load(&k).await).ok_or("the session vanished")?;
    ensure_eq!(
        loaded.snapshot,
        snapshot(1),
        "a refused commit replaced the snapshot"
    );
    ensure!(
        loaded.outbox.is_empty(),
        "a refused commit put into the outbox: {:?}",
        run_ids(&loaded.outbox)
    );
    ensure_eq!(
        seqs(&ok!(f.store.events(&k, 0, 100).await)),
        vec![1, 2, 3],
        "a refused commit appended events"
    );

    ok!(f
        .store
        .commit(
            &k,
            &Commit {
                events: events(4..=5),
                snapshot: Some(snapshot(2)),
                ..Commit::default()
            }
        )
        .await);
    ensure_eq!(
        seqs(&ok!(f.store.events(&k, 0, 100).await)),
        vec![1, 2, 3, 4, 5],
        "the log continues after a refusal"
    );
    Ok(())
}

async fn commit_is_atomic(f: Fixture) -> CaseResult {
    let org = unique_org();
    let k = key(&org, "s1");
    ok!(f
        .store
        .commit(
            &k,
            &Commit {
                events: events(1..=2),
                snapshot: Some(snapshot(0)),
                ..Commit::default()
            }
        )
        .await);
    // Commit v puts run `r{v}`, removes `r{v-1}`, appends two events and sets snapshot v. A reader
    // racing the writer must see, in one load, a snapshot and an outbox of the same commit, and
    // then at least that commit's events.
    let writer = {
        let (store, k, org) = (f.store.clone(), k.clone(), org.clone());
        tokio::spawn(async move {
            for v in 1..=20u64 {
                let commit = Commit {
                    events: events(2 * v + 1..=2 * v + 2),
                    snapshot: Some(snapshot(v)),
                    outbox_put: vec![record(&org, "s1", &format!("r{v}"))],
                    outbox_remove: vec![run(&format!("r{}", v - 1))],
                };
                store
                    .commit(&k, &commit)
                    .await
                    .map_err(|e| format!("commit {v} failed: {e}"))?;
                tokio::task::yield_now().await;
            }
            Ok::<(), String>(())
        })
    };
    let mut last_seen = 0;
    loop {
        let writer_done = writer.is_finished();
        let loaded = ok!(f.store.load(&k).await).ok_or("the session vanished")?;
        let v = loaded
            .snapshot
            .to_value()
            .map_err(|e| format!("the snapshot is not JSON: {e}"))?["case_version"]
            .as_u64()
            .ok_or("the snapshot lost its content")?;
        let expected: BTreeSet<RunId> = if v == 0 {
            BTreeSet::new()
        } else {
            [run(&format!("r{v}"))].into()
        };
        ensure_eq!(
            run_ids(&loaded.outbox),
            expected,
            "outbox seen with snapshot {v}"
        );
        let seen = ok!(f.store.events(&k, 0, 1000).await);
        ensure!(
            seen.len() as u64 >= 2 * v + 2,
            "snapshot {v} was visible before its events: only {} events",
            seen.len()
        );
        ensure!(
            v >= last_seen,
            "the snapshot went back from {last_seen} to {v}"
        );
        last_seen = v;
        if writer_done {
            break;
        }
        tokio::task::yield_now().await;
    }
    match writer.await {
        Ok(result) => result?,
        Err(e) => return Err(format!("the writer task failed: {e}")),
    }
    let loaded = ok!(f.store.load(&k).await).ok_or("the session vanished")?;
    ensure_eq!(loaded.snapshot, snapshot(20), "the last snapshot");
    ensure_eq!(
        run_ids(&loaded.outbox),
        [run("r20")].into(),
        "the last outbox"
    );
    ensure_eq!(
        seqs(&ok!(f.store.events(&k, 0, 1000).await)),
        (1..=42).collect::<Vec<_>>(),
        "every event once"
    );
    Ok(())
}

async fn outbox_put_and_remove(f: Fixture) -> CaseResult {
    let org = unique_org();
    let k = key(&org, "s1");
    let put_two = Commit {
        events: events(1..=1),
        snapshot: Some(snapshot(1)),
        outbox_put: vec![record(&org, "s1", "r1"), record(&org, "s1", "r2")],
        outbox_remove: vec![],
    };
    ok!(f.store.commit(&k, &put_two).await);
    let outbox = |f: &Fixture| {
        let (store, k) = (f.store.clone(), k.clone());
        async move {
            Ok::<_, SessionStoreError>(
                store
                    .load(&k)
                    .await?
                    .map(|p| run_ids(&p.outbox))
                    .unwrap_or_default(),
            )
        }
    };
    ensure_eq!(
        ok!(outbox(&f).await),
        [run("r1"), run("r2")].into(),
        "both entries put"
    );
    // Commits that do not touch the outbox leave it alone.
    ok!(f
        .store
        .commit(
            &k,
            &Commit {
                events: events(2..=3),
                snapshot: Some(snapshot(2)),
                ..Commit::default()
            }
        )
        .await);
    ensure_eq!(
        ok!(outbox(&f).await),
        [run("r1"), run("r2")].into(),
        "entries survive other commits"
    );
    ok!(f
        .store
        .commit(
            &k,
            &Commit {
                outbox_remove: vec![run("r1")],
                ..Commit::default()
            }
        )
        .await);
    ensure_eq!(ok!(outbox(&f).await), [run("r2")].into(), "r1 removed");
    ok!(f
        .store
        .commit(
            &k,
            &Commit {
                outbox_remove: vec![run("r1"), run("never-put")],
                ..Commit::default()
            }
        )
        .await);
    ensure_eq!(
        ok!(outbox(&f).await),
        [run("r2")].into(),
        "removing absent entries changes nothing"
    );
    let loaded = ok!(f.store.load(&k).await).ok_or("the session vanished")?;
    ensure_eq!(
        loaded.outbox,
        vec![record(&org, "s1", "r2")],
        "the surviving entry is intact"
    );
    ok!(f
        .store
        .commit(
            &k,
            &Commit {
                outbox_remove: vec![run("r2")],
                ..Commit::default()
            }
        )
        .await);
    ensure!(
        ok!(outbox(&f).await).is_empty(),
        "the outbox is empty once every entry is removed"
    );
    Ok(())
}

/// Handles one input and commits every `Persist` it produces, as a shell would; returns the other
/// effects.
async fn step(
    store: &dyn SessionStore,
    machine: &mut Session,
    now: Timestamp,
    input: Input,
) -> Result<Vec<Effect>, String> {
    let label = format!("{input:?}");
    machine
        .handle(now, input)
        .map_err(|r| format!("the session machine refused {label}: {r}"))?;
    let mut others = Vec::new();
    while let Some(effect) = machine.poll_effect() {
        match effect {
            Effect::Persist(commit) => store
                .commit(machine.key(), &commit)
                .await
                .map_err(|e| format!("commit after {label} failed: {e}"))?,
            other => others.push(other),
        }
    }
    Ok(others)
}

async fn active_run_events_loaded(f: Fixture) -> CaseResult {
    // The snapshot comes from the real session machine: two prompts, the first run completes, the
    // second is in flight with two agent updates. The store must hand back the second run's events.
    let org = unique_org();
    let k = key(&org, "s1");
    let by = Attribution {
        user_id: UserId::parse("user-1").expect("a valid user id"),
        api_key_id: None,
    };
    let init = SessionInit {
        key: k.clone(),
        model: ModelRef::parse("anthropic/claude-sonnet-4").expect("a valid model"),
        agent: "opencode".into(),
        repo: None,
        created_by: by.clone(),
        permissions: None,
    };
    let mut now = Timestamp::from_millis(T0);
    let mut machine = Session::new(now, SessionConfig::default(), init);
    let store = f.store.as_ref();
    let effects = step(store, &mut machine, now, Input::Start).await?;
    let spawn = effects
        .iter()
        .find_map(|e| match e {
            Effect::SpawnSandbox { spawn, .. } => Some(*spawn),
            _ => None,
        })
        .ok_or("the machine asked for no sandbox after Start")?;
    let token_hash = TokenHash([7; 32]);
    let conn = ConnId(1);
    let (r1, r2) = (run("run-1"), run("run-2"));
    let sandbox_id = SandboxId::parse("sbx-1").expect("a valid sandbox id");
    let agent_says = |run_id: &RunId, n: u64, text: &str| Input::SandboxMessage {
        conn,
        message: SandboxMessage::Event {
            run_id: run_id.clone(),
            n,
            event: Event::MessageDelta { text: text.into() },
        },
    };
    let inputs = vec![
        Input::SandboxTokenIssued {
            spawn,
            token_hash: token_hash.clone(),
        },
        Input::SpawnResult {
            spawn,
            result: Ok(sandbox_id),
        },
        Input::SandboxConnect { conn, token_hash },
        Input::Prompt {
            run_id: r1.clone(),
            by: by.clone(),
            text: "first".into(),
            client_msg_id: None,
            conn: None,
        },
        Input::Prompt {
            run_id: r2.clone(),
            by,
            text: "second".into(),
            client_msg_id: None,
            conn: None,
        },
        Input::DispatchResult {
            run_id: r1.clone(),
            result: Ok(None),
        },
        agent_says(&r1, 1, "one"),
        Input::SandboxMessage {
            conn,
            message: SandboxMessage::RunFinished {
                run_id: r1.clone(),
                n: 2,
                status: TerminalStatus::Completed,
                stop_reason: None,
                usage: Usage::default(),
                error: None,
            },
        },
    ];
    for input in inputs {
        now = now.add(Duration::from_millis(10));
        step(store, &mut machine, now, input).await?;
    }
    for input in [
        Input::DispatchResult {
            run_id: r2.clone(),
            result: Ok(None),
        },
        agent_says(&r2, 3, "two"),
        agent_says(&r2, 4, "three"),
    ] {
        now = now.add(Duration::from_millis(10));
        step(store, &mut machine, now, input).await?;
    }

    let loaded = ok!(f.store.load(&k).await).ok_or("the session loads as None")?;
    let (active, first_seq) = Session::active_run_first_seq(&loaded.snapshot)
        .ok_or("the machine's snapshot names no run in flight")?;
    ensure_eq!(active, r2, "the run in flight");
    let log = ok!(f.store.events(&k, 0, 10_000).await);
    let expected: Vec<EventEnvelope> = log
        .iter()
        .filter(|e| e.seq >= first_seq && e.run_id.as_ref() == Some(&r2))
        .cloned()
        .collect();
    ensure!(
        log.iter().any(|e| e.run_id.as_ref() == Some(&r1)),
        "the first run's events are in the log (the case needs them to show they are left out)"
    );
    let texts: Vec<&str> = expected
        .iter()
        .filter_map(|e| match &e.event {
            Event::MessageDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    ensure_eq!(
        texts,
        vec!["two", "three"],
        "the in-flight run's agent updates are in the log"
    );
    ensure_eq!(
        seqs(&loaded.active_run_events),
        seqs(&expected),
        "active_run_events are the in-flight run's events from its first seq"
    );
    ensure_eq!(
        loaded.active_run_events,
        expected,
        "active_run_events match the log"
    );
    Ok(())
}

async fn keys_are_isolated(f: Fixture) -> CaseResult {
    let (a, b) = (unique_org(), unique_org());
    let keys = [
        (key(&a, "s1"), "a-s1"),
        (key(&a, "s2"), "a-s2"),
        (key(&b, "s1"), "b-s1"),
    ];
    for (i, (k, label)) in keys.iter().enumerate() {
        // Every key starts its own log at seq 1.
        let count = i as u64 + 1;
        let commit = Commit {
            events: (1..=count).map(|s| event(s, None, label)).collect(),
            snapshot: Some(SessionSnapshot::from_value(
                &serde_json::json!({ "label": label }),
            )),
            outbox_put: vec![record(
                k.org(),
                k.session().as_str(),
                &format!("run-{label}"),
            )],
            outbox_remove: vec![],
        };
        ok!(f.store.commit(k, &commit).await);
    }
    for (i, (k, label)) in keys.iter().enumerate() {
        let seen = ok!(f.store.events(k, 0, 100).await);
        ensure_eq!(seen.len(), i + 1, "events under {k}");
        ensure!(
            seen.iter().all(|e| e.event
                == Event::MessageDelta {
                    text: label.to_string()
                }),
            "{k} sees another key's events"
        );
        let loaded = ok!(f.store.load(k).await).ok_or_else(|| format!("{k} loads as None"))?;
        ensure_eq!(
            loaded.snapshot.to_value().ok(),
            Some(serde_json::json!({ "label": label })),
            "snapshot under {k}"
        );
        ensure_eq!(
            run_ids(&loaded.outbox),
            [run(&format!("run-{label}"))].into(),
            "outbox under {k}"
        );
    }
    ensure!(
        ok!(f.store.load(&key(&b, "s2")).await).is_none(),
        "another org's session id loaded under org b"
    );
    Ok(())
}

async fn list_is_tenant_scoped(f: Fixture) -> CaseResult {
    let (a, b, c) = (unique_org(), unique_org(), unique_org());
    for (org, id) in [(&a, "s1"), (&a, "s2"), (&b, "s1"), (&b, "s3")] {
        ok!(f
            .store
            .commit(
                &key(org, id),
                &Commit {
                    events: events(1..=1),
                    snapshot: Some(snapshot(1)),
                    ..Commit::default()
                }
            )
            .await);
    }
    let listed = |ids: Vec<SessionId>| ids.into_iter().collect::<BTreeSet<_>>();
    ensure_eq!(
        listed(ok!(f.store.list(&a).await)),
        [session("s1"), session("s2")].into(),
        "org a's sessions"
    );
    ensure_eq!(
        listed(ok!(f.store.list(&b).await)),
        [session("s1"), session("s3")].into(),
        "org b's sessions"
    );
    ensure!(
        ok!(f.store.list(&c).await).is_empty(),
        "an org without sessions lists some"
    );
    Ok(())
}

// ----- implementations, faults, entry points -------------------------------------------------

/// The fake and every real `SessionStore`: SQLite, one database per session under a scratch
/// data directory of the case's own.
pub fn implementations() -> Vec<Implementation<Fixture>> {
    vec![
        Implementation::new("in_memory", ImplKind::Fake, || async {
            Ok(Fixture {
                store: Arc::new(InMemorySessionStore::new()),
                scratch: None,
            })
        }),
        Implementation::new("sqlite", ImplKind::Adapter, || async {
            let dir = ScratchDir::create("sb-session-store")?;
            let store = SqliteSessionStore::open(dir.path()).map_err(|e| e.to_string())?;
            Ok(Fixture {
                store: Arc::new(store),
                scratch: Some(Arc::new(dir)),
            })
        }),
    ]
}

/// What the session promises when its store fails.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "commit",
        outcome: "no event of the failed commit reaches any client or the sandbox; the shell retries and, if the store stays down, the machine is told `StoreFailed` and evicts the actor (clients get a `store_unavailable` error frame, the sandbox socket closes) instead of acknowledging unpersisted work, and the next request rebuilds the session from its last durable state",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "commit",
        outcome: "treated like an unavailable store: nothing of the commit is delivered until a retry is known to have landed",
    },
    CatalogEntry {
        fault: Fault::LostAnswer,
        op: "commit",
        outcome: "the commit landed once: a retry of it is refused `Conflict` (its seqs exist), so no event is stored or delivered twice",
    },
    CatalogEntry {
        fault: Fault::Slow,
        op: "commit",
        outcome: "events are delivered only after their slow commit completes, still in seq order",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "load",
        outcome: "the session cannot be activated and the request fails `Unavailable`; no empty session is created over the stored one",
    },
    CatalogEntry {
        fault: Fault::Timeout,
        op: "load",
        outcome: "the activation fails `Timeout` and a later request activates the session with its state intact",
    },
    CatalogEntry {
        fault: Fault::Corrupt,
        op: "load",
        outcome: "an unreadable session is never rebuilt from partial state: activation fails `Corrupt` and nothing is written over it",
    },
    CatalogEntry {
        fault: Fault::Unavailable,
        op: "events",
        outcome: "the replay fails with the class and the client may resume with the same `after`: no event is skipped or repeated",
    },
];

#[async_trait]
impl SessionStore for Faulty<dyn SessionStore> {
    async fn commit(&self, key: &SessionKey, commit: &Commit) -> Result<(), SessionStoreError> {
        self.call("commit", || self.inner.commit(key, commit)).await
    }

    async fn load(
        &self,
        key: &SessionKey,
    ) -> Result<Option<switchboard_core::session::Persisted>, SessionStoreError> {
        self.call("load", || self.inner.load(key)).await
    }

    async fn events(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, SessionStoreError> {
        self.call("events", || self.inner.events(key, after, limit))
            .await
    }

    async fn list(&self, org: &OrgId) -> Result<Vec<SessionId>, SessionStoreError> {
        self.call("list", || self.inner.list(org)).await
    }
}

/// The suite of `SessionStore`.
pub fn suite() -> PortSuite {
    PortSuite::new(PortId::SessionStore, cases(), implementations(), CATALOG)
}

/// Runs every `SessionStore` case against an adapter's fixtures.
pub fn check<Fut>(name: &'static str, make: impl Fn() -> Fut + Send + Sync + 'static) -> Report
where
    Fut: Future<Output = Result<Fixture, String>> + Send + 'static,
{
    harness::check(PortId::SessionStore, name, make, &cases())
}

/// Store faults are exercised inside the session lifecycle, not here.
pub fn disruptions() -> Vec<DisruptionCase> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that lists every org's sessions and ignores the org of a key: the isolation cases
    /// must catch it.
    struct LeakyStore(InMemorySessionStore);

    fn shared(key: &SessionKey) -> SessionKey {
        SessionKey::from_host_storage(OrgId::parse("shared").unwrap(), key.session().clone())
    }

    #[async_trait]
    impl SessionStore for LeakyStore {
        async fn commit(&self, key: &SessionKey, commit: &Commit) -> Result<(), SessionStoreError> {
            self.0.commit(&shared(key), commit).await
        }
        async fn load(
            &self,
            key: &SessionKey,
        ) -> Result<Option<switchboard_core::session::Persisted>, SessionStoreError> {
            self.0.load(&shared(key)).await
        }
        async fn events(
            &self,
            key: &SessionKey,
            after: u64,
            limit: usize,
        ) -> Result<Vec<EventEnvelope>, SessionStoreError> {
            self.0.events(&shared(key), after, limit).await
        }
        async fn list(&self, _org: &OrgId) -> Result<Vec<SessionId>, SessionStoreError> {
            self.0.list(&OrgId::parse("shared").unwrap()).await
        }
    }

    #[test]
    fn a_leaky_store_fails_the_isolation_cases() {
        let report = check("leaky", || async {
            Ok(Fixture {
                store: Arc::new(LeakyStore(InMemorySessionStore::new())),
                scratch: None,
            })
        });
        let failed: BTreeSet<&str> = report.failures().iter().map(|(name, _)| *name).collect();
        assert!(
            failed.contains("session_store::leaky::keys_are_isolated"),
            "{failed:?}"
        );
        assert!(
            failed.contains("session_store::leaky::list_is_tenant_scoped"),
            "{failed:?}"
        );
    }
}
