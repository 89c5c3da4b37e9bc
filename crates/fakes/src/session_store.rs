//! `InMemorySessionStore`: each session's event log, machine snapshot and ledger outbox, in memory.
//!
//! One commit is applied under one lock, so its events, snapshot and outbox changes land together
//! or not at all. A commit whose first event does not continue the log (`seq != last + 1`) is
//! refused `Conflict` and writes nothing.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;
use switchboard_core::protocol::EventEnvelope;
use switchboard_core::run::RunRecord;
use switchboard_core::session::{Commit, Persisted, Session, SessionSnapshot};
use switchboard_core::tenancy::SessionKey;
use switchboard_core::{OrgId, SessionId};
use switchboard_ports::{SessionStore, SessionStoreError};

/// What is kept for one session key.
#[derive(Default)]
struct Stored {
    /// In seq order, seqs 1, 2, 3… without gaps.
    events: Vec<EventEnvelope>,
    snapshot: Option<SessionSnapshot>,
    /// Ledger outbox, in the order runs were first put; one entry per run id.
    outbox: Vec<RunRecord>,
}

impl Stored {
    fn last_seq(&self) -> u64 {
        self.events.last().map_or(0, |e| e.seq)
    }
}

/// An in-memory [`SessionStore`]. Keys of different orgs never share state, even with the same
/// session id.
#[derive(Default)]
pub struct InMemorySessionStore {
    sessions: Mutex<BTreeMap<SessionKey, Stored>>,
}

impl InMemorySessionStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many events are stored under `key` (0 for an unknown key).
    pub fn event_count(&self, key: &SessionKey) -> usize {
        self.sessions
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |s| s.events.len())
    }
}

/// Checks that `commit`'s events continue a log ending at `last_seq` without a gap.
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

#[async_trait]
impl SessionStore for InMemorySessionStore {
    async fn commit(&self, key: &SessionKey, commit: &Commit) -> Result<(), SessionStoreError> {
        let mut sessions = self.sessions.lock().unwrap();
        let last_seq = sessions.get(key).map_or(0, Stored::last_seq);
        // Validate everything before touching anything: a refused commit writes nothing.
        check_seqs(key, last_seq, commit)?;
        if commit.is_empty() {
            return Ok(());
        }
        let stored = sessions.entry(key.clone()).or_default();
        stored.events.extend(commit.events.iter().cloned());
        if let Some(snapshot) = &commit.snapshot {
            stored.snapshot = Some(snapshot.clone());
        }
        // Removals first, then puts: a commit that both removes and re-puts a run keeps the record
        // (losing a ledger record would be worse than flushing it twice; `record` is idempotent).
        stored
            .outbox
            .retain(|r| !commit.outbox_remove.contains(&r.run_id));
        for record in &commit.outbox_put {
            match stored.outbox.iter_mut().find(|r| r.run_id == record.run_id) {
                Some(existing) => *existing = record.clone(),
                None => stored.outbox.push(record.clone()),
            }
        }
        Ok(())
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Persisted>, SessionStoreError> {
        let sessions = self.sessions.lock().unwrap();
        // A session exists for the store once a snapshot has been committed for it.
        let Some(stored) = sessions.get(key) else {
            return Ok(None);
        };
        let Some(snapshot) = stored.snapshot.clone() else {
            return Ok(None);
        };
        let active_run_events = match Session::active_run_first_seq(&snapshot) {
            Some((run_id, first_seq)) => {
                let start = stored.events.partition_point(|e| e.seq < first_seq);
                stored.events[start..]
                    .iter()
                    .filter(|e| e.run_id.as_ref() == Some(&run_id))
                    .cloned()
                    .collect()
            }
            None => Vec::new(),
        };
        Ok(Some(Persisted {
            snapshot,
            outbox: stored.outbox.clone(),
            active_run_events,
        }))
    }

    async fn events(
        &self,
        key: &SessionKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, SessionStoreError> {
        let sessions = self.sessions.lock().unwrap();
        let Some(stored) = sessions.get(key) else {
            return Ok(Vec::new());
        };
        let start = stored.events.partition_point(|e| e.seq <= after);
        Ok(stored.events[start..].iter().take(limit).cloned().collect())
    }

    async fn list(&self, org: &OrgId) -> Result<Vec<SessionId>, SessionStoreError> {
        let sessions = self.sessions.lock().unwrap();
        Ok(sessions
            .iter()
            .filter(|(k, s)| k.org() == org && s.snapshot.is_some())
            .map(|(k, _)| k.session().clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::protocol::Event;
    use switchboard_core::Timestamp;

    fn key(org: &str, session: &str) -> SessionKey {
        SessionKey::from_host_storage(
            OrgId::parse(org).unwrap(),
            SessionId::parse(session).unwrap(),
        )
    }

    fn event(seq: u64) -> EventEnvelope {
        EventEnvelope {
            seq,
            run_id: None,
            at: Timestamp::from_millis(seq),
            critical: false,
            event: Event::MessageDelta {
                text: format!("e{seq}"),
            },
        }
    }

    fn commit(seqs: std::ops::RangeInclusive<u64>, v: u64) -> Commit {
        Commit {
            events: seqs.map(event).collect(),
            snapshot: Some(SessionSnapshot::from_value(&serde_json::json!({ "v": v }))),
            ..Commit::default()
        }
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::FutureExt::now_or_never(f).expect("in-memory fakes never wait")
    }

    #[test]
    fn refused_commit_writes_nothing() {
        let store = InMemorySessionStore::new();
        let k = key("o1", "s1");
        block_on(store.commit(&k, &commit(1..=2, 1))).unwrap();
        let gap = block_on(store.commit(&k, &commit(4..=5, 2))).unwrap_err();
        assert!(matches!(gap, SessionStoreError::Conflict(_)));
        let inner_gap = Commit {
            events: vec![event(3), event(5)],
            ..Commit::default()
        };
        assert!(matches!(
            block_on(store.commit(&k, &inner_gap)),
            Err(SessionStoreError::Invalid(_))
        ));
        let loaded = block_on(store.load(&k)).unwrap().unwrap();
        assert_eq!(loaded.snapshot.to_value().unwrap()["v"], 1);
        assert_eq!(store.event_count(&k), 2);
        block_on(store.commit(&k, &commit(3..=3, 3))).unwrap();
        assert_eq!(
            block_on(store.events(&k, 1, 10))
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    #[test]
    fn list_needs_a_snapshot_and_the_org() {
        let store = InMemorySessionStore::new();
        block_on(store.commit(&key("o1", "a"), &commit(1..=1, 1))).unwrap();
        block_on(store.commit(&key("o2", "b"), &commit(1..=1, 1))).unwrap();
        block_on(store.commit(
            &key("o1", "c"),
            &Commit {
                events: vec![event(1)],
                ..Commit::default()
            },
        ))
        .unwrap();
        assert_eq!(
            block_on(store.list(&OrgId::parse("o1").unwrap())).unwrap(),
            vec![SessionId::parse("a").unwrap()]
        );
        assert_eq!(block_on(store.load(&key("o1", "c"))).unwrap(), None);
    }
}
